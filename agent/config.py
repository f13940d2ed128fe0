"""Agent configuration: one TOML file in, one validated object out (env overrides like the coordinator's)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CoordinatorAddress(_Strict):
    """Where the coordinator listens and how to reach it."""

    address: str = "localhost:7443"
    server_name: str | None = None
    """Override the TLS server name checked against the coordinator certificate."""
    max_backoff: float = Field(30.0, gt=0)
    """Longest wait between reconnection attempts (exponential backoff with jitter)."""


class AgentTls(_Strict):
    """This site's identity: its certificate and key from `fedquilt certs issue`, and the federation CA."""

    ca: Path
    cert: Path
    key: Path


class ModelSection(_Strict):
    """The local base model and the LoRA this site trains."""

    dir: Path
    task: Literal["causal-lm", "seq-cls"] = "causal-lm"
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    device: str = "auto"
    max_length: int = Field(128, ge=2)
    num_labels: int | None = None
    # --- issue 14: a new seq-cls head is federated state ---
    head_seed: int = Field(0, ge=0)
    """Public seed of a new classification head (parameters the checkpoint lacks); part of the fingerprint."""


class DataSection(_Strict):
    """Local data: JSONL, CSV or a `datasets.save_to_disk` folder."""

    train: Path
    eval: Path | None = None


class AgentConfig(_Strict):
    """The whole agent configuration file."""

    coordinator: CoordinatorAddress = CoordinatorAddress()
    tls: AgentTls
    model: ModelSection
    data: DataSection
    state_dir: Path
    """Site-local state: privacy ledger, caches."""
    dp: dict[str, Any] | None = None
    """Differential privacy (see docs/privacy.md); absent = no DP."""
    seed: int | None = None
    keep_submissions: bool = False
    """Audit copy: keep every vector this site submitted (before masking) under state_dir/submissions."""


def load_agent_config(path: Path, environ: dict[str, str] | None = None) -> AgentConfig:
    """Read, override from ``FEDQUILT_<SECTION>__<FIELD>``, resolve relative paths, validate."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"agent config {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"agent config {path} is not valid TOML: {exc}") from None
    for key, value in (os.environ if environ is None else environ).items():
        if key.startswith("FEDQUILT_") and "__" in key:
            section, field = key[len("FEDQUILT_") :].lower().split("__", 1)
            raw.setdefault(section, {})[field] = value
    base = path.resolve().parent
    for section, keys in (("tls", ("ca", "cert", "key")), ("model", ("dir",)), ("data", ("train", "eval")),
                          ("", ("state_dir",))):
        table = raw.get(section, {}) if section else raw
        for k in keys:
            if isinstance(table.get(k), str):
                table[k] = str((base / table[k]).resolve())
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
