"""Coordinator configuration: one TOML file in, one validated object out.

Environment variables ``FEDQUILT_<SECTION>__<FIELD>`` override file values (for containers), e.g.
``FEDQUILT_SERVER__LISTEN=0.0.0.0:7443``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    """Files of the coordinator's identity and the federation CA."""

    ca: Path
    cert: Path
    key: Path
    crl: Path | None = None
    """Certificate revocation list, checked on every call (reloaded when it changes)."""


class ServerConfig(_Strict):
    """Network and resource limits."""

    listen: str = "127.0.0.1:7443"
    metrics_listen: str | None = "127.0.0.1:9464"
    """Prometheus metrics and the read-only status page (plain HTTP on loopback by default)."""
    max_workers: int = Field(64, ge=4)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(2 * 1024**3, ge=1024)
    long_poll_seconds: float = Field(20.0, gt=0)


class SecAggConfig(_Strict):
    """Secure aggregation (on by default for every sums-only rule)."""

    enabled: bool = True
    clip: float = Field(8.0, gt=0)
    """Declared range [-clip, clip] of every submitted value; values beyond are clipped and counted."""
    threshold: int | None = None
    """t of the t-of-n secret sharing; default ⌊n/2⌋+1."""
    min_frac_bits: int = Field(16, ge=8, le=40)
    site_noise_multiplier: float | None = Field(None, ge=0)
    """Optional site-level DP: every site clips its whole submission to ``site_clip`` (L2) and adds its share
    of Gaussian noise so each secure sum carries N(0, (σ·C)²). Weak below a few dozen sites (docs/privacy.md)."""
    site_clip: float = Field(1.0, gt=0)
    site_delta: float = Field(1e-5, gt=0, lt=1)


class FederationConfig(_Strict):
    """What the federation trains and how rounds run."""

    name: str = "default"
    model: str = "fedquilt-model"
    """Name under which versions are published in the model store."""
    base_fingerprint: str
    task: Literal["causal-lm", "seq-cls"] = "causal-lm"
    rule: str = "secure-stack"
    rule_params: dict[str, Any] = Field(default_factory=dict)
    rounds: int = Field(3, ge=1)
    min_sites: int = Field(2, ge=1)
    """Online sites needed to open a round."""
    min_contributors: int | None = None
    """Contributions a round needs to be published (default: min(2, min_sites)); SecAgg's threshold also applies."""
    cohort_size: int | None = None
    """Sites sampled per round (default: every online site)."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Hyper-parameters sent to the agents (see agent TrainHyper)."""
    train_timeout: float = Field(600.0, gt=0)
    stage_timeout: float = Field(120.0, gt=0)
    wait_for_sites: float = Field(60.0, gt=0)
    """How long a round waits for ``min_sites`` before it opens with who is there."""
    seed: int | None = None
    # --- issue 14: dense federated modules and server optimizers ---
    modules_to_save: list[str] = Field(default_factory=list)
    """Modules every site trains densely and the federation averages (PEFT ``modules_to_save``), e.g.
    ``["classifier"]`` or ``["score"]`` for a seq-cls head; published with the adapter."""
    server_optimizer: dict[str, Any] | None = None
    """``{name = "fedavgm" | "fedadam" | "fedyogi", lr, momentum, beta1, beta2, tau}`` (strategies/server_opt.py)."""

    @model_validator(mode="after")
    def _seq_cls_head(self) -> FederationConfig:
        # issue 14: a seq-cls head is federated (trained and averaged densely) unless the operator names others.
        if self.task == "seq-cls" and not self.modules_to_save:
            object.__setattr__(self, "modules_to_save", ["classifier", "score"])
        return self

    @field_validator("model", "name")
    @classmethod
    def _name(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
            raise ValueError(f"must be letters, digits, '.', '_' or '-', got {v!r}")
        return v


class CoordinatorConfig(_Strict):
    """The whole coordinator configuration file."""

    tls: TlsConfig
    server: ServerConfig = ServerConfig()
    federation: FederationConfig
    secagg: SecAggConfig = SecAggConfig()
    state_dir: Path
    """Durable state (SQLite) and the filesystem model store live here."""

    @model_validator(mode="after")
    def _cohort(self) -> "CoordinatorConfig":
        c = self.federation.cohort_size
        if c is not None and c < self.federation.min_sites:
            raise ValueError(f"federation.cohort_size ({c}) must be >= federation.min_sites ({self.federation.min_sites})")
        return self


def _overrides(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in environ.items():
        if key.startswith("FEDQUILT_") and "__" in key:
            section, field = key[len("FEDQUILT_") :].lower().split("__", 1)
            out.setdefault(section, {})[field] = value
    return out


def load_config(path: Path, environ: dict[str, str] | None = None) -> CoordinatorConfig:
    """Read, override from the environment, resolve relative paths against the file, validate."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"coordinator config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"coordinator config {path} is not valid TOML: {exc}") from None
    for section, fields in _overrides(dict(os.environ if environ is None else environ)).items():
        raw.setdefault(section, {}).update(fields)
    base = path.resolve().parent
    for section, keys in (("tls", ("ca", "cert", "key", "crl")), ("", ("state_dir",))):
        table = raw.get(section, {}) if section else raw
        for k in keys:
            if isinstance(table.get(k), str):
                table[k] = str((base / table[k]).resolve())
    try:
        return CoordinatorConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']}") from None
