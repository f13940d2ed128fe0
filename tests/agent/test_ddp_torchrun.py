"""Issue 16: the trainer under ``torchrun --nproc-per-node=2`` (gloo, CPU) equals one process on the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedquilt.agent.data import load_dataset
from fedquilt.agent.ddp_trainer import ShardedBatches
from fedquilt.agent.distributed import DistributedError, Ranks, Role, refuse_dp
from fedquilt.agent.trainer import LoraTrainer
from fedquilt.cli.workspace import Workspace

from ddp_plan import HP, TARGETS, plan_for

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
HERE = Path(__file__).parent


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("torchrun") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*cmd, "--standalone", f"--nproc-per-node={nproc}", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_two_ranks_give_the_single_process_update(tiny_workspace: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    proc = torchrun(str(HERE / "ddp_worker.py"), str(tiny_workspace.model_dir), str(tiny_workspace.sites[0].train),
                    str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["backend"] == "gloo" and ddp["world"] == 2 and ddp["steps"] == HP.local_steps

    single = LoraTrainer(tiny_workspace.model_dir, "causal-lm", TARGETS, device="cpu", seed=3)
    data = load_dataset(tiny_workspace.sites[0].train, single.tokenizer, "causal-lm")
    plan = plan_for(single.target_names())
    res = single.train(plan, data, HP, progress=False)
    assert res.update.adapter is not None
    worst = 0.0
    for name, f in res.update.adapter.items():
        for which in ("A", "B"):
            got, want = ddp["factors"][f"{name}.{which}"], getattr(f, which)
            assert torch.allclose(got, want, atol=2e-6, rtol=1e-5), (name, which, float((got - want).abs().max()))
            worst = max(worst, float((got - want).abs().max()))
            assert not torch.equal(want, getattr(plan.init[name], which))  # type: ignore[index]  # training moved it
    assert ddp["loss_before"] == pytest.approx(res.loss_before, rel=1e-5)
    assert ddp["loss_after"] == pytest.approx(res.loss_after, rel=1e-5)
    assert ddp["losses"] == pytest.approx(res.losses, rel=1e-5)  # every step's loss is the global batch's
    print(f"DDP (2 x gloo) vs one process: max |difference| of the factors {worst:.2e}")


def test_sharded_batches_are_the_single_process_batches() -> None:
    from torch.utils.data import BatchSampler, SequentialSampler

    batches = BatchSampler(SequentialSampler(range(37)), 8, drop_last=False)
    shards = [list(ShardedBatches(batches, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [len(ShardedBatches(batches, r, 3)) for r in range(3)] == [5, 5, 5]
    for i, whole in enumerate(batches):
        assert sum((s[i] for s in shards), []) == whole  # rank order rebuilds each global batch exactly
    tiny = BatchSampler(SequentialSampler(range(17)), 8, drop_last=False)  # last batch of 1 < 3 ranks: skipped
    assert [len(list(ShardedBatches(tiny, r, 3))) for r in range(3)] == [2, 2, 2] == [len(ShardedBatches(tiny, 0, 3))] * 3


def test_ranks_from_the_launcher_environment() -> None:
    assert Ranks.from_env({}) == Ranks(0, 1, 0) and not Ranks.from_env({}).distributed
    r = Ranks.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert r.role is Role.FOLLOWER and r.distributed and Ranks.from_env({"WORLD_SIZE": "4"}).role is Role.LEADER
    with pytest.raises(DistributedError, match=r"RANK must be in \[0, WORLD_SIZE\), got RANK=2, WORLD_SIZE=2"):
        Ranks.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="must be integers"):
        Ranks.from_env({"RANK": "x"})


def test_dp_with_several_processes_is_refused_clearly() -> None:
    refuse_dp(Ranks(0, 1, 0), {"epsilon": 1.0})  # one process: fine
    refuse_dp(Ranks(0, 2, 0), None)  # no DP: fine
    with pytest.raises(DistributedError, match=r"\[dp\] \(DP-SGD\) is not supported with several training processes"):
        refuse_dp(Ranks(1, 2, 1), {"epsilon": 1.0})


def test_agent_run_under_torchrun_with_dp_stops_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from fedquilt.cli.main import main

    cfg = tmp_path / "agent.toml"
    cfg.write_text('state_dir = "state"\n[tls]\nca = "ca.pem"\ncert = "c.pem"\nkey = "k.pem"\n'
                   '[model]\ndir = "model"\n[data]\ntrain = "t.jsonl"\n[dp]\nnoise_multiplier = 1.0\n')
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["agent", "run", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "fedquilt: error: [dp] (DP-SGD) is not supported with several training processes (WORLD_SIZE=2)" in err
    import torch.distributed as dist

    assert not dist.is_initialized()  # refused before any process group or model was set up
