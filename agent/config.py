"""Agent configuration: one TOML file in, one validated object out (env overrides like the coordinator's)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..strategies.adapters import Task


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CoordinatorAddress(_Strict):
    """Where the coordinator listens and how to reach it."""

    address: str = "localhost:7443"
    server_name: str | None = None
    """Override the TLS server name checked against the coordinator certificate."""
    max_backoff: float = Field(30.0, gt=0)
    """Longest wait between reconnection attempts (exponential backoff with jitter)."""

    # -- connection diagnosis (issue 13) --
    max_failed_handshakes: int | None = Field(10, ge=1)
    """Exit non-zero after this many TLS handshake failures in a row (wrong CA, name, role, expired); None: retry."""

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        from ..address import parse_address

        parse_address(v, allow_port_zero=False)
        return v


class AgentTls(_Strict):
    """This site's identity: its certificate and key from `fedquilt certs issue`, and the federation CA."""

    ca: Path
    cert: Path
    key: Path


class Quantization(str, Enum):
    """Precision the frozen base is held in: as loaded, or bitsandbytes 4-bit (QLoRA's nf4) / 8-bit, CUDA only."""

    NONE = "none"
    FOUR_BIT = "4bit"
    EIGHT_BIT = "8bit"


class ModelSection(_Strict):
    """The local base model and the LoRA this site trains."""

    dir: Path
    task: Task = "causal-lm"
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    device: str = "auto"
    max_length: int = Field(128, ge=2)
    num_labels: int | None = None
    # --- issue 14: a new seq-cls head is federated state ---
    head_seed: int = Field(0, ge=0)
    """Public seed of a new classification head (parameters the checkpoint lacks); part of the fingerprint."""

    # ---- site hardware (issue 16): quantized bases; several GPUs come from torchrun, not from here ----
    quantization: Quantization = Quantization.NONE
    """``"4bit"`` (nf4, double quantization, bf16 compute) or ``"8bit"`` through bitsandbytes; CUDA only."""


class DataSection(_Strict):
    """Local data: JSONL, CSV or a `datasets.save_to_disk` folder."""

    train: Path
    eval: Path | None = None


# ---- [privacy]: this site's own floor under every round (issue 11; the coordinator can only raise it) ----
class PrivacySection(_Strict):
    """What this site insists on before it advertises keys, shares, masks, reveals or trains (docs/privacy.md).

    The coordinator's announcements are checked against these values; a round below them is refused
    with one log line and a ``Submit.refusal`` the coordinator records. Nothing is revealed.
    """

    min_secure_sum_sites: int = Field(3, ge=2)
    """Smallest secure sum this site takes part in (cohort, advertisers, sharers, survivors, signers);
    the federation's ``min_contributors`` from the round spec raises it, never lowers it."""
    min_threshold_fraction: float = Field(0.5, ge=0.5, lt=1.0)
    """The announced SecAgg threshold must be above this fraction of the cohort (an honest majority at least)."""
    min_dp_batch_size: int = Field(8, ge=1)
    """With DP on: smallest training batch size accepted from the coordinator."""
    min_dp_eval_batches: int = Field(1, ge=1)
    """With DP on: fewest evaluation batches accepted. Each holds ``batch_size`` (>= ``min_dp_batch_size``)
    records, so the default already averages the securely summed eval loss over at least 8 records per site;
    raise it to ask for more (the federation's default ``eval_batches`` is 1)."""


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
    privacy: PrivacySection = PrivacySection()
    """This site's privacy floor (``[privacy]``); safe defaults."""

    # -- typed [dp] (issue 13): a typo is refused at start, naming the allowed keys --
    @field_validator("dp")
    @classmethod
    def _dp(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        from ..config_errors import describe_errors
        from .privacy import DPConfig

        try:
            DPConfig.model_validate({k: x for k, x in v.items() if k != "site_noise"})
        except ValidationError as exc:
            raise ValueError(describe_errors(exc, DPConfig, ("dp",))) from None
        return v


class ClientConfig(BaseModel):
    """What a consumer (``fedquilt pull``, ``versions``) needs: ``[coordinator]`` and ``[tls]``; other tables ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    coordinator: CoordinatorAddress = CoordinatorAddress()
    tls: AgentTls


def load_client_config(path: Path, environ: dict[str, str] | None = None) -> ClientConfig:
    """A consumer's (or an agent's) config file, reading only ``[coordinator]`` and ``[tls]``."""
    return _load(path, environ, ClientConfig)


def load_agent_config(path: Path, environ: dict[str, str] | None = None) -> AgentConfig:
    """Read, override from ``FEDQUILT_AGENT_<SECTION>__<FIELD>``, resolve relative paths, validate."""
    return _load(path, environ, AgentConfig)


_Schema = TypeVar("_Schema", bound=BaseModel)
_PATHS = (("tls", ("ca", "cert", "key")), ("model", ("dir",)), ("data", ("train", "eval")), ("", ("state_dir",)))


def _load(path: Path, environ: dict[str, str] | None, schema: type[_Schema]) -> _Schema:
    from ..config_file import AGENT_ENV, load_toml

    return load_toml(path, schema, what="agent config", env_prefix=AGENT_ENV, environ=environ, paths=_PATHS)
