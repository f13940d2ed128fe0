"""Attacks and faults that must be refused: tampering, forged keys, inconsistent lists, replays."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import numpy as np
import pytest
from secagg_harness import Authority, Federation, Stepper

from fedquilt.secure_agg import (
    AdvertisementsRelay, DecryptionFailed, EncryptedShares, InputError, InvalidSignature, KeyAdvertisement,
    ConsistencyRequest, MaskedInput, PolicyRefusal, ProtocolViolation, SessionMismatch, SharesRelay, SiteId, Stage,
    ThresholdNotMet,
)
from fedquilt.secure_agg.signing import advertisement_payload, sign

A, B, C = SiteId("site-00"), SiteId("site-01"), SiteId("site-02")


def _awaiting(federation: Federation, stage: Stage, n: int = 3) -> Stepper:
    return Stepper(federation, n).client_awaiting(A, stage)


# Share encryption -----------------------------------------------------------------------------
def test_tampered_share_ciphertext(federation: Federation) -> None:
    stepper = _awaiting(federation, Stage.MASKED_INPUT)
    relay = stepper.to_clients[Stage.MASKED_INPUT][A]
    assert isinstance(relay, SharesRelay)
    share = relay.shares[0]
    bad = dataclasses.replace(share, ciphertext=share.ciphertext[:-1] + bytes([share.ciphertext[-1] ^ 0x80]))
    with pytest.raises(DecryptionFailed, match=f"share from {share.sender} to {A}"):
        stepper.clients[A].handle(dataclasses.replace(relay, shares=(bad, *relay.shares[1:])))
    assert stepper.clients[A].stage == Stage.FAILED


def test_share_rerouted_to_another_site(federation: Federation) -> None:
    # The server hands C's share meant for B to A, relabelled: the associated data no longer matches.
    stepper = _awaiting(federation, Stage.MASKED_INPUT)
    relay = stepper.to_clients[Stage.MASKED_INPUT][A]
    to_b = stepper.to_clients[Stage.MASKED_INPUT][B]
    assert isinstance(relay, SharesRelay) and isinstance(to_b, SharesRelay)
    from_c_to_b = next(s for s in to_b.shares if s.sender == C)
    forged = tuple(dataclasses.replace(from_c_to_b, receiver=A) if s.sender == C else s for s in relay.shares)
    with pytest.raises(DecryptionFailed):
        stepper.clients[A].handle(dataclasses.replace(relay, shares=forged))


def test_missing_share_is_a_violation(federation: Federation) -> None:
    stepper = _awaiting(federation, Stage.MASKED_INPUT)
    relay = stepper.to_clients[Stage.MASKED_INPUT][A]
    assert isinstance(relay, SharesRelay)
    with pytest.raises(ProtocolViolation, match="expected shares from"):
        stepper.clients[A].handle(dataclasses.replace(relay, shares=relay.shares[1:]))


# Key advertisements ---------------------------------------------------------------------------
def _relay_with(stepper: Stepper, forged: KeyAdvertisement) -> AdvertisementsRelay:
    relay = stepper.to_clients[Stage.SHARE_KEYS][A]
    assert isinstance(relay, AdvertisementsRelay)
    return dataclasses.replace(relay, advertisements=tuple(forged if ad.site == forged.site else ad
                                                           for ad in relay.advertisements))


def _ad_of(stepper: Stepper, site: SiteId) -> KeyAdvertisement:
    ad = stepper.to_server[Stage.ADVERTISE_KEYS][site]
    assert isinstance(ad, KeyAdvertisement)
    return ad


def test_wrong_signature(federation: Federation) -> None:
    stepper = _awaiting(federation, Stage.SHARE_KEYS)
    ad = _ad_of(stepper, B)
    mine = federation.identities[C][0]
    forged = dataclasses.replace(ad, s_pk=bytes(range(32)),  # the server swaps B's mask key for its own
                                 signature=sign(mine, advertisement_payload(ad.nonce, B, ad.c_pk, bytes(range(32)))))
    with pytest.raises(InvalidSignature, match=f"signature of site '{B}' does not verify"):
        stepper.clients[A].handle(_relay_with(stepper, forged))
    assert stepper.clients[A].stage == Stage.FAILED


def test_certificate_from_another_ca(federation: Federation, other_ca: Authority) -> None:
    stepper = _awaiting(federation, Stage.SHARE_KEYS)
    ad = _ad_of(stepper, B)
    key, cert = other_ca.issue(B)
    forged = dataclasses.replace(ad, cert_pem=cert, signature=sign(key, advertisement_payload(ad.nonce, B, ad.c_pk, ad.s_pk)))
    with pytest.raises(InvalidSignature, match="not issued by the federation CA"):
        stepper.clients[A].handle(_relay_with(stepper, forged))


def test_certificate_of_another_site(federation: Federation) -> None:
    # C (a real member) tries to advertise keys in B's name with its own valid certificate.
    stepper = _awaiting(federation, Stage.SHARE_KEYS)
    ad = _ad_of(stepper, B)
    key, cert = federation.identities[C]
    forged = dataclasses.replace(ad, cert_pem=cert, signature=sign(key, advertisement_payload(ad.nonce, B, ad.c_pk, ad.s_pk)))
    with pytest.raises(InvalidSignature, match=f"does not name site '{B}'"):
        stepper.clients[A].handle(_relay_with(stepper, forged))


def test_server_refuses_forged_advertisement_and_keeps_waiting(federation: Federation, other_ca: Authority) -> None:
    stepper = Stepper(federation)
    announce = stepper.server.start()
    genuine = stepper.clients[B].handle(announce)
    assert isinstance(genuine, KeyAdvertisement)
    key, cert = other_ca.issue(B)
    forged = dataclasses.replace(genuine, cert_pem=cert, signature=sign(key, advertisement_payload(
        genuine.nonce, B, genuine.c_pk, genuine.s_pk)))
    with pytest.raises(InvalidSignature):
        stepper.server.receive(B, forged)
    assert B in stepper.server.pending
    stepper.server.receive(B, genuine)
    assert B not in stepper.server.pending


def test_relay_must_keep_own_advertisement(federation: Federation) -> None:
    stepper = _awaiting(federation, Stage.SHARE_KEYS)
    relay = stepper.to_clients[Stage.SHARE_KEYS][A]
    assert isinstance(relay, AdvertisementsRelay)
    others = tuple(ad for ad in relay.advertisements if ad.site != A)
    with pytest.raises(ProtocolViolation, match="own advertisement"):
        stepper.clients[A].handle(dataclasses.replace(relay, advertisements=others))


# Unmask request -------------------------------------------------------------------------------
def _request(stepper: Stepper) -> ConsistencyRequest:
    request = stepper.to_clients[Stage.CONSISTENCY][A]
    assert isinstance(request, ConsistencyRequest)
    return request


def test_survivors_overlapping_dropped_reveals_nothing(federation: Federation) -> None:
    stepper = _awaiting(federation, Stage.CONSISTENCY)
    request = _request(stepper)
    forged = dataclasses.replace(request, dropped=(B,))  # B also listed as a survivor
    with pytest.raises(ProtocolViolation, match=r"\['site-01'\] are listed as both survivors and dropped"):
        stepper.clients[A].handle(forged)
    assert stepper.clients[A].stage == Stage.FAILED
    with pytest.raises(ProtocolViolation):  # a failed session never reveals, even to a genuine request
        stepper.clients[A].handle(request)


@pytest.mark.parametrize(("survivors", "dropped", "error", "match"), [
    ((A, B), (), ProtocolViolation, "split exactly"),          # C vanished from both lists
    ((B, C), (A,), ProtocolViolation, "split exactly"),        # A itself declared dropped
    ((A,), (B, C), ThresholdNotMet, "1 survivors, need 2"),
    ((A, A, B), (C,), ProtocolViolation, "repeats"),
])
def test_inconsistent_unmask_lists(federation: Federation, survivors: tuple[SiteId, ...], dropped: tuple[SiteId, ...],
                                   error: type[Exception], match: str) -> None:
    stepper = _awaiting(federation, Stage.CONSISTENCY)
    with pytest.raises(error, match=match):
        stepper.clients[A].handle(dataclasses.replace(_request(stepper), survivors=survivors, dropped=dropped))


def test_server_refuses_unexpected_reveals(federation: Federation) -> None:
    stepper = Stepper(federation).server_collecting(Stage.CONSISTENCY)
    stepper.step()  # request_unmask
    reply = stepper.clients[A].handle(stepper.to_clients[Stage.UNMASK][A])
    leaked = dataclasses.replace(reply, mask_key_shares=reply.self_mask_shares[:1])  # type: ignore[type-var]
    with pytest.raises(ProtocolViolation, match="unexpected sites"):
        stepper.server.receive(A, leaked)


# Replays and impersonation --------------------------------------------------------------------
def test_client_rejects_messages_from_another_session(federation: Federation) -> None:
    old = Stepper(federation).client_awaiting(A, Stage.UNMASK)
    new = _awaiting(federation, Stage.SHARE_KEYS)
    with pytest.raises(SessionMismatch, match="nonce"):
        new.clients[A].handle(old.to_clients[Stage.SHARE_KEYS][A])
    new = _awaiting(federation, Stage.MASKED_INPUT)
    with pytest.raises(SessionMismatch, match="another session's id"):
        new.clients[A].handle(old.to_clients[Stage.MASKED_INPUT][A])
    new = _awaiting(federation, Stage.UNMASK)
    with pytest.raises(SessionMismatch, match="another session's id"):
        new.clients[A].handle(old.to_clients[Stage.UNMASK][A])


def test_server_rejects_messages_from_another_session(federation: Federation) -> None:
    old = Stepper(federation).server_collecting(Stage.UNMASK)
    new = Stepper(federation)
    new.step()  # start
    with pytest.raises(SessionMismatch, match="nonce"):
        new.server.receive(A, old.to_server[Stage.ADVERTISE_KEYS][A])
    new.server_collecting(Stage.SHARE_KEYS)
    new.step()  # route shares: MASKED_INPUT now collecting, nothing received yet
    with pytest.raises(SessionMismatch, match="another session's id"):
        new.server.receive(A, old.to_server[Stage.MASKED_INPUT][A])
    assert A in new.server.pending


def test_server_rejects_impersonation_and_bad_vectors(federation: Federation) -> None:
    stepper = Stepper(federation).server_collecting(Stage.SHARE_KEYS)
    stepper.step()
    masked = stepper.clients[A].handle(stepper.to_clients[Stage.MASKED_INPUT][A])
    assert isinstance(masked, MaskedInput)
    with pytest.raises(ProtocolViolation, match=f"message from {B} claims to be from {A}"):
        stepper.server.receive(B, masked)
    with pytest.raises(ProtocolViolation, match="expected uint32"):
        stepper.server.receive(A, dataclasses.replace(masked, vector=masked.vector.astype(np.uint64)))
    with pytest.raises(ProtocolViolation, match="not expected"):
        stepper.server.receive(SiteId("mallory"), dataclasses.replace(masked, sender=SiteId("mallory")))


def test_server_does_not_keep_masked_vectors(federation: Federation) -> None:
    stepper = Stepper(federation).server_collecting(Stage.SHARE_KEYS)
    stepper.step()
    masked = stepper.clients[A].handle(stepper.to_clients[Stage.MASKED_INPUT][A])
    assert isinstance(masked, MaskedInput)
    ref = weakref.ref(masked.vector)
    stepper.server.receive(A, masked)
    del masked
    gc.collect()
    assert ref() is None


def test_shares_to_wrong_receivers_refused(federation: Federation) -> None:
    stepper = Stepper(federation).server_collecting(Stage.ADVERTISE_KEYS)
    stepper.step()
    reply = stepper.clients[A].handle(stepper.to_clients[Stage.SHARE_KEYS][A])
    assert isinstance(reply, EncryptedShares)
    with pytest.raises(ProtocolViolation, match="one share to each of"):
        stepper.server.receive(A, dataclasses.replace(reply, shares=reply.shares[:1]))


def test_missing_input_and_weak_threshold(federation: Federation) -> None:
    stepper = Stepper(federation)
    stepper.clients[A] = federation.client(A)  # never given any vectors
    stepper.client_awaiting(A, Stage.MASKED_INPUT)
    with pytest.raises(InputError, match="no input vectors"):
        stepper.clients[A].handle(stepper.to_clients[Stage.MASKED_INPUT][A])
    weak = Stepper(federation, 4, params=dataclasses.replace(Stepper(federation, 4).params, threshold=2))
    weak.step()
    with pytest.raises(PolicyRefusal, match="threshold 2 is not above"):
        weak.clients[A].handle(weak.to_clients[Stage.ANNOUNCE][A])


def test_input_must_match_the_announced_layout(federation: Federation) -> None:
    stepper = Stepper(federation).client_awaiting(A, Stage.SHARE_KEYS)
    with pytest.raises(InputError, match="shape"):
        stepper.clients[A].set_input({"x": np.zeros(5)})
    stepper.clients[A].set_input({"x": np.zeros(4)})
