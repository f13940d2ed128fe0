"""Issue 11 over mTLS gRPC: no secure sum below the floor, site refusals recorded, the CA-signed CRL served.

A real coordinator on port 0 (as ``fedquilt coordinator serve`` starts it) with a short stage
deadline; sites are driven by hand, and in the refusal test by the agent's real ``SecureSumClient``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509

from fedquilt import secagg_wire
from fedquilt import secure_agg as sa
from fedquilt.agent.secure_sum import SecureSumClient
from fedquilt.agent.transport import Transport
from fedquilt.coordinator.config import CoordinatorConfig
from fedquilt.coordinator.pki import Role, issue, revoke
from fedquilt.proto import codec
from fedquilt.proto.round_spec import decode_spec
from fedquilt.proto import federation_pb2 as pb
from secure_steps import answer


@pytest.fixture
def quick(coordinator: Any) -> Any:
    """Factory: a SecAgg coordinator for two sites whose stages close after ``stage`` seconds."""
    return lambda stage=1.5: coordinator(secagg=True, timeouts=(60.0, stage))


def _layout(w: Any) -> bytes:
    return codec.encode_layout(codec.layout_of(w.tensors()))


def _submit(w: Any, who: str, task: pb.Task, **fields: Any) -> pb.Ack:
    base: dict[str, Any] = {"round_id": task.round_id, "step": task.step, "kind": task.kind, **fields}
    return w.fed(who).Submit(pb.SubmitRequest(**base), timeout=5)


def test_coordinator_never_announces_a_sum_over_one_site(quick: Any) -> None:
    """site-1 misses DECLARE_LAYOUT: the old coordinator announced a one-site sum with threshold 1."""
    w = quick()
    tasks = w.next_stage(w.open_round(), pb.DECLARE_LAYOUT)
    assert _submit(w, "site-0", tasks["site-0"], payload=_layout(w)).accepted
    done = w.wait_for("site-0", pb.ROUND_DONE, tasks["site-0"].step, within=15)  # never SECAGG_ADVERTISE
    assert "a secure sum needs at least 2" in done.message
    history = w.wait_history()
    assert history[-1]["version"] is None and "needs at least 2 (min_contributors)" in history[-1]["discarded"]


def test_sites_below_their_own_floor_refuse_and_the_coordinator_records_it(quick: Any) -> None:
    """A 2-site sum is within the federation's min_contributors but below each site's [privacy] floor of 3:
    the agents' real secure-sum client refuses before making a key; nothing is revealed; the round is discarded."""
    w = quick(stage=30.0)
    tasks = w.next_stage(w.open_round(), pb.DECLARE_LAYOUT)
    for who, task in tasks.items():
        assert _submit(w, who, task, payload=_layout(w)).accepted
    ads = {who: w.wait_for(who, pb.SECAGG_ADVERTISE, task.step) for who, task in tasks.items()}
    ca = (w.files.ca_dir / "ca.pem").read_bytes()
    collector = w.running.orchestrator.current.collector
    for who, task in ads.items():
        cert, key = w.cert(who)
        client = SecureSumClient(ca, cert.read_bytes(), key.read_bytes())  # default [privacy]: min 3 sites
        loop = SimpleNamespace(transport=Transport(w.channel(who)), site=who, privacy=None)
        answer(client, loop, SimpleNamespace(spec=decode_spec(task.spec)), task)
        assert client.session is None  # the session failed before any key advertisement was sent
    assert set(collector.refusals) == {"site-0", "site-1"}
    assert all("below this site's minimum of 3" in r for r in collector.refusals.values())
    history = w.wait_history(within=10)  # refusals closed the stage at once, no deadline needed
    assert history[-1]["version"] is None and "0 sites advertised keys" in history[-1]["discarded"]


def test_refusal_for_a_step_not_asked_is_refused(quick: Any) -> None:
    w = quick(stage=30.0)
    tasks = w.next_stage(w.open_round(), pb.DECLARE_LAYOUT)
    before = w.snapshot()
    assert w.refused(lambda: _submit(w, "site-0", tasks["site-0"], kind=pb.SECAGG_UNMASK,
                                     refusal="no")).name == "FAILED_PRECONDITION"
    assert w.snapshot() == before


def test_the_served_crl_is_the_ca_signed_one_and_lists_revocations(quick: Any) -> None:
    w = quick()
    w.hello("site-0")
    extra = issue(w.files.ca_dir, w.files.root / "revoked", "site-9", Role.SITE)
    serial = x509.load_pem_x509_certificate(extra.cert.read_bytes()).serial_number
    revoke(w.files.ca_dir, extra.cert)
    data = Transport(w.channel("site-0")).download(pb.DownloadRequest.CRL)
    ca = x509.load_pem_x509_certificate((w.files.ca_dir / "ca.pem").read_bytes())
    held = sa.load_crl(data, ca)
    assert serial in held.serials and held.current(held.last_update)
    forged = data.replace(b"A", b"B", 1) if b"A" in data[30:] else data + b"x"
    with pytest.raises(sa.InvalidSignature):
        sa.load_crl(forged, ca)


@pytest.mark.parametrize(("fed", "secagg", "match"), [
    ({"min_sites": 1}, {}, "min_sites must be >= 2 under secure aggregation"),
    ({"min_contributors": 1}, {}, "min_contributors must be >= 2"),
    ({}, {"threshold": 1}, "threshold must be >= 2"),
])
def test_secure_aggregation_refuses_a_floor_of_one(tmp_path: Path, fed: dict[str, Any], secagg: dict[str, Any],
                                                    match: str) -> None:
    raw = {"tls": {"ca": "ca.pem", "cert": "c.pem", "key": "c.key"}, "state_dir": str(tmp_path),
           "federation": {"base_fingerprint": "0" * 64, **fed}, "secagg": secagg}
    with pytest.raises(ValueError, match=match):
        CoordinatorConfig.model_validate(raw)
    raw["secagg"] = {**secagg, "enabled": False}
    CoordinatorConfig.model_validate(raw)  # without secure aggregation nothing claims a sum


@pytest.mark.parametrize("role", [Role.COORDINATOR, Role.ADMIN])
def test_coordinator_refuses_an_advertisement_from_a_non_site_certificate(quick: Any, tmp_path: Path,
                                                                         role: Role) -> None:
    """A certificate named like the site but with another role (OU) cannot advertise secure-sum keys."""
    w = quick(stage=30.0)
    tasks = w.next_stage(w.open_round(), pb.DECLARE_LAYOUT)
    for who, task in tasks.items():
        assert _submit(w, who, task, payload=_layout(w)).accepted
    task = w.wait_for("site-0", pb.SECAGG_ADVERTISE, tasks["site-0"].step)
    other = issue(w.files.ca_dir, tmp_path / "other", "site-0", role, hosts=("localhost",))
    ca = (w.files.ca_dir / "ca.pem").read_bytes()
    posing = sa.ClientSession(sa.SiteId("site-0"), sa.load_signing_key(other.key.read_bytes()), other.cert.read_bytes(),
                              ca, policy=sa.ClientPolicy(min_sites=2))
    ad = posing.handle(secagg_wire.decode_secagg("Announce", task.payload))
    before = w.snapshot()
    assert w.refused(lambda: _submit(w, "site-0", task, payload=secagg_wire.encode_secagg(ad))).name == "INVALID_ARGUMENT"
    assert w.snapshot() == before
