"""Every aggregation rule end to end over mutual-TLS gRPC with the tiny model: 2 rounds each.

Sums-only rules run under secure aggregation (the default); plaintext ``stack`` runs with it off,
as it must. Sites use different LoRA ranks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedquilt.agent.basemodel import load_base
from fedquilt.strategies.adapters import load_peft
from fedquilt.strategies.registry import RULES

pytestmark = pytest.mark.slow


def _published(fed, version: str, out: Path) -> Path:
    store = fed.running.store
    manifest = store.manifest(fed.files.model, version)
    out.mkdir(parents=True)
    for name in manifest["files"]:
        (out / name).write_bytes(store.read(fed.files.model, version, name))
    return out


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_runs_two_rounds_over_grpc(federation, rule: str, tmp_path: Path) -> None:
    fed = federation(sites=2, rule=rule, rounds=2, secagg=rule != "stack", ranks=[4, 6])
    fed.start_agents()
    history = fed.wait_rounds()
    assert [h["version"] for h in history] == ["v0001", "v0002"], history
    manifest = fed.running.store.manifest(fed.files.model, "v0002")
    assert manifest["rule"] == rule and manifest["contributors"] == 2
    assert (manifest["secure_aggregation"] is None) == (rule == "stack")

    folder = _published(fed, "v0002", tmp_path / "v2")
    adapter = load_peft(folder)
    assert set(adapter) == set(fed.running.orchestrator.shapes or {})
    base, tok = load_base(fed.ws.model_dir, "causal-lm", device="cpu")
    ids = tok(["the clinic reports"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
        after = PeftModel.from_pretrained(base, str(folder)).eval()(input_ids=ids).logits
    assert torch.isfinite(after).all()
    assert (after - before).abs().max() > 1e-4, "the published adapter does not change the model"
