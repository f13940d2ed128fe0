"""DPLoraTrainer + PrivacySite + AgentLoop._train on the tiny workspace, against independent references.

References: Opacus's own ``RDPAccountant`` stepped by hand for ε; a hand-written per-record SGD
loop (each record forwarded alone, unpadded) for what a zero-noise, no-clip DP round must compute.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedquilt import contract
from fedquilt.agent.data import TokenizedDataset, load_dataset
from fedquilt.agent.dp_trainer import DPLoraTrainer, DPTrainResult
from fedquilt.agent.loop import AgentLoop
from fedquilt.agent.privacy import BudgetExhausted, DPConfig, PrivacyError, PrivacyLedger
from fedquilt.agent.privacy_session import PrivacyReport, PrivacySite
from fedquilt.agent.trainer import LoraTrainer, TrainHyper
from fedquilt.cli.workspace import Workspace
from fedquilt.proto.reports import train_report_from_pb
from fedquilt.proto.round_spec import RoundSpec, encode_spec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.strategies.base import TrainingPlan
from fedquilt.strategies.lora import Adapter, LoraFactors

TARGETS = ("q_proj", "v_proj")
RANK, SCALING = 4, 2.0
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*Optimal order:UserWarning"),
]
warnings.filterwarnings("ignore", message=".*Optimal order.*")


@pytest.fixture(scope="module")
def data(tiny_workspace: Workspace) -> TokenizedDataset:
    tok = LoraTrainer(tiny_workspace.model_dir, "causal-lm", TARGETS, device="cpu").tokenizer
    return load_dataset(tiny_workspace.sites[0].train, tok, "causal-lm")


def dp_trainer(ws: Workspace, site: PrivacySite) -> DPLoraTrainer:
    return DPLoraTrainer(ws.model_dir, "causal-lm", TARGETS, site, device="cpu", seed=0)


def site_at(path: Path, **dp: Any) -> PrivacySite:
    return PrivacySite.from_config(dp, path)


def init_adapter(shapes: dict[str, tuple[int, int]], seed: int = 3) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    return {n: LoraFactors(torch.randn(RANK, k, generator=g) * 0.1, torch.randn(d, RANK, generator=g) * 0.1, SCALING)
            for n, (d, k) in shapes.items()}


def reference_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return float(acc.get_epsilon(delta=delta))


def flat(adapter: Adapter) -> torch.Tensor:
    return torch.cat([torch.cat([adapter[n].A.flatten(), adapter[n].B.flatten()]) for n in sorted(adapter)])


# ---- the trainer ---------------------------------------------------------------------------------


def test_dp_round_changes_every_lora_factor_and_reports_opacus_epsilon(
    tiny_workspace: Workspace, data: TokenizedDataset, tmp_path: Path
) -> None:
    site = site_at(tmp_path / "privacy.json", noise_multiplier=0.8, max_grad_norm=0.5, delta=1e-5)
    trainer = dp_trainer(tiny_workspace, site)
    init = init_adapter(trainer.target_names())
    hp = TrainHyper(local_steps=4, batch_size=16, lr=1e-2)
    res = trainer.train(TrainingPlan(rank=RANK, scaling=SCALING, init=init), data, hp, progress=False)
    assert isinstance(res, DPTrainResult) and isinstance(res.privacy, PrivacyReport)
    for name, f in res.update.adapter.items():  # the trap: a model wrapped on the wrong device never moves
        assert not torch.equal(f.A, init[name].A), name
        assert not torch.equal(f.B, init[name].B), name
    q = 1 / math.ceil(len(data) / 16)
    rep = res.privacy
    assert (rep.noise_multiplier, rep.max_grad_norm, rep.delta, rep.mode) == (0.8, 0.5, 1e-5, "hooks")
    assert (rep.steps, rep.round_steps, rep.rounds, len(res.losses)) == (4, 4, 1, 4)
    assert rep.sample_rate == pytest.approx(q, rel=1e-12)
    assert rep.epsilon == pytest.approx(reference_epsilon(0.8, q, 4, 1e-5), rel=1e-9)
    saved = json.loads((tmp_path / "privacy.json").read_text())
    assert saved["rounds"] == 1 and saved["history"] == [[0.8, pytest.approx(q), 4]]
    # After the round the model carries no Opacus hooks: a second round can wrap it again.
    assert trainer._run is None


def test_zero_noise_dp_round_is_per_record_sgd(
    tiny_workspace: Workspace, data: TokenizedDataset, tmp_path: Path
) -> None:
    """σ=0, clip never binding, fixed full batches: DP-SGD must equal SGD on the mean of per-record losses."""
    site = site_at(tmp_path / "p.json", noise_multiplier=0.0, max_grad_norm=1e6, poisson_sampling=False)
    trainer = dp_trainer(tiny_workspace, site)
    init = init_adapter(trainer.target_names())
    plan = TrainingPlan(rank=RANK, scaling=SCALING, init=init)
    hp = TrainHyper(local_steps=3, batch_size=len(data), lr=2.0, optimizer="sgd", max_grad_norm=None)
    got = flat(trainer.train(plan, data, hp, progress=False).update.adapter)

    plain = LoraTrainer(tiny_workspace.model_dir, "causal-lm", TARGETS, device="cpu", seed=0)
    model = plain.prepare(plan)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=2.0)
    for _ in range(3):
        losses = []
        for i in range(len(data)):  # one record at a time, unpadded: obviously per record
            ids = data[i]["input_ids"][None]
            logits = model(input_ids=ids).logits[0, :-1]
            losses.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))
        torch.stack(losses).mean().backward()
        opt.step()
        opt.zero_grad()
    want = flat(plain._read_factors(model, SCALING))
    moved = float((want - flat(init)).norm())
    assert moved > 1e-3
    assert float((got - want).norm()) < 1e-3 * moved
    # The same round with Hugging Face's token-mean loss lands elsewhere: the test can tell.
    hf = flat(plain.train(plan, data, hp, progress=False).update.adapter)
    assert float((hf - want).norm()) > 1e-2 * moved


def test_epsilon_grows_across_rounds_and_a_restart(
    tiny_workspace: Workspace, data: TokenizedDataset, tmp_path: Path
) -> None:
    ledger = tmp_path / "state" / "privacy.json"
    hp = TrainHyper(local_steps=3, batch_size=32, lr=1e-2)
    q = 1 / math.ceil(len(data) / 32)
    plan = TrainingPlan(rank=RANK, scaling=SCALING)
    trainer = dp_trainer(tiny_workspace, site_at(ledger, noise_multiplier=1.0))
    eps = [trainer.train(plan, data, hp, progress=False).privacy.epsilon for _ in range(2)]  # type: ignore[union-attr]
    restarted = dp_trainer(tiny_workspace, site_at(ledger, noise_multiplier=1.0))
    assert restarted.privacy.epsilon() == pytest.approx(eps[1], rel=1e-12)
    rep = restarted.train(plan, data, hp, progress=False).privacy
    assert rep is not None
    eps.append(rep.epsilon)
    assert eps[0] < eps[1] < eps[2]
    for k, e in enumerate(eps, start=1):
        assert e == pytest.approx(reference_epsilon(1.0, q, 3 * k, 1e-5), rel=1e-9)
    assert (rep.rounds, rep.steps, rep.round_steps) == (3, 9, 3)


def test_budget_stop_refuses_the_round_that_would_pass_it_before_building_a_model(
    tiny_workspace: Workspace, data: TokenizedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "privacy.json"
    hp = TrainHyper(local_steps=3, batch_size=32, lr=1e-2)
    q = 1 / math.ceil(len(data) / 32)
    e2, e3 = reference_epsilon(1.0, q, 6, 1e-5), reference_epsilon(1.0, q, 9, 1e-5)
    budget = (e2 + e3) / 2
    trainer = dp_trainer(tiny_workspace, site_at(ledger, noise_multiplier=1.0, max_epsilon=budget))
    plan = TrainingPlan(rank=RANK, scaling=SCALING)
    for _ in range(2):
        trainer.train(plan, data, hp, progress=False)
    before = ledger.read_bytes()
    built: list[object] = []
    monkeypatch.setattr(trainer, "prepare", lambda p: built.append(p))
    with pytest.raises(BudgetExhausted, match=re.escape(f"ε would reach {e3:.2f} after round 3 (budget {budget}")):
        trainer.train(plan, data, hp, progress=False)
    assert built == [] and ledger.read_bytes() == before
    restarted = dp_trainer(tiny_workspace, site_at(ledger, noise_multiplier=1.0, max_epsilon=budget))
    with pytest.raises(BudgetExhausted, match="after round 3"):
        restarted.train(plan, data, hp, progress=False)
    assert PrivacyLedger(ledger).rounds == 2


def test_site_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="site-level noise is not applied"):
        PrivacySite.from_config({"noise_multiplier": 1.0, "site_noise": {"clip": 1.0}}, tmp_path / "p.json")
    with pytest.raises(ValueError, match="max_grad_norm must be > 0, got -1.0"):
        PrivacySite.from_config({"noise_multiplier": 1.0, "max_grad_norm": -1.0}, tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


def test_report_of_an_infinite_epsilon_is_json_null() -> None:
    rep = PrivacyReport(math.inf, 1e-5, 0.0, 1.0, 3, 1, "hooks", 3, 0.5, "rdp")
    assert json.loads(json.dumps(rep.as_dict(), allow_nan=False))["epsilon"] is None


# ---- the agent loop ------------------------------------------------------------------------------


class FakeTransport:
    """Just what ``AgentLoop._train`` calls: the global download and the TRAIN submit."""

    def __init__(self) -> None:
        self.submitted: list[pb.SubmitRequest] = []
        self.on_reconnect: Any = None

    def download(self, kind: Any, *args: Any) -> bytes:
        return contract.encode_aggregate(None)

    def submit(self, req: pb.SubmitRequest) -> None:
        self.submitted.append(req)


def train_task(trainer: LoraTrainer, round_number: int) -> pb.Task:
    spec = RoundSpec(round_id=f"r{round_number:04d}-test", round=round_number, rule="fedit",
                     ranks={"site-0": RANK}, shapes=trainer.target_names(), nonce="ab" * 16,
                     train={"local_steps": 3, "batch_size": 32, "lr": 1e-2})
    return pb.Task(step=round_number, kind=pb.TRAIN, round_id=spec.round_id, spec=encode_spec(spec))


def agent(trainer: LoraTrainer, data: TokenizedDataset, site: PrivacySite | None, state: Path) -> AgentLoop:
    loop = AgentLoop(FakeTransport(), trainer, data, pb.HelloRequest(), alpha=8.0, state_dir=state, privacy=site,
                     progress=False)
    loop.site = "site-0"
    return loop


def test_loop_submits_dp_metrics_then_declines_past_the_budget(
    tiny_workspace: Workspace, data: TokenizedDataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    q = 1 / math.ceil(len(data) / 32)
    budget = (reference_epsilon(1.0, q, 3, 1e-5) + reference_epsilon(1.0, q, 6, 1e-5)) / 2
    site = site_at(tmp_path / "privacy.json", noise_multiplier=1.0, max_epsilon=budget)
    trainer = dp_trainer(tiny_workspace, site)
    loop = agent(trainer, data, site, tmp_path / "state")
    sent = loop.transport.submitted
    loop._handle(train_task(trainer, 1))
    assert len(sent) == 1 and loop.work is not None
    dp = train_report_from_pb(sent[0].train)["dp"]
    assert dp["epsilon"] == pytest.approx(reference_epsilon(1.0, q, 3, 1e-5), rel=1e-9)
    assert (dp["delta"], dp["noise_multiplier"], dp["max_grad_norm"], dp["steps"], dp["rounds"], dp["mode"]) == (
        1e-5, 1.0, 1.0, 3, 1, "hooks")
    with caplog.at_level(logging.ERROR, logger="fedquilt.agent"):
        for r in (2, 3):
            loop._handle(train_task(trainer, r))
    assert len(sent) == 1 and loop.work is None
    declines = [m for m in caplog.messages if "not taking part" in m]
    assert [m.split(":")[0] for m in declines] == ["round 2", "round 3"]
    assert all("site privacy budget spent" in m and "after round 2" in m for m in declines)


def test_loop_refuses_to_submit_a_non_private_update_when_dp_is_configured(
    tiny_workspace: Workspace, data: TokenizedDataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = site_at(tmp_path / "privacy.json", noise_multiplier=1.0)
    plain = LoraTrainer(tiny_workspace.model_dir, "causal-lm", TARGETS, device="cpu", seed=0)
    loop = agent(plain, data, site, tmp_path / "state")
    with caplog.at_level(logging.ERROR, logger="fedquilt.agent"):
        loop._handle(train_task(plain, 1))
    assert loop.transport.submitted == [] and loop.work is None
    assert any(r.exc_info and "refusing to submit a non-private update" in str(r.exc_info[1]) for r in caplog.records)


def test_dp_config_object_is_accepted_and_ledger_accountant_must_match(tmp_path: Path) -> None:
    cfg = DPConfig(noise_multiplier=1.0, accountant="prv")
    assert PrivacySite.from_config(cfg, tmp_path / "p.json").ledger.accountant.value == "prv"
    with pytest.raises(PrivacyError, match="uses the rdp accountant but the DP configuration asks for prv"):
        PrivacySite(cfg, PrivacyLedger(tmp_path / "q.json"))
