"""A hostile site cannot take the federation over by the numbers it declares or the count it submits.

Real agent loops (own certificate and channel, the real secure-sum client) around a stand-in trainer;
the hostile site is an ``AgentLoop`` whose site machine changes its submission after the honest computation.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from fedquilt.agent.loop import AgentLoop
from fedquilt.agent.site_machine import SiteMachine
from fedquilt.strategies.adapters import load_peft
from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.strategies.base import N_KEY

INVALID = grpc.StatusCode.INVALID_ARGUMENT

HONEST = ("site-0", "site-1")


class CancellingMachine(SiteMachine):
    """Submits a count that cancels the honest sites' counts (inside the clip range)."""

    def phase_vectors(self, work: Any, phase: int, ctx: Any) -> dict[str, Any]:
        vectors = dict(super().phase_vectors(work, phase, ctx))
        vectors[N_KEY] = np.array([-(2 * 10) + 0.0005], np.float32)  # the two honest sites submit 10 each
        return vectors


class CancellingCount(AgentLoop):
    machine_class = CancellingMachine


class InflatedMachine(SiteMachine):
    """Declares 10 samples in its Hello but submits its factors weighted by 2^40."""

    def phase_vectors(self, work: Any, phase: int, ctx: Any) -> dict[str, Any]:
        vectors = dict(super().phase_vectors(work, phase, ctx))
        factor = float(2**40) / work.n
        return {k: np.asarray(v, np.float64) * factor for k, v in vectors.items()}


class InflatedCount(AgentLoop):
    machine_class = InflatedMachine


def _serve(loop: AgentLoop) -> None:
    try:
        loop.run()
    except grpc.RpcError:  # the test stopped the coordinator
        pass


def _run(loops: list[AgentLoop]) -> list[threading.Thread]:
    threads = [threading.Thread(target=_serve, args=(loop,), daemon=True) for loop in loops]
    for t in threads:
        t.start()
    return threads


def _published(w: Any, tmp: Path) -> dict[str, torch.Tensor]:
    version = w.running.store.resolve(w.files.model, "latest")
    folder = tmp / version
    folder.mkdir()
    for name in w.running.store.manifest(w.files.model, version)["files"]:
        (folder / name).write_bytes(w.running.store.read(w.files.model, version, name))
    return {m: f.delta().to(torch.float64) for m, f in load_peft(folder).items()}


def _mean_delta(trainers: list[Any], weights: list[float], rank: int) -> dict[str, torch.Tensor]:
    """FedIT's published ΔW from each site's own (A, B): (Σ p_i B_i)(Σ p_i A_i) · s."""
    out = {}
    for module in trainers[0]:
        a = sum(w * trainers[i][module].A.double() for i, w in enumerate(weights))
        b = sum(w * trainers[i][module].B.double() for i, w in enumerate(weights))
        out[module] = trainers[0][module].scaling * (b @ a)
    return out


@pytest.mark.parametrize("hostile", [CancellingCount, InflatedCount], ids=["cancelling-count", "inflated-count"])
def test_a_count_other_than_the_assigned_one_discards_the_secure_round(coordinator, hostile: type[AgentLoop]) -> None:
    w = coordinator(secagg=True, federation={"min_sites": 3})
    loops = [w.standin(s, seed=i) for i, s in enumerate(HONEST)] + [w.standin("site-2", seed=2, loop_class=hostile)]
    _run(loops)
    history = w.wait_history(1, within=60)
    assert history[0]["version"] is None, history
    assert "summed sample count" in history[0]["discarded"], history
    assert w.running.store.versions(w.files.model) == []


class Recording(AgentLoop):
    """An honest loop that keeps the factors it trained (to compute the expected aggregate)."""

    def _handle(self, task: Any) -> None:
        super()._handle(task)
        if task.kind == pb.TRAIN and self.work is not None:
            self.trained_adapter = dict(self.work.update.adapter or {})


@pytest.mark.parametrize("federation, share", [({"weighting": "equal"}, 1 / 3),
                                               ({"max_samples_per_site": 20}, 20 / 40)],
                         ids=["equal-weighting", "capped-count"])
def test_a_site_claiming_2_to_the_30_samples_gets_only_its_bounded_weight(coordinator, tmp_path: Path,
                                                                          federation: dict[str, Any], share: float) -> None:
    w = coordinator(secagg=True, federation={"min_sites": 3, **federation})
    loops = [w.standin(s, seed=i, loop_class=Recording) for i, s in enumerate(HONEST)]
    loops.append(w.standin("site-2", seed=2, loop_class=Recording, n=2**30))
    _run(loops)
    history = w.wait_history(1, within=60)
    assert history[0]["version"] == "v0001", history
    honest = (1 - share) / 2
    expected = _mean_delta([loop.trained_adapter for loop in loops], [honest, honest, share], 2)
    got = _published(w, tmp_path)
    for module, delta in expected.items():
        torch.testing.assert_close(got[module], delta, rtol=2e-3, atol=2e-4)
    # ... and is far from what the hostile site alone would have made of it
    alone = _mean_delta([loops[2].trained_adapter], [1.0], 2)
    module = next(iter(alone))
    assert torch.linalg.norm(got[module] - alone[module]) > 0.3 * torch.linalg.norm(alone[module])


def test_a_hello_declaring_2_to_the_40_samples_is_refused(coordinator) -> None:
    w = coordinator()
    before = w.snapshot()
    assert w.refused(lambda: w.hello("site-0", num_samples=2**40)) is INVALID
    assert w.snapshot() == before


def test_a_plaintext_upload_with_another_count_is_refused(coordinator) -> None:
    w = coordinator()
    trained = w.open_round()
    tasks = w.next_stage(trained, pb.UPLOAD_PLAIN)
    before = w.snapshot()
    assert w.refused(lambda: w.upload("site-0", tasks["site-0"], codec.encode_tensors(w.tensors(n=2**20)))) is INVALID
    assert w.snapshot() == before


def test_an_aggregate_far_larger_than_the_previous_global_is_discarded(coordinator) -> None:
    w = coordinator(federation={"rounds": 3})
    assert w.publish_one_round()[0]["version"] == "v0001"
    done = len(w.running.orchestrator.status()["history"])
    steps = {s: max(w.hello(s).last_step - 1, 0) for s in HONEST}
    uploads = w.next_stage({s: w._next_train(s, steps[s]) for s in HONEST}, pb.UPLOAD_PLAIN)
    huge = {k: (v * 1e4 if k != N_KEY else v) for k, v in w.tensors(seed=5).items()}  # the honest count, huge factors
    w.upload("site-0", uploads["site-0"], codec.encode_tensors(huge))
    w.upload("site-1", uploads["site-1"], codec.encode_tensors(w.tensors(seed=6)))
    history = w.wait_history(done + 1)
    assert history[-1]["version"] is None and "previous global" in history[-1]["discarded"], history[-1]
    assert w.running.store.versions(w.files.model) == ["v0001"]
    assert w.publish_one_round()[-1]["version"] == "v0002"  # an ordinary round after it publishes
