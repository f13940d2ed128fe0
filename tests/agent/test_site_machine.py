"""The site machine driven directly: typed steps in, actions asserted; no transport, no trainer, no files.

Training results are stood in for (factors of the planned rank, drawn from a seed); the secure sums run against
the real ``secure_agg.ServerSession`` with each site's real ``SecureSumClient`` (certificates from an in-test CA),
every payload through the wire codec both ways. Each adversarial test names the check it plays against.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
import torch

from fedquilt import contract, secagg_wire
from fedquilt import secure_agg as sa
from fedquilt.agent.config import PrivacySection
from fedquilt.agent.privacy_ledger import BudgetExhausted
from fedquilt.agent.secure_sum import SecureSumClient
from fedquilt.agent.site_actions import (Audit, Drop, Fetch, Fetched, FetchKind, KeepUpdate, SaveRuleState, SiteAction,
                                         SiteStep, Submit, Train, UploadMasked, UploadTensors)
from fedquilt.agent.site_machine import SiteMachine, Stage
from fedquilt.agent.trainer import TrainingStopped, TrainResult
from fedquilt.contract import round_context
from fedquilt.coordinator import pki as ca_tools
from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto.round_spec import RoundSpec
from fedquilt.strategies.base import N_KEY, LocalUpdate, TrainingPlan
from fedquilt.strategies.lora import LoraFactors
from fedquilt.strategies.registry import federated_rule

SHAPES = {"layers.0.q": (6, 5), "layers.0.v": (4, 5)}
SITES = ("site-0", "site-1", "site-2")
DP = {"epsilon": 1.5, "delta": 1e-5}


class FixedDp:
    """Stands in for ``PrivacySite`` (no DP-SGD runs here): the report of a result trained under DP."""

    def report_of(self, result: TrainResult) -> dict[str, object]:
        return dict(DP)


def spec_of(round_: int = 1, rule: str = "fedit", *, secagg: Mapping[str, Any] | None = None,
            train: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
            version: str | None = None) -> RoundSpec:
    return RoundSpec(round_id=f"r{round_:04d}-abc", round=round_, rule=rule, params=dict(params or {}),
                     ranks={s: 2 for s in SITES}, shapes=SHAPES, nonce="ab" * 16, global_version=version,
                     train=dict(train or {"local_steps": 1, "batch_size": 8}),
                     secagg=None if secagg is None else dict(secagg), weights={s: 10 + i for i, s in enumerate(SITES)})


def step(kind: int, spec: RoundSpec, n: int = 1, phase: int = 0, payload: bytes = b"") -> SiteStep:
    return SiteStep(kind=kind, round_id=spec.round_id, step=n, phase=phase,  # type: ignore[arg-type]
                    spec=spec if kind == pb.TRAIN else None, payload=payload)


def machine(site: str = "site-0", **kw: Any) -> SiteMachine:
    m = SiteMachine(alpha=4.0, rule_state={}, **kw)
    m.site = sa.SiteId(site)
    return m


def draw(plan: TrainingPlan, seed: int, n: int = 10) -> TrainResult:
    gen = torch.Generator().manual_seed(seed)
    adapter = {m: LoraFactors(A=torch.randn(plan.rank, k, generator=gen) * 0.1,
                              B=torch.randn(d, plan.rank, generator=gen) * 0.1, scaling=plan.scaling)
               for m, (d, k) in SHAPES.items()}
    return TrainResult(LocalUpdate(adapter=adapter), n, losses=[1.0, 0.9], loss_before=2.0, loss_after=1.5,
                       eval_loss=1.75)


def train(m: SiteMachine, spec: RoundSpec, seed: int = 0) -> list[SiteAction]:
    """TRAIN through the global download and training; the actions that answer it."""
    actions = m.on_step(step(pb.TRAIN, spec))
    if actions == [Fetch(FetchKind.GLOBAL)]:
        actions = m.on_fetched(Fetched(FetchKind.GLOBAL, contract.encode_aggregate(None)))
    (run,) = actions
    assert isinstance(run, Train) and m.stage is Stage.TRAINING
    return m.on_trained(draw(run.plan, seed))


def only(actions: list[SiteAction], kind: type) -> Any:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


# ---- TRAIN ----------------------------------------------------------------------------------------


def test_train_fetches_the_global_once_per_version_and_reports_the_metrics() -> None:
    m = machine()
    first = spec_of(1, version="v0001")
    assert m.on_step(step(pb.TRAIN, first)) == [Fetch(FetchKind.GLOBAL)]
    assert m.stage is Stage.FETCHING_GLOBAL
    (run,) = m.on_fetched(Fetched(FetchKind.GLOBAL, contract.encode_aggregate(None)))
    assert isinstance(run, Train) and run.step == 1 and run.plan.rank == 2 and run.hp.batch_size == 8
    actions = m.on_trained(draw(run.plan, 0))
    assert [type(a) for a in actions] == [KeepUpdate, Submit]
    report = only(actions, Submit)
    assert (report.round_id, report.step, report.kind) == (first.round_id, 1, pb.TRAIN)
    assert report.report == {"n": 10, "loss_before": 2.0, "loss_after": 1.5, "steps": 2, "eval_loss": 1.75}
    assert m.stage is Stage.HOLDING and m.work is not None and m.work.n == 10  # the spec's weight, not its own count
    again = m.on_step(step(pb.TRAIN, spec_of(2, version="v0001"), n=9))  # same global: no second download
    assert len(again) == 1 and isinstance(again[0], Train) and again[0].step == 9


def test_under_secagg_the_train_report_carries_only_dp() -> None:
    """No per-site value computed from data leaves in the clear; the losses stay held for the secure sum."""
    secure = spec_of(secagg={"weight_scale": 33.0, "min_contributors": 2})
    with_dp = machine(privacy=FixedDp())
    assert only(train(with_dp, secure), Submit).report == {"dp": DP}
    assert with_dp.work is not None and with_dp.work.metrics["loss_after"] == 1.5 and with_dp.work.dp
    plain = machine()
    assert only(train(plain, secure), Submit).report == {}
    assert only(train(machine(privacy=FixedDp()), spec_of()), Submit).report == {
        "n": 10, "loss_before": 2.0, "loss_after": 1.5, "steps": 2, "eval_loss": 1.75, "dp": DP}


def test_a_dp_round_below_the_site_floor_is_refused_before_training_and_submits_nothing() -> None:
    """A coordinator asking a DP site for batch_size 1 (one record's loss per batch) gets a Drop, never a Train."""
    m = machine(privacy=FixedDp(), floor=PrivacySection())
    m.on_step(step(pb.TRAIN, spec_of(train={"local_steps": 1, "batch_size": 1})))
    actions = m.on_fetched(Fetched(FetchKind.GLOBAL, contract.encode_aggregate(None)))
    assert actions == [Drop("r0001-abc", "refusing to train under DP: batch_size 1 is below min_dp_batch_size 8")]
    assert m.work is None and m.stage is Stage.IDLE
    # Without DP on this site the same floor does not apply.
    no_dp = machine(floor=PrivacySection())
    no_dp.on_step(step(pb.TRAIN, spec_of(train={"local_steps": 1, "batch_size": 1})))
    assert isinstance(no_dp.on_fetched(Fetched(FetchKind.GLOBAL, contract.encode_aggregate(None)))[0], Train)


@pytest.mark.parametrize("failure", [TrainingStopped("local training stopped"), BudgetExhausted("budget spent")])
def test_stopped_or_over_budget_training_submits_nothing(failure: Exception) -> None:
    m = machine()
    m.on_step(step(pb.TRAIN, spec_of()))
    m.on_fetched(Fetched(FetchKind.GLOBAL, contract.encode_aggregate(None)))
    assert m.on_train_failed(failure) == [Drop("r0001-abc", str(failure))]  # type: ignore[arg-type]
    assert m.work is None and m.rounds_trained == 0 and m.stage is Stage.IDLE


def test_an_event_the_stage_does_not_wait_for_is_refused() -> None:
    """Results arrive only for the I/O asked for, and no step is taken while one is outstanding."""
    m = machine()
    with pytest.raises(RuntimeError, match="training result arrived while the site is IDLE"):
        m.on_trained(TrainResult(LocalUpdate(), 1))
    with pytest.raises(RuntimeError, match="GLOBAL fetched while the site is IDLE"):
        m.on_fetched(Fetched(FetchKind.GLOBAL, b""))
    spec = spec_of()
    m.on_step(step(pb.TRAIN, spec))
    with pytest.raises(RuntimeError, match="waits for I/O"):
        m.on_step(step(pb.UPLOAD_PLAIN, spec, n=2))
    with pytest.raises(RuntimeError, match="CRL fetched while the site is FETCHING_GLOBAL"):
        m.on_fetched(Fetched(FetchKind.CRL, b""))
    m.interrupted()  # the driver's download was refused: rest again, holding nothing
    assert m.stage is Stage.IDLE and m.work is None


# ---- plaintext phases -----------------------------------------------------------------------------


def test_upload_plain_saves_the_rule_state_then_uploads_the_rule_vectors() -> None:
    m = machine()
    spec = spec_of()
    train(m, spec)
    actions = m.on_step(step(pb.UPLOAD_PLAIN, spec, n=2))
    assert [type(a) for a in actions] == [SaveRuleState, Audit, UploadTensors]
    upload = actions[-1]
    assert m.work is not None
    want = federated_rule("fedit", {}).vectors(0, m.work.update, 10, round_context(spec), None)
    assert sorted(upload.vectors) == sorted(want) and upload.vectors[N_KEY][0] == 10
    for k in want:
        np.testing.assert_array_equal(upload.vectors[k], want[k])


def test_a_second_phase_downloads_its_broadcast_once_and_keeps_its_digest() -> None:
    m = machine()
    spec = spec_of(rule="secure-stack", params={"passes": 2})
    train(m, spec)
    first = m.on_step(step(pb.UPLOAD_PLAIN, spec, n=2))
    assert isinstance(first[-1], UploadTensors)
    assert m.on_step(step(pb.UPLOAD_PLAIN, spec, n=3, phase=1)) == [Fetch(FetchKind.BROADCAST, spec.round_id, 1)]
    rule = federated_rule("secure-stack", {"passes": 2})
    assert m.work is not None
    sums = {k: np.asarray(v, np.float64) * 3 for k, v in first[-1].vectors.items()}
    broadcast = rule.combine(0, sums, round_context(spec), None)
    data = codec.encode_tensors(dict(broadcast.tensors))  # type: ignore[union-attr]
    actions = m.on_fetched(Fetched(FetchKind.BROADCAST, data))
    assert isinstance(actions[-1], UploadTensors) and actions[-1].phase == 1
    assert m.work.broadcast_digests[1] == hashlib.sha256(data).digest()
    assert isinstance(m.on_step(step(pb.UPLOAD_PLAIN, spec, n=4, phase=1))[-1], UploadTensors)  # held: no fetch


@pytest.mark.parametrize("kind", [pb.UPLOAD_PLAIN, pb.DECLARE_LAYOUT, pb.SECAGG_SHARE])
def test_a_step_of_a_round_this_site_holds_no_update_for_is_dropped(kind: int, site_pki: Path) -> None:
    """A restarted site (or a coordinator naming another round) gets a Drop, never an upload or a reply."""
    fresh = machine(secure_sum=client(site_pki, "site-0"))
    actions = fresh.on_step(step(kind, spec_of(), n=2))
    assert len(actions) == 1 and isinstance(actions[0], Drop) and "holds no trained update" in actions[0].reason
    held = machine(secure_sum=client(site_pki, "site-0"))
    train(held, spec_of(1))
    other = held.on_step(step(kind, spec_of(2), n=3))
    assert [type(a) for a in other] == [Drop] and held.work is None


def test_round_done_forgets_the_round() -> None:
    m = machine()
    train(m, spec_of())
    assert m.on_step(SiteStep(kind=pb.ROUND_DONE, round_id="r0001-abc", step=5, message="published v0001")) == []
    assert m.work is None and m.stage is Stage.IDLE


# ---- secure sums ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    ca_tools.init_ca(root / "ca")
    for name in SITES:
        ca_tools.issue(root / "ca", root / "certs", name, ca_tools.Role.SITE)
    return root


def client(root: Path, site: str, min_sites: int = 2) -> SecureSumClient:
    certs = root / "certs"
    return SecureSumClient((root / "ca" / "ca.pem").read_bytes(), (certs / f"{site}.pem").read_bytes(),
                           (certs / f"{site}.key").read_bytes(), sa.ClientPolicy(min_sites=min_sites))


class SumDriver:
    """Runs secure sums between site machines and a real ``ServerSession`` (the coordinator's part, by hand)."""

    def __init__(self, root: Path, machines: Mapping[str, SiteMachine], spec: RoundSpec) -> None:
        self.root, self.machines, self.spec = root, machines, spec
        self.crl = (root / "ca" / "crl.pem").read_bytes()
        self.n = 10

    def ask(self, site: str, kind: int, phase: int, payload: bytes = b"", broadcast: bytes = b"") -> list[SiteAction]:
        self.n += 1
        actions = self.machines[site].on_step(step(kind, self.spec, self.n, phase, payload))
        while actions and isinstance(actions[-1], Fetch):
            fetch = actions[-1]
            data = self.crl if fetch.what is FetchKind.CRL else broadcast
            actions = actions[:-1] + self.machines[site].on_fetched(Fetched(fetch.what, data))
        return actions

    def reply(self, site: str, kind: int, phase: int, payload: bytes = b"", broadcast: bytes = b"") -> Submit:
        return only(self.ask(site, kind, phase, payload, broadcast), Submit)

    def announce(self, sites: tuple[str, ...], phase: int, broadcast: bytes = b"") -> sa.ServerSession:
        layouts = [codec.decode_layout(self.reply(s, pb.DECLARE_LAYOUT, phase, broadcast=broadcast).payload)
                   for s in sites]
        assert all(layout == layouts[0] for layout in layouts)
        params = sa.default_params(len(sites), 64.0, min_frac_bits=16, threshold=len(sites) // 2 + 1)
        context = hashlib.sha256(broadcast).digest() if phase else b""
        return sa.ServerSession(sorted(sa.SiteId(s) for s in sites), params, sa.VectorLayout(tuple(layouts[0])),
                                ca_cert_pem=(self.root / "ca" / "ca.pem").read_bytes(), mask_context=context)

    def run(self, sites: tuple[str, ...], phase: int = 0) -> sa.AggregateResult:
        server = self.announce(sites, phase)
        self._stage(server, sites, phase, pb.SECAGG_ADVERTISE, server.start(), "KeyAdvertisement")
        self._stage(server, sites, phase, pb.SECAGG_SHARE, server.relay_advertisements(), "EncryptedShares")
        for s, routed in server.route_shares().items():
            upload = only(self.ask(s, pb.SECAGG_MASKED, phase, secagg_wire.encode_secagg(routed)), UploadMasked)
            sid, vector = codec.decode_masked(upload.data, server.params.ring_bits, server.layout.size)
            server.receive(sa.SiteId(s), sa.MaskedInput(sid, sa.SiteId(s), vector))
        self._stage(server, sites, phase, pb.SECAGG_CONSISTENCY, server.request_consistency(), "ConsistencySignature")
        self._stage(server, sites, phase, pb.SECAGG_UNMASK, server.request_unmask(), "RevealedShares")
        return server.finish()

    def _stage(self, server: sa.ServerSession, sites: tuple[str, ...], phase: int, kind: int, message: Any,
               reply: str) -> None:
        """Every site's machine answers ``message`` (the same for all) with a ``reply`` the server takes."""
        payload = secagg_wire.encode_secagg(message)
        for s in sites:
            submit = self.reply(s, kind, phase, payload)
            assert not submit.refusal, submit.refusal
            server.receive(sa.SiteId(s), secagg_wire.decode_secagg(reply, submit.payload))


def trained_sites(root: Path, spec: RoundSpec, min_sites: int = 2) -> dict[str, SiteMachine]:
    machines = {s: machine(s, secure_sum=client(root, s, min_sites)) for s in SITES}
    for i, (s, m) in enumerate(machines.items()):
        assert only(train(m, spec, seed=i), Submit).report == {}
    return machines


def test_the_machines_secure_sum_is_the_plain_sum_of_their_vectors(site_pki: Path) -> None:
    spec = spec_of(secagg={"weight_scale": 33.0, "min_contributors": 2})
    machines = trained_sites(site_pki, spec)
    result = SumDriver(site_pki, machines, spec).run(SITES)
    assert result.sums[N_KEY][0] == pytest.approx(33.0 / 33.0, abs=1e-4)  # Σ n_i / weight_scale
    rule = federated_rule("fedit", {})
    plain = [rule.vectors(0, m.work.update, m.work.n, m.work.ctx, None) for m in machines.values()]  # type: ignore[union-attr]
    assert len(plain[0]) == 5  # N and A, B of both modules
    for name in plain[0]:
        want = sum(np.asarray(v[name], np.float64) for v in plain) / 33.0
        np.testing.assert_allclose(result.sums[name], want, atol=1e-3)
    metrics = {k for k in result.sums if k.startswith("__metric__/")}
    assert metrics  # the losses went into the sum, nowhere else


@pytest.mark.parametrize(("site_floor", "spec_floor", "refused"), [(3, 2, True), (2, 4, True), (2, 2, False)],
                         ids=["spec-cannot-lower-the-site-floor", "spec-raises-it", "both-met"])
def test_min_contributors_only_ever_raises_the_site_privacy_floor(site_pki: Path, site_floor: int, spec_floor: int,
                                                                  refused: bool) -> None:
    """A 2-site sum announced: refused below the site's own floor even when the federation's minimum shrank to 2,
    and refused below a federation minimum above the site's floor."""
    spec = spec_of(secagg={"weight_scale": 21.0, "min_contributors": spec_floor})
    machines = trained_sites(site_pki, spec, min_sites=site_floor)
    driver = SumDriver(site_pki, machines, spec)
    announce = secagg_wire.encode_secagg(driver.announce(SITES[:2], 0).start())
    answer = driver.reply("site-0", pb.SECAGG_ADVERTISE, 0, announce)
    assert bool(answer.refusal) is refused and (answer.payload == b"") is refused
    if refused:
        assert "PolicyRefusal" in answer.refusal and f"minimum of {max(site_floor, spec_floor)}" in answer.refusal
        assert machines["site-0"].secure_sum.session is None  # type: ignore[union-attr]


def _second_phase(site_pki: Path) -> tuple[SumDriver, bytes]:
    spec = spec_of(rule="secure-stack", params={"passes": 2}, secagg={"weight_scale": 33.0, "min_contributors": 2})
    driver = SumDriver(site_pki, trained_sites(site_pki, spec), spec)
    result = driver.run(SITES)
    sums = {k: v * 33.0 for k, v in result.sums.items() if not k.startswith("__metric__")}
    broadcast = federated_rule("secure-stack", {"passes": 2}).combine(0, sums, round_context(spec), None)
    return driver, codec.encode_tensors(dict(broadcast.tensors))  # type: ignore[union-attr]


def test_a_second_sum_over_other_survivors_than_the_first_is_refused(site_pki: Path) -> None:
    """After phase 0 over three sites, a phase-1 sum announced over two (site-2 dropped in between) would let the
    coordinator subtract the two from the first sum: both refuse before advertising a key."""
    driver, broadcast = _second_phase(site_pki)
    announce = secagg_wire.encode_secagg(driver.announce(SITES[:2], 1, broadcast).start())
    for s in SITES[:2]:
        answer = driver.reply(s, pb.SECAGG_ADVERTISE, 1, announce, broadcast)
        assert "differs from the first secure sum's contributors (missing ['site-2']" in answer.refusal
        assert answer.payload == b""


def test_the_second_sum_over_the_same_survivors_completes(site_pki: Path) -> None:
    driver, broadcast = _second_phase(site_pki)
    server = driver.announce(SITES, 1, broadcast)
    announce = secagg_wire.encode_secagg(server.start())
    assert all(not driver.reply(s, pb.SECAGG_ADVERTISE, 1, announce, broadcast).refusal for s in SITES)


def test_a_second_sum_without_a_first_one_is_refused(site_pki: Path) -> None:
    """A site that signed no phase-0 survivor set (say the coordinator skipped phase 0) has nothing to bind to."""
    spec = spec_of(rule="secure-stack", params={"passes": 2}, secagg={"weight_scale": 33.0, "min_contributors": 2})
    machines = trained_sites(site_pki, spec)
    driver = SumDriver(site_pki, machines, spec)
    server = driver.announce(SITES, 0)  # a phase-0 announce, shown as phase 1
    announce = secagg_wire.encode_secagg(server.start())
    answer = driver.reply("site-0", pb.SECAGG_ADVERTISE, 1, announce, broadcast=codec.encode_tensors({}))
    assert "holds no first-phase survivor set" in answer.refusal
