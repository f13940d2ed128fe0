"""A publish that dies between the blob writes and the manifest leaves no version, no temp file, and can be retried.

The crash is simulated by making ``os.replace`` raise for the write that would commit the manifest
(and, separately, for the ``latest`` tag after it): everything before it has happened, nothing after.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fedquilt.coordinator import manifest as manifests
from fedquilt import atomic_file
from fedquilt.coordinator.pki import Role, init_ca, issue
from fedquilt.coordinator.publish import publish
from fedquilt.coordinator.registry import FileModelStore, UnknownVersion
from fedquilt.coordinator.server import load_global
from fedquilt.strategies.base import Aggregate
from fedquilt.strategies.lora import LoraFactors

MODEL = "m"


def _keys(tmp_path: Path) -> tuple[bytes, bytes, bytes]:
    init_ca(tmp_path / "ca")
    c = issue(tmp_path / "ca", tmp_path / "coord", "coordinator", Role.COORDINATOR)
    return c.key.read_bytes(), c.cert.read_bytes(), c.ca.read_bytes()


def _agg(seed: int) -> Aggregate:
    g = torch.Generator().manual_seed(seed)
    return Aggregate(adapter={"model.layers.0.self_attn.q_proj": LoraFactors(
        torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g), 2.0)})


def _crash_on(name_suffix: str, real: Callable[..., None] = os.replace) -> Callable[..., None]:
    def replace(src: Any, dst: Any) -> None:
        if str(dst).endswith(name_suffix):
            raise OSError(f"simulated crash while committing {dst}")
        real(src, dst)
    return replace


def _hidden_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*"))


def _publish(store: FileModelStore, number: int, keys: tuple[bytes, bytes, bytes]) -> str:
    return publish(store, MODEL, number, _agg(number), "causal-lm", keys[0], keys[1],
                   {"base_fingerprint": "f" * 64, "round_id": f"r{number:04d}-x", "contributors": 3})


def test_crash_before_manifest_leaves_no_version_and_retry_publishes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _keys(tmp_path)
    store = FileModelStore(tmp_path / "store")
    assert _publish(store, 1, keys) == "v0001"
    blobs_before = set((tmp_path / "store" / "blobs").iterdir())
    monkeypatch.setattr(atomic_file.os, "replace", _crash_on("v0002.json"))
    with pytest.raises(OSError, match="simulated crash"):
        _publish(store, 2, keys)
    # The new weights blob was written (the adapter config is identical, so deduplicated); the version was not.
    assert len(set((tmp_path / "store" / "blobs").iterdir()) - blobs_before) == 1
    assert store.versions(MODEL) == ["v0001"] and store.resolve(MODEL, "latest") == "v0001"
    with pytest.raises(UnknownVersion):
        store.manifest(MODEL, "v0002")
    assert _hidden_files(tmp_path / "store") == []  # no temp file survives the failed replace
    assert load_global(store, MODEL, dense=False)[1:] == ("v0001", 1)

    monkeypatch.undo()
    assert _publish(store, 2, keys) == "v0002"
    assert store.versions(MODEL) == ["v0001", "v0002"] and store.resolve(MODEL, "latest") == "v0002"
    for version in store.versions(MODEL):
        manifest = store.manifest(MODEL, version)
        assert manifests.verify(manifest, keys[2]) == "coordinator"
        manifests.check_files(manifest, {n: store.read(MODEL, version, n) for n in manifest["files"]})
    assert _hidden_files(tmp_path / "store") == []


def test_crash_between_manifest_and_latest_tag_resumes_from_the_newest_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest is the commit point: a stale ``latest`` tag must not make the coordinator redo the round."""
    keys = _keys(tmp_path)
    store = FileModelStore(tmp_path / "store")
    _publish(store, 1, keys)
    monkeypatch.setattr(atomic_file.os, "replace", _crash_on("tags.json"))
    with pytest.raises(OSError, match="simulated crash"):
        _publish(store, 2, keys)
    monkeypatch.undo()
    assert store.versions(MODEL) == ["v0001", "v0002"]
    assert store.resolve(MODEL, "latest") == "v0001"  # the tag did not move …
    glob, version, rounds_done = load_global(store, MODEL, dense=False)
    assert (version, rounds_done) == ("v0002", 2)  # … but the restarted coordinator resumes after round 2
    assert glob is not None and glob.adapter is not None
    expected = _agg(2).adapter
    assert expected is not None
    for name, f in glob.adapter.items():
        assert torch.allclose(f.B @ f.A * f.scaling, expected[name].B @ expected[name].A * expected[name].scaling,
                              atol=1e-6)
    assert _hidden_files(tmp_path / "store") == []
