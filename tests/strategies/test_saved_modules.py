"""Dense modules_to_save through any rule: the exact weighted mean, and names a site may not submit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategies_harness import cohort, context, plain_sum

from fedquilt.coordinator.collect import PlainCollector, check_names
from fedquilt.coordinator.errors import InvalidRequest
from fedquilt.proto.codec import encode_tensors
from fedquilt.strategies.base import LocalUpdate, RoundContext
from fedquilt.strategies.registry import federated_rule
from fedquilt.strategies.saved_modules import saved_key


def _ctx(ranks: dict[str, int], rnd: int = 1) -> RoundContext:
    c = context(ranks, rnd=rnd)
    return RoundContext(round=c.round, shapes=c.shapes, ranks=c.ranks, session=c.session, saved=("classifier",))


@pytest.mark.parametrize("name", ["fedit", "ffa", "rotalign", "secure-stack", "flexlora", "dense"])
def test_head_is_the_sample_weighted_mean_under_every_rule(name: str) -> None:
    ranks = {"a": 4, "b": 4, "c": 4}
    rule = federated_rule(name)
    gen = torch.Generator().manual_seed(1)
    sites = cohort(ranks, seed=2)
    heads = {s: {"classifier.weight": torch.randn(3, 16, generator=gen), "classifier.bias": torch.randn(3, generator=gen)}
             for s in sites}
    ctx = _ctx(ranks)
    updates = {}
    for s, (adapter, n) in sites.items():
        dense = {m: f.delta().float() for m, f in adapter.items()} if name == "dense" else None
        updates[s] = LocalUpdate(adapter=None if dense else adapter, dense=dense, saved=heads[s])
    out, broadcast = None, None
    for phase in range(rule.phases):
        vecs = [rule.vectors(phase, updates[s], sites[s][1], ctx, broadcast) for s in sites]
        assert all((saved_key("classifier.weight") in v) == (phase == rule.phases - 1) for v in vecs)
        out = rule.combine(phase, plain_sum(vecs), ctx, None, broadcast)
        broadcast = out
    total = sum(n for _, n in sites.values())
    for p in ("classifier.weight", "classifier.bias"):
        want = sum(sites[s][1] * heads[s][p].double() for s in sites) / total
        torch.testing.assert_close(out.saved[p].double(), want, atol=1e-6, rtol=1e-6)
    # The next round starts every site from that head.
    plan = rule.start(out, _ctx(ranks, rnd=2), "a", 16.0)
    assert plan.modules_to_save == ("classifier",) and torch.equal(plan.saved_init["classifier.weight"], out.saved["classifier.weight"])


def test_update_without_the_head_is_refused() -> None:
    rule = federated_rule("fedit")
    ranks = {"a": 4}
    adapter, n = cohort(ranks, seed=0)["a"]
    with pytest.raises(ValueError, match="modules_to_save"):
        rule.vectors(0, LocalUpdate(adapter=adapter), n, _ctx(ranks), None)


def test_a_site_cannot_smuggle_other_dense_tensors_as_saved() -> None:
    """A hostile site names an embedding matrix 'saved': the collector refuses it, the round's head passes."""
    modules = frozenset({"layers.0.q_proj"})
    good = {"__n__": (1,), "layers.0.q_proj/A": (4, 16), "classifier.weight/saved": (3, 16)}
    check_names("site-a", good, modules, ("classifier",))
    for bad in ("bert.embeddings.word_embeddings.weight/saved", "classifier_extra.weight/saved"):
        with pytest.raises(InvalidRequest, match="does not train"):
            check_names("site-a", {**good, bad: (8,)}, modules, ("classifier",))
    with pytest.raises(InvalidRequest, match="does not train"):  # no saved modules declared: nothing passes
        check_names("site-a", good, modules, ())
    collector = PlainCollector({"site-a"}, modules=modules, saved=("classifier",))
    payload = encode_tensors({"__n__": np.ones(1, np.float32), "layers.0.q_proj/A": np.ones((4, 16), np.float32),
                              "embeddings.weight/saved": np.ones(8, np.float32)})
    with pytest.raises(InvalidRequest):
        collector.add("site-a", payload)
    assert collector.sums == {}  # state intact


def test_saved_head_travels_in_the_global_and_the_published_folder(tmp_path) -> None:
    from fedquilt.contract import decode_aggregate, encode_aggregate
    from fedquilt.strategies.adapters import load_peft, load_saved, save_peft
    from fedquilt.strategies.base import Aggregate

    ranks = {"a": 4}
    adapter, _ = cohort(ranks, seed=4)["a"]
    head = {"classifier.weight": torch.randn(3, 16), "classifier.bias": torch.randn(3)}
    back = decode_aggregate(encode_aggregate(Aggregate(adapter=adapter, saved=head)))
    assert sorted(back.saved) == sorted(head) and all(torch.equal(back.saved[k], head[k]) for k in head)
    save_peft(adapter, tmp_path, "base", "seq-cls", saved=head)
    import json

    assert json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"] == ["classifier"]
    loaded = load_saved(tmp_path)
    assert sorted(loaded) == sorted(head) and all(torch.equal(loaded[k], head[k]) for k in head)
    assert sorted(load_peft(tmp_path)) == sorted(adapter)  # the LoRA part is read as before
