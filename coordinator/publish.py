"""Turn a round's ``Aggregate`` into a signed, versioned, standard PEFT adapter in the store."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..strategies.adapters import Task, save_peft
from ..strategies.base import Aggregate
from ..strategies.lora import Adapter, factor
from . import manifest as manifests
from .registry import ModelStore


def publishable_adapter(agg: Aggregate) -> tuple[Adapter, dict[str, float]]:
    """The adapter to publish: LoRA factors as they are, dense updates factored exactly by SVD."""
    adapter: Adapter = dict(agg.adapter or {})
    energy: dict[str, float] = {}
    for name, delta in (agg.dense or {}).items():
        adapter[name], energy[name] = factor(delta)
    return adapter, energy


def adapter_files(
    adapter: Adapter, base_model: str, task: Task, saved: Mapping[str, torch.Tensor] | None = None
) -> dict[str, bytes]:
    """The two files of a PEFT adapter folder, as bytes (``saved``: dense ``modules_to_save`` parameters)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_peft(adapter, Path(tmp), base_model=base_model, task=task, saved=saved)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir())}


def version_name(round_number: int) -> str:
    """Versions are named by round so they sort in order."""
    return f"v{round_number:04d}"


def publish(
    store: ModelStore,
    model: str,
    round_number: int,
    agg: Aggregate,
    task: Task,
    key_pem: bytes,
    cert_pem: bytes,
    facts: dict[str, Any],
) -> str:
    """Write one version (adapter + signed manifest) atomically; returns its name."""
    adapter, _ = publishable_adapter(agg)
    files = adapter_files(adapter, base_model=f"fedquilt:{facts.get('base_fingerprint', '')[:16]}", task=task,
                          saved=agg.saved)
    info = dict(agg.info)
    manifest = manifests.build(files, model=model, round=round_number, **facts, aggregate=info)
    version = version_name(round_number)
    manifest["version"] = version
    store.publish(model, version, files, manifests.sign(manifest, key_pem, cert_pem))
    return version
