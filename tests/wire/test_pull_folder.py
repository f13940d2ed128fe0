"""`fedquilt pull` never deletes what it did not write: '.', non-empty folders, earlier pulls, modes, --base.

The coordinator is real (mTLS on port 0); the version is published by the real ``publish`` (signed
manifest, PEFT files) so the consumer's verification runs exactly as in production.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

from fedquilt.agent.pull import PullError, pull
from fedquilt.agent.pull_folder import PULL_RECORD, PullFolderError
from fedquilt.cli.main import main
from fedquilt.coordinator.publish import publish
from fedquilt.strategies.base import Aggregate
from fedquilt.strategies.lora import LoraFactors

MODULE = "model.layers.0.self_attn.q_proj"


def _published(coordinator: Any, rounds: int = 1) -> Any:
    w = coordinator()
    coord_dir = w.files.root / "coordinator"
    key, cert = (coord_dir / "coordinator.key").read_bytes(), (coord_dir / "coordinator.pem").read_bytes()
    for r in range(1, rounds + 1):
        agg = Aggregate(adapter={MODULE: LoraFactors(A=torch.full((2, 16), float(r)), B=torch.ones(16, 2), scaling=2.0)})
        facts = {"base_fingerprint": w.fingerprint, "rule": "fedit", "contributors": 2, "cohort": 2, "dropouts": 0}
        version = publish(w.running.store, w.files.model, r, agg, "causal-lm", key, cert, facts)
        w.running.store.tag(w.files.model, "latest", version)
    return w


def _cli(w: Any, *extra: str) -> int:
    ca = w.files.ca_dir / "ca.pem"
    cert, key = w.cert("site-0")
    return main(["pull", w.files.model, "--coordinator", w.address, "--server-name", "localhost", "--ca", str(ca),
                 "--cert", str(cert), "--key", str(key), *extra])


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pull_into_non_empty_folder_is_refused_and_loses_nothing(coordinator: Any, tmp_path: Path) -> None:
    w = _published(coordinator)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x01\x02")
    before = _tree(out)
    assert _cli(w, "--out", str(out)) == 1
    assert _tree(out) == before
    chan = w.channel("site-0")
    with pytest.raises(PullFolderError, match="--force"):
        pull(chan, w.files.model, "latest", out, (w.files.ca_dir / "ca.pem").read_bytes())
    assert _tree(out) == before
    assert _cli(w, "--out", str(out), "--force") == 0
    after = _tree(out)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of the user's lost or changed
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= set(after)


def test_pull_into_dot(coordinator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = _published(coordinator)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert _cli(w, "--out", ".") == 0
    assert json.loads((empty / "manifest.json").read_text())["version"] == "v0001"
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "keep.txt").write_text("keep me")
    monkeypatch.chdir(crowded)
    assert _cli(w, "--out", ".") == 1
    assert _tree(crowded) == {"keep.txt": b"keep me"}
    assert _cli(w, "--out", ".", "--force") == 0
    assert (crowded / "keep.txt").read_text() == "keep me" and (crowded / "adapter_model.safetensors").exists()


def test_repull_replaces_only_what_pull_wrote(coordinator: Any, tmp_path: Path) -> None:
    w = _published(coordinator, rounds=2)
    out = tmp_path / "adapter"
    assert _cli(w, "--out", str(out)) == 0  # latest = v0002
    (out / "README.md").write_text("served by us")
    old_weights = (out / "adapter_model.safetensors").read_bytes()
    # an earlier pull of the same model: written into, the user's file kept
    main_args = ["pull", f"{w.files.model}:v0001"]
    ca, (cert, key) = w.files.ca_dir / "ca.pem", w.cert("site-0")
    assert main([*main_args, "--out", str(out), "--coordinator", w.address, "--server-name", "localhost",
                 "--ca", str(ca), "--cert", str(cert), "--key", str(key)]) == 0
    assert json.loads((out / "manifest.json").read_text())["version"] == "v0001"
    assert (out / "adapter_model.safetensors").read_bytes() != old_weights
    assert (out / "README.md").read_text() == "served by us"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left beside it


def test_pulled_folder_is_readable_by_others(coordinator: Any, tmp_path: Path) -> None:
    w = _published(coordinator)
    old = os.umask(0o022)
    try:
        assert _cli(w, "--out", str(tmp_path / "served")) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "served").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "served" / "adapter_model.safetensors").stat().st_mode) == 0o644


def test_base_rewrites_base_model_name_and_checks_fingerprint(coordinator: Any, tmp_path: Path,
                                                              wire_workspace: Any) -> None:
    w = _published(coordinator)
    out = tmp_path / "with-base"
    assert _cli(w, "--out", str(out), "--base", str(wire_workspace.model_dir)) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(wire_workspace.model_dir.resolve())
    record = json.loads((out / PULL_RECORD).read_text())
    assert record["adapter_config.json"]["base_model_name_or_path"]["published"].startswith("fedquilt:")
    other = tmp_path / "other-base"
    other.mkdir()
    (other / "config.json").write_text("{}")
    shutil.copy(wire_workspace.model_dir / "model.safetensors", other / "model.safetensors")
    with pytest.raises(PullError, match="fingerprint"):
        pull(w.channel("site-0"), w.files.model, "latest", tmp_path / "never", (w.files.ca_dir / "ca.pem").read_bytes(),
             base=str(other))
    assert not (tmp_path / "never").exists()


def test_pull_errors_are_plain(coordinator: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = _published(coordinator)
    ca, (cert, key) = w.files.ca_dir / "ca.pem", w.cert("site-0")
    assert main(["pull", "nobody:latest", "--out", str(tmp_path / "x"), "--coordinator", w.address,
                 "--server-name", "localhost", "--ca", str(ca), "--cert", str(cert), "--key", str(key)]) == 1
    err = capsys.readouterr().err
    assert "has no such thing" in err and "nobody" in err and "_InactiveRpcError" not in err and "debug_error" not in err
