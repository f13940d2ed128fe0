"""One contract suite run against every ``Phase`` implementation (plain, individual, secure sum).

What every phase must do for the round machine: hand every participant its first step, refuse an upload in
an encoding it never takes, stay open while someone is missing and its deadline has not passed, and, once
closed, report exactly who contributed. The secure sum's own arithmetic is tested in tests/secure_agg and
over the wire in tests/e2e.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from fedquilt import secure_agg as sa
from fedquilt.coordinator.collect import IndividualCollector, PlainCollector, plain_phase
from fedquilt.coordinator.errors import Duplicate, InvalidRequest, StaleStep
from fedquilt.coordinator.phase import Phase, PhaseRequest
from fedquilt.coordinator.secure_sum import SecureSum
from fedquilt.coordinator.steps import SiteId, Step
from fedquilt.proto.codec import encode_tensors
from fedquilt.proto.round_spec import RoundSpec
from fedquilt.strategies.base import N_KEY

SITES = frozenset({SiteId("a"), SiteId("b"), SiteId("c")})
SPEC = RoundSpec(round_id="r0001-00000000", round=1, rule="fedit", ranks={s: 2 for s in SITES}, shapes={"m": (4, 6)},
                 nonce="00" * 16, weights={s: 1 for s in SITES})


def _plain(individual: bool) -> Callable[[float], Phase]:
    return lambda now: plain_phase(PhaseRequest(spec=SPEC, phase=0, participants=SITES, broadcast=b"", now=now,
                                                deadline=now + 30.0, individual=individual))


def _secure(now: float) -> Phase:
    return SecureSum(SITES, modules=SPEC.shapes, clip=1.0, min_frac_bits=16, threshold=None, ca_pem=b"",
                     mask_context=b"", stage_timeout=30.0, now=now, min_contributors=2)


PHASES = {"plain": _plain(False), "individual": _plain(True), "secure": _secure}
FIRST = {"plain": Step.UPLOAD_PLAIN, "individual": Step.UPLOAD_PLAIN, "secure": Step.DECLARE_LAYOUT}


def _vectors(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_tensors({"m/A": rng.normal(size=(2, 6)).astype(np.float32),
                           "m/B": rng.normal(size=(4, 2)).astype(np.float32), N_KEY: np.array([1.0], np.float32)})


@pytest.mark.parametrize("name", PHASES)
def test_every_participant_gets_the_first_step(name: str) -> None:
    phase = PHASES[name](0.0)
    assert phase.start() == {s: (FIRST[name], b"") for s in SITES}
    assert not phase.done and phase.progress().sent == frozenset()


@pytest.mark.parametrize("name", PHASES)
def test_an_encoding_the_phase_never_takes_is_refused_or_routed_to_its_upload_step(name: str) -> None:
    phase = PHASES[name](0.0)
    if name == "secure":
        assert phase.upload_step("FLOAT32") is Step.SECAGG_MASKED  # the body's encoding is checked with the body
        with pytest.raises(StaleStep, match="not collecting masked input"):
            phase.upload_size(SPEC.round_id)  # no session yet: nothing may be uploaded
    else:
        with pytest.raises(InvalidRequest, match="FLOAT32"):
            phase.upload_step("RING_U32")
        assert phase.upload_step("FLOAT32") is Step.UPLOAD_PLAIN and phase.upload_size(SPEC.round_id) is None


@pytest.mark.parametrize("name", ["plain", "individual"])
def test_a_plain_phase_waits_for_the_missing_site_until_its_deadline(name: str) -> None:
    phase = PHASES[name](0.0)
    for i, site in enumerate(sorted(SITES)[:2]):
        assert phase.upload(site, "FLOAT32", [], _vectors(i))
    assert not phase.upload(SiteId("a"), "FLOAT32", [], _vectors(0))  # an identical retry
    with pytest.raises(Duplicate):
        phase.upload(SiteId("a"), "FLOAT32", [], _vectors(5))
    assert phase.advance(29.0) == {} and not phase.done
    assert phase.advance(30.0) == {} and phase.done
    result = phase.outcome()
    assert result.contributors == {"a", "b"} and result.session is None and result.secure_facts is None
    if name == "individual":
        assert isinstance(phase, IndividualCollector) and result.sums == {}
        assert result.individual is not None and set(result.individual) == {"a", "b"}
    else:
        assert isinstance(phase, PlainCollector) and result.individual is None
        np.testing.assert_allclose(result.sums[N_KEY], [2.0])
    with pytest.raises(StaleStep):
        phase.message(SiteId("a"), Step.SECAGG_ADVERTISE, b"")
    assert not phase.takes_messages


def test_a_secure_sum_nobody_declared_a_layout_for_fails_at_its_deadline() -> None:
    phase = _secure(0.0)
    assert phase.takes_messages
    assert phase.advance(29.0) == {} and not phase.done
    with pytest.raises(sa.ThresholdNotMet, match="no site declared its vector layout"):
        phase.advance(30.0)
