"""Issue 11 over mTLS gRPC: a deviating coordinator tries to make a site reveal too much; the real agent refuses.

Plays a real coordinator on port 0 (as ``fedquilt coordinator serve`` starts it) whose secure-sum round state
is tampered with from the test (``secure_agg.ServerSession`` messages altered before they are relayed), and
sites driven by the agent's real ``SecureSumClient`` over the agent's real ``Transport`` (in the two-pass test,
whole real ``AgentLoop``s around a stand-in trainer). Every assertion is on
what the coordinator actually received (``SecureSum.message`` / ``SecureSum.refuse`` are recorded).
"""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from fedquilt import secagg_wire
from fedquilt import secure_agg as sa
from fedquilt.agent.loop import AgentLoop
from fedquilt.agent.secure_sum import SecureSumClient
from fedquilt.agent.transport import Transport
from fedquilt.coordinator import secure_sum as coord_ss
from fedquilt.proto import codec
from fedquilt.proto.round_spec import decode_spec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.strategies.base import RoundContext
from secure_steps import answer

SITES = ("site-0", "site-1")


Received = dict[str, list[tuple[str, str, bytes, int]]]
"""``messages`` and ``refusals``: (site, stage, payload or reason, index of the phase's secure sum: 0, 1, ...)."""


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> Received:
    """Every stage reply and refusal the coordinator's ``SecureSum`` objects received."""
    log: Received = {"messages": [], "refusals": []}
    sums: list[int] = []
    message, refuse = coord_ss.SecureSum.message, coord_ss.SecureSum.refuse

    def index(obj: Any) -> int:
        if id(obj) not in sums:
            sums.append(id(obj))
        return sums.index(id(obj))

    def spy_message(self: Any, site: Any, kind: Any, payload: bytes) -> None:
        log["messages"].append((str(site), kind.value, payload, index(self)))
        message(self, site, kind, payload)

    def spy_refuse(self: Any, site: Any, kind: Any, reason: str) -> None:
        log["refusals"].append((str(site), kind.value, reason.encode(), index(self)))
        refuse(self, site, kind, reason)

    monkeypatch.setattr(coord_ss.SecureSum, "message", spy_message)
    monkeypatch.setattr(coord_ss.SecureSum, "refuse", spy_refuse)
    return log


def _agents(w: Any, policy: sa.ClientPolicy, sites: tuple[str, ...] = SITES) -> dict[str, tuple[SecureSumClient, Any]]:
    """Per site: the agent's real secure-sum client and a loop with its real transport (vectors: ``w.tensors``)."""
    ca = (w.files.ca_dir / "ca.pem").read_bytes()
    out: dict[str, tuple[SecureSumClient, Any]] = {}
    for i, who in enumerate(sites):
        cert, key = w.cert(who)
        out[who] = (SecureSumClient(ca, cert.read_bytes(), key.read_bytes(), policy=policy),
                    SimpleNamespace(transport=Transport(w.channel(who)), site=who,
                                    vectors=lambda phase, ctx, i=i: w.tensors(seed=i)))
    return out


def _to_advertise(w: Any) -> dict[str, pb.Task]:
    tasks = w.next_stage(w.open_round(), pb.DECLARE_LAYOUT)
    layout = codec.encode_layout(codec.layout_of(w.tensors()))
    for who, task in tasks.items():
        ack = w.fed(who).Submit(pb.SubmitRequest(round_id=task.round_id, step=task.step, kind=task.kind,
                                                 payload=layout), timeout=5)
        assert ack.accepted
    return {who: w.wait_for(who, pb.SECAGG_ADVERTISE, task.step) for who, task in tasks.items()}


def test_announce_with_threshold_one_is_refused_before_any_key(coordinator: Any, received: Received,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """(c1) The coordinator announces a 2-site sum with threshold 1 (one site's "sum" decodes alone): both
    agents, whose own floor (2 sites) the cohort meets, refuse before advertising a key."""
    start = sa.ServerSession.start

    def lying_start(self: Any) -> sa.Announce:
        honest = start(self)
        return dataclasses.replace(honest, params=dataclasses.replace(honest.params, threshold=1))

    monkeypatch.setattr(sa.ServerSession, "start", lying_start)
    w = coordinator(secagg=True, timeouts=(60.0, 30.0))
    ads = _to_advertise(w)
    agents = _agents(w, sa.ClientPolicy(min_sites=2))
    for who, (client, loop) in agents.items():
        task = ads[who]
        answer(client, loop, SimpleNamespace(spec=decode_spec(task.spec)), task)
    advertise = [m for m in received["messages"] if m[1] == "SECAGG_ADVERTISE"]
    assert advertise == []  # no key advertisement reached the coordinator
    assert sorted((s, k) for s, k, *_ in received["refusals"]) == [(s, "SECAGG_ADVERTISE") for s in SITES]
    assert all(b"threshold 1 is not above 0.5 x 2 sites" in r for _, _, r, _ in received["refusals"])
    assert all(client.session is None for client, _ in agents.values())  # no session (and no key) kept
    history = w.wait_history(within=10)
    assert history[-1]["version"] is None and "0 sites advertised keys" in history[-1]["discarded"]


THREE = ("site-0", "site-1", "site-2")
LIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "site-0": (("site-0", "site-1"), ("site-2",)),  # to learn site-2's mask key and site-1's self-mask seed
    "site-1": (("site-1", "site-2"), ("site-0",)),
    "site-2": (("site-0", "site-1", "site-2"), ()),
}
"""The (survivors, dropped) lists the deviating coordinator shows each site; every site did send masked input."""


def _lie_per_site(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the coordinator show each site its own survivor list (``LIES``), accept every signature and keep any
    revealed share unchecked, and relay to each site exactly the signatures of its list's members (the most that
    could convince it)."""
    def accept_unchecked(self: Any, site: Any, msg: Any) -> None:
        self._signatures[site] = msg.signature

    def keep_revealed(self: Any, site: Any, msg: Any) -> None:
        pass  # a deviating coordinator keeps whatever shares it is given (the spy has recorded them)

    next_ = coord_ss.SecureSum._next

    def lying_next(self: Any, stage: Any, payloads: dict[Any, bytes]) -> Any:
        if stage.value in ("SECAGG_CONSISTENCY", "SECAGG_UNMASK"):
            kind = "ConsistencyRequest" if stage.value == "SECAGG_CONSISTENCY" else "UnmaskRequest"
            lied = {}
            for site, payload in payloads.items():
                honest = secagg_wire.decode_secagg(kind, payload)
                survivors, dropped = LIES[str(site)]
                fields: dict[str, Any] = {"survivors": survivors, "dropped": dropped}
                if kind == "UnmaskRequest":
                    fields["signatures"] = tuple((s, sig) for s, sig in honest.signatures if s in survivors)
                lied[site] = secagg_wire.encode_secagg(dataclasses.replace(honest, **fields))
            payloads = lied
        return next_(self, stage, payloads)

    monkeypatch.setattr(sa.ServerSession, "_accept_signature", accept_unchecked)
    monkeypatch.setattr(sa.ServerSession, "_accept_revealed", keep_revealed)
    monkeypatch.setattr(coord_ss.SecureSum, "_next", lying_next)


def _step_all(w: Any, agents: dict[str, tuple[SecureSumClient, Any]], works: dict[str, Any],
              tasks: dict[str, pb.Task], kind: int) -> dict[str, pb.Task]:
    """Wait for every site's ``kind`` step and let its real secure-sum client answer it over gRPC."""
    nxt = {who: w.wait_for(who, kind, task.step) for who, task in tasks.items()}
    for who, task in nxt.items():
        client, loop = agents[who]
        answer(client, loop, works[who], task)
    return nxt


def test_different_survivor_lists_shown_to_sites_reveal_nothing(coordinator: Any, received: Received,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """(c2) Three sites all send masked input; the coordinator shows each a different survivor list in the
    consistency and unmask stages. Each site sees only its own valid signature on its list: none reveals a share,
    each refuses the unmask stage, and the round is not published."""
    _lie_per_site(monkeypatch)
    w = coordinator(secagg=True, timeouts=(60.0, 30.0), federation={"min_sites": 3})
    agents = _agents(w, sa.ClientPolicy(min_sites=2), THREE)
    trained = w.open_round(THREE)
    works = {who: SimpleNamespace(spec=decode_spec(t.spec), n=10, metrics={}, broadcast_digests={}, dp=False,
                                  vectors=agents[who][1].vectors,  # the stand-in vectors
                                  ctx=RoundContext(round=1, shapes={}, ranks={}))  # only the stand-in vectors read it
             for who, t in trained.items()}
    for who, task in trained.items():
        w.train_done(who, task)
    tasks = trained
    for kind in (pb.DECLARE_LAYOUT, pb.SECAGG_ADVERTISE, pb.SECAGG_SHARE, pb.SECAGG_MASKED, pb.SECAGG_CONSISTENCY,
                 pb.SECAGG_UNMASK):
        tasks = _step_all(w, agents, works, tasks, kind)
    stages = [(s, k) for s, k, *_ in received["messages"]]
    for stage in ("SECAGG_ADVERTISE", "SECAGG_SHARE", "SECAGG_CONSISTENCY"):  # the sum got as far as the lie
        assert sorted(s for s, k in stages if k == stage) == list(THREE)
    revealed = [secagg_wire.decode_secagg("RevealedShares", p) for _, k, p, _ in received["messages"]
                if k == "SECAGG_UNMASK"]
    assert [(r.sender, r.self_mask_shares, r.mask_key_shares) for r in revealed
            if r.self_mask_shares or r.mask_key_shares] == []  # not one share reached the coordinator
    assert sorted((s, k) for s, k, *_ in received["refusals"]) == [(s, "SECAGG_UNMASK") for s in THREE]
    assert all(b"did not sign the survivor set" in r or b"survivors signed the survivor set, need 2" in r
               for _, _, r, _ in received["refusals"]), received["refusals"]
    history = w.wait_history(within=10)
    assert history[-1]["version"] is None and history[-1]["discarded"]
    assert w.running.store.versions(w.files.model) == []


class DropsAfterFirstSum(AgentLoop):
    """A site that goes silent after the first secure sum of a two-pass round (it answers nothing of phase 1)."""

    def _handle(self, task: pb.Task) -> None:
        if task.phase > 0 and task.kind != pb.ROUND_DONE:
            return
        super()._handle(task)


def _serve(loop: AgentLoop) -> None:
    try:
        loop.run()
    except grpc.RpcError:  # the test stopped the coordinator
        pass


def test_two_pass_with_a_site_dropping_between_the_sums_is_refused_in_phase_one(coordinator: Any,
                                                                               received: Received) -> None:
    """(d) Secure-stack with ``passes = 2``: three real agent loops finish the first sum, site-2 then drops, and
    the coordinator announces the second sum over the two left (within every floor: 2 sites, threshold 2). Revealing
    in phase 1 would let the coordinator subtract the survivors' sketch and get site-2's alone: both honest agents
    refuse phase 1 before advertising a key; nothing of phase 1 but the layouts reaches the coordinator."""
    w = coordinator(secagg=True, timeouts=(60.0, 3.0), federation={"min_sites": 3, "rule": "secure-stack",
                                                                         "rule_params": {"passes": 2}})
    quick = {"give_up_after": 0.5}  # the loops end soon after the fixture stops the coordinator
    loops = [w.standin(s, seed=i, **quick) for i, s in enumerate(THREE[:2])]
    loops.append(w.standin("site-2", seed=2, loop_class=DropsAfterFirstSum, **quick))
    for loop in loops:
        loop.secure_sum.policy = sa.ClientPolicy(min_sites=2)  # so no floor but the first sum's members refuses
    threads = [threading.Thread(target=_serve, args=(loop,), daemon=True) for loop in loops]
    for t in threads:
        t.start()
    history = w.wait_history(within=40)
    first = sorted((s, k) for s, k, _, i in received["messages"] if i == 0)
    assert first == sorted((s, k) for s in THREE for k in ("DECLARE_LAYOUT", "SECAGG_ADVERTISE", "SECAGG_SHARE",
                                                             "SECAGG_CONSISTENCY", "SECAGG_UNMASK"))
    second = sorted((s, k) for s, k, _, i in received["messages"] if i == 1)
    assert second == [("site-0", "DECLARE_LAYOUT"), ("site-1", "DECLARE_LAYOUT")]  # no key, share or reveal
    assert sorted((s, k, i) for s, k, _, i in received["refusals"]) == [("site-0", "SECAGG_ADVERTISE", 1),
                                                                        ("site-1", "SECAGG_ADVERTISE", 1)]
    assert all(b"differs from the first secure sum's contributors (missing ['site-2']" in r
               for _, _, r, _ in received["refusals"]), received["refusals"]
    assert history[-1]["version"] is None and history[-1]["discarded"]
    assert w.running.store.versions(w.files.model) == []
