"""One loader for every fedquilt TOML file: read, override from the environment, resolve paths, validate.

The coordinator (``coordinator.toml``), the agent and consumer (``agent.toml``) and the simulation
(``sim.toml``) all load through :func:`load_toml`, so a missing file, bad TOML, an unknown key or a bad
value reads the same everywhere: one sentence that names the file and the key (``config_errors``).

Environment overrides, for containers and service managers, carry a prefix per program so that a
coordinator and an agent on one host never read each other's variables:

* coordinator: ``FEDQUILT_COORDINATOR_<SECTION>__<FIELD>``, e.g. ``FEDQUILT_COORDINATOR_SERVER__LISTEN``;
* agent and consumer: ``FEDQUILT_AGENT_<SECTION>__<FIELD>``, e.g. ``FEDQUILT_AGENT_TLS__KEY``.

A variable in the old, shared form ``FEDQUILT_<SECTION>__<FIELD>`` is refused with the new name, rather
than silently ignored (it usually carries a key path).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .config_errors import explain

COORDINATOR_ENV = "FEDQUILT_COORDINATOR_"
"""Prefix of the coordinator's environment overrides."""
AGENT_ENV = "FEDQUILT_AGENT_"
"""Prefix of the agent's (and a consumer's) environment overrides."""
_PREFIXES = (COORDINATOR_ENV, AGENT_ENV)

Schema = TypeVar("Schema", bound=BaseModel)


def env_overrides(environ: Mapping[str, str], prefix: str) -> dict[str, dict[str, str]]:
    """``{section: {field: value}}`` from ``<prefix><SECTION>__<FIELD>`` variables; old-style ones refused."""
    out: dict[str, dict[str, str]] = {}
    for key, value in environ.items():
        if "__" not in key or not key.startswith("FEDQUILT_"):
            continue
        if key.startswith(prefix):
            section, field = key[len(prefix):].lower().split("__", 1)
            out.setdefault(section, {})[field] = value
        elif not key.startswith(_PREFIXES):
            raise ValueError(f"environment variable {key} is no longer read: overrides carry the program's prefix "
                             f"now, e.g. {COORDINATOR_ENV}{key[len('FEDQUILT_'):]} for the coordinator or "
                             f"{AGENT_ENV}{key[len('FEDQUILT_'):]} for an agent (docs/deploy.md)")
    return out


def resolve_paths(raw: dict[str, Any], base: Path, paths: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Make the string values at ``(section, keys)`` absolute against ``base`` ("" is the top level)."""
    for section, keys in paths:
        table = raw.get(section, {}) if section else raw
        if not isinstance(table, dict):
            continue
        for k in keys:
            if isinstance(table.get(k), str):
                table[k] = str((base / table[k]).resolve())


def load_toml(path: Path, schema: type[Schema], *, what: str, env_prefix: str | None = None,
              environ: Mapping[str, str] | None = None, paths: Sequence[tuple[str, Sequence[str]]] = (),
              prepare: Callable[[dict[str, Any]], None] | None = None) -> Schema:
    """Read ``path``, apply ``env_prefix`` overrides, resolve ``paths``, run ``prepare``, validate with ``schema``.

    Every failure is a ``ValueError`` whose message names ``what`` (e.g. "agent config") and the file.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a folder, not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid TOML: {exc}") from None
    if env_prefix is not None:
        for section, fields in env_overrides(os.environ if environ is None else environ, env_prefix).items():
            table = raw.setdefault(section, {})
            if not isinstance(table, dict):
                raise ValueError(f"{path}: {section} is not a table, so {env_prefix}{section.upper()}__… cannot "
                                 "override a field of it")
            table.update(fields)
    resolve_paths(raw, path.resolve().parent, paths)
    if prepare is not None:
        prepare(raw)
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(explain(path, exc, schema)) from None
