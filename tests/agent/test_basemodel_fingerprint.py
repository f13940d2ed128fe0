"""Base-model fingerprint against an independent reference, its stability, and local loading."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedquilt.agent.basemodel import BaseModelError, FingerprintMismatch, check_fingerprint, fingerprint, load_base
from fedquilt.cli.workspace import Workspace

_ST_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


def reference_fingerprint(model_dir: Path) -> str:
    """The documented recipe, written the slow way with safetensors + torch."""
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype", "use_cache"):
        config.pop(key, None)
    tensors: dict[str, torch.Tensor] = {}
    for f in model_dir.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    h = hashlib.sha256(b"fedquilt-base-fingerprint-v1\n")
    canon = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    h.update(struct.pack("<Q", len(canon)) + canon)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        meta = json.dumps([name, _ST_DTYPE[t.dtype], list(t.shape)], separators=(",", ":")).encode()
        h.update(struct.pack("<QQ", len(meta), len(raw)) + meta + raw)
    return h.hexdigest()


@pytest.fixture()
def model_copy(tiny_workspace: Workspace, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_workspace.model_dir, tmp_path / "model"))


def test_matches_reference(model_copy: Path) -> None:
    fp = fingerprint(model_copy)
    assert len(fp) == 64 and fp == reference_fingerprint(model_copy)


def test_stable_across_save_load_and_resharding(tiny_workspace: Workspace, tmp_path: Path) -> None:
    model, _ = load_base(tiny_workspace.model_dir, "causal-lm", device="cpu")
    model.save_pretrained(str(tmp_path / "resaved"))
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="100KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    fp = fingerprint(tiny_workspace.model_dir)
    assert fingerprint(tmp_path / "resaved") == fp
    assert fingerprint(tmp_path / "sharded") == fp


def test_changes_when_one_weight_changes(model_copy: Path) -> None:
    before = fingerprint(model_copy)
    path = model_copy / "model.safetensors"
    tensors = load_file(str(path))
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name][3, 5] = torch.nextafter(tensors[name][3, 5], torch.tensor(1.0))  # one ulp
    save_file(tensors, str(path), metadata={"format": "pt"})
    after = fingerprint(model_copy)
    assert after != before and after == reference_fingerprint(model_copy)


def test_changes_with_config_but_not_with_saver_version(model_copy: Path) -> None:
    before = fingerprint(model_copy)
    config = json.loads((model_copy / "config.json").read_text())
    config["transformers_version"] = "0.0.1"
    (model_copy / "config.json").write_text(json.dumps(config, indent=7))
    assert fingerprint(model_copy) == before
    config["rms_norm_eps"] = 1e-5
    (model_copy / "config.json").write_text(json.dumps(config))
    assert fingerprint(model_copy) != before


def test_check_fingerprint_names_both_values(model_copy: Path) -> None:
    actual = fingerprint(model_copy)
    assert check_fingerprint(model_copy, actual.upper()) == actual
    wrong = "0" * 64
    with pytest.raises(FingerprintMismatch) as info:
        check_fingerprint(model_copy, wrong)
    assert wrong in str(info.value) and actual in str(info.value)
    assert (info.value.expected, info.value.actual) == (wrong, actual)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="no \\*.safetensors"):
        fingerprint(tmp_path)
    with pytest.raises(BaseModelError, match="no config.json"):
        load_base(tmp_path, "causal-lm")
    (tmp_path / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(BaseModelError, match="not a safetensors file"):
        fingerprint(tmp_path)


def test_load_base_is_local_and_on_cpu(tiny_cls_workspace: Workspace) -> None:
    model, tok = load_base(tiny_cls_workspace.model_dir, "seq-cls", device="auto")
    assert type(model).__name__ == "LlamaForSequenceClassification"
    param = next(model.parameters())
    assert param.device.type == "cpu" and param.dtype == torch.float32 and not model.training
    assert tok.pad_token_id == model.config.pad_token_id == 0
    with pytest.raises(ValueError, match="task must be"):
        load_base(tiny_cls_workspace.model_dir, "mlm")  # type: ignore[arg-type]
