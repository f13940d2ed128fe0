"""One sentence for a configuration error: the key, what is wrong, and (for a typo) the keys allowed there.

Both TOML files (coordinator and agent) are validated by strict pydantic models; pydantic's own
message for an unknown key ("Extra inputs are not permitted") names neither the section's allowed
keys nor a likely fix, so ``explain`` walks the model along the error's location and lists them.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def allowed_keys(schema: type[BaseModel], where: tuple[Any, ...]) -> list[str] | None:
    """The keys the table at ``where`` accepts (None when ``where`` is not a table of ``schema``)."""
    model: type[BaseModel] | None = schema
    for part in where:
        if model is None or str(part) not in model.model_fields:
            return None
        model = _model_of(model.model_fields[str(part)].annotation)
    return sorted(model.model_fields) if model is not None else None


def unknown_key_message(section: str, key: str, allowed: list[str]) -> str:
    """``[section] has no key 'x' (did you mean 'y'?); allowed: a, b, c``."""
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"[{section or 'top level'}] has no key {key!r}{hint}; allowed: {', '.join(allowed)}"


def describe_errors(exc: ValidationError, schema: type[BaseModel], prefix: tuple[Any, ...] = ()) -> str:
    """Every error of ``exc`` as ``section.key: message``, unknown keys with the allowed ones."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = allowed_keys(schema, loc[:-1])
            if allowed is not None:
                lines.append(unknown_key_message(".".join(str(p) for p in prefix + loc[:-1]), str(loc[-1]), allowed))
                continue
        msg = str(err["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in prefix + loc)
        lines.append(f"{where}: {msg}" if where and not msg.startswith("[") else msg)
    return "; ".join(lines)


def explain(path: Path, exc: ValidationError, schema: type[BaseModel]) -> str:
    """The message a user sees for an invalid config file."""
    return f"{path}: {describe_errors(exc, schema)}"
