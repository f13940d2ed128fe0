"""Coordinator configuration: one TOML file in, one validated object out.

Environment variables ``FEDQUILT_COORDINATOR_<SECTION>__<FIELD>`` override file values (for containers),
e.g. ``FEDQUILT_COORDINATOR_SERVER__LISTEN=0.0.0.0:7443`` (``config_file``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..strategies.adapters import Task


class Weighting(str, Enum):
    """How the federation weights sites' updates."""

    SAMPLES = "samples"
    EQUAL = "equal"


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

    # ---- one bad site can neither take over nor stall the server (issue 12) ----
    maximum_concurrent_rpcs: int = Field(1024, ge=8)
    """Calls in flight across every peer; one more is answered RESOURCE_EXHAUSTED."""
    max_calls_per_peer: int = Field(16, ge=2)
    """Calls in flight from one certificate; one more is answered RESOURCE_EXHAUSTED."""
    upload_idle_seconds: float = Field(30.0, gt=0)
    """An upload stream that sends nothing for this long is cut off (DEADLINE_EXCEEDED)."""
    upload_stream_seconds: float = Field(900.0, gt=0)
    """The longest an upload stream may take in total."""
    pull_roles: tuple[Literal["site", "admin", "consumer", "coordinator"], ...] = ("site", "admin", "consumer")
    """Certificate roles that may list and pull published versions."""
    log_refusals_every: float = Field(10.0, ge=0)
    """At most one refusal log line per peer and RPC in this many seconds (the rest are counted)."""
    status_token_file: Path | None = None
    """A file holding a bearer token the status page and /metrics then require (not /healthz)."""

    # -- strict addresses (issue 13): "7451" or "host:port:x" is refused here, not at bind --
    @field_validator("listen", "metrics_listen")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v)


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
    task: Task = "causal-lm"
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
    """Hyper-parameters sent to the agents, checked here against the agent's ``TrainHyper`` (docs/coordinator.md)."""
    train_timeout: float = Field(600.0, gt=0)
    stage_timeout: float = Field(120.0, gt=0)
    wait_for_sites: float = Field(60.0, gt=0)
    """How long a round waits for the cohort it asks for (``cohort_size`` online sites; without it, after a restart,
    every site known from before) before it opens with who is there (at least ``min_sites``), naming who is missing."""
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

    # ---- cohort sampling and liveness (issue 15: rounds that stay steady as cohorts grow) ----
    over_select: float = Field(0.0, ge=0, le=1)
    """Sample this fraction more sites than the round needs (ceil); training closes as soon as the round's
    worth (``cohort_size``, or every sampled site without it) has finished, and the slowest are released."""
    offline_after: float = Field(10.0, gt=0)
    """A site counts as offline this many seconds after its last long poll (a polling site is seen every second;
    a site whose connection is gone at once); dead sites are not sampled into the next round."""

    # ---- bounded weights and validated site input (issue 12) ----
    weighting: Weighting = Weighting.SAMPLES
    """How each site's update is weighted: by its declared sample count (capped) or equally."""
    max_samples_per_site: int | None = Field(100_000, ge=1)
    """Cap on the sample count a site is weighted by (None: no cap)."""
    max_rank: int = Field(256, ge=1)
    """Largest LoRA rank a site may declare (also at most min(d, k) of every target)."""
    target_shapes: dict[str, tuple[int, int]] | None = None
    """The federation's target modules and their (d, k); default: the first published version's, else the
    shapes most online sites declare when the first round opens."""
    max_norm_growth: float | None = Field(10.0, gt=0)
    """A round whose aggregate's norm exceeds this many times the previous global's is discarded (None: off)."""

    @field_validator("target_shapes")
    @classmethod
    def _shapes(cls, v: dict[str, tuple[int, int]] | None) -> dict[str, tuple[int, int]] | None:
        if v is not None and (not v or any(min(s) <= 0 for s in v.values())):
            raise ValueError(f"must name at least one module with positive (d, k), got {v}")
        return v

    # -- typed [federation.train] (issue 13): a typo is refused at start, not by every agent mid-round --
    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        from ..contract import TrainHyper
        from ..config_errors import describe_errors

        try:
            TrainHyper.model_validate(v)
        except ValidationError as exc:
            raise ValueError(describe_errors(exc, TrainHyper, ("federation", "train"))) from None
        return v

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

    # ---- secure aggregation floor (issue 11): a "sum" of one site is that site's update ----
    @model_validator(mode="after")
    def _secure_sum_floor(self) -> "CoordinatorConfig":
        if not self.secagg.enabled:
            return self
        if self.federation.min_sites < 2:
            raise ValueError("federation.min_sites must be >= 2 under secure aggregation (a sum over one site is "
                             "that site's update); set secagg.enabled = false to run without it")
        if self.federation.min_contributors is not None and self.federation.min_contributors < 2:
            raise ValueError("federation.min_contributors must be >= 2 under secure aggregation")
        if self.secagg.threshold is not None and self.secagg.threshold < 2:
            raise ValueError("secagg.threshold must be >= 2 (threshold 1 lets one site's update be decoded)")
        return self


def check_address(v: str) -> str:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) with a port in 0..65535, else a ValueError saying so."""
    from ..address import parse_address

    parse_address(v)
    return v


def _require_train(path: Path, raw: dict[str, Any]) -> None:
    if isinstance(raw.get("federation"), dict) and not raw["federation"].get("train"):  # issue 13: no silent default
        raise ValueError(f"{path}: federation.train is missing: set the agents' local training, at least local_steps "
                         "(or epochs), e.g. train = { local_steps = 50, batch_size = 8, lr = 3e-4, eval_batches = 4 } "
                         "(docs/coordinator.md lists every key)")


def load_config(path: Path, environ: dict[str, str] | None = None) -> CoordinatorConfig:
    """Read, override from ``FEDQUILT_COORDINATOR_<SECTION>__<FIELD>``, resolve relative paths, validate."""
    from ..config_file import COORDINATOR_ENV, load_toml

    return load_toml(path, CoordinatorConfig, what="coordinator config", env_prefix=COORDINATOR_ENV, environ=environ,
                     paths=(("tls", ("ca", "cert", "key", "crl")), ("server", ("status_token_file",)), ("", ("state_dir",))),
                     prepare=lambda raw: _require_train(path, raw))
