"""Server half of SecAgg / SecAgg+ as a sans-IO state machine.

Theory of operation. The server relays keys and encrypted shares it cannot read, adds each
masked input into one accumulator as it arrives (memory O(vector), never n vectors), and at
the end removes the masks: for every survivor j it rebuilds the self-mask seed b_j from the
shares revealed by the others and subtracts PRG(b_j); for every site j that shared keys but
sent no masked input it rebuilds j's mask private key and removes the pairwise masks that j's
surviving neighbours added for j. What is left is the sum of the survivors' quantized inputs.

Sets of sites, each a subset of the previous one:
  U1 advertised keys, U2 sent shares, U3 sent masked input (survivors; U2 - U3 = dropped),
  U4 signed the survivor set U3 (the consistency stage), U5 revealed shares.
Each of them must reach the threshold t, and each secret needs its Shamir threshold of shares,
or the session fails with :class:`ThresholdNotMet` (restart it afresh). The neighbour graph is
built over U1 from a seed derived from the session id (every advertised key), never from the
nonce alone, so the coordinator cannot grind it.

The caller drives it: ``start()``, then ``receive()`` each site message, and close each stage
(deadline or everyone answered) with ``relay_advertisements()``, ``route_shares()``,
``request_consistency()``, ``request_unmask()`` and ``finish()``. ``receive`` raises on a bad message and ignores it;
a failed transition moves the session to FAILED.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

import numpy as np

from . import shamir
from .errors import Overflow, ProtocolViolation, SessionMismatch, ThresholdNotMet
from .graph import neighbours, prune
from .keys import Purpose, private_key_from_bytes, public_key_bytes, shared_seed
from .layout import VectorLayout
from .messages import (
    AdvertisementsRelay, AggregateResult, Announce, ClientMessage, ConsistencyRequest, ConsistencySignature,
    EncryptedShare, EncryptedShares, KeyAdvertisement, MaskedInput, RevealedShares, SharesRelay, SiteId, Stage,
    UnmaskRequest,
)
from .params import SecAggParams
from .prg import apply_masks
from .quantize import decode_sum
from .signing import CertificateVerifier, Clock, advertisement_payload, survivors_payload, utc_now
from .transcript import derive_graph_seed, derive_session_id

__all__ = ["ServerSession"]

_T = TypeVar("_T")

_TRANSITIONS: Final[dict[Stage, Stage]] = {
    Stage.ANNOUNCE: Stage.ADVERTISE_KEYS,
    Stage.ADVERTISE_KEYS: Stage.SHARE_KEYS,
    Stage.SHARE_KEYS: Stage.MASKED_INPUT,
    Stage.MASKED_INPUT: Stage.CONSISTENCY,
    Stage.CONSISTENCY: Stage.UNMASK,
    Stage.UNMASK: Stage.DONE,
}
"""Stage being collected -> next stage; each edge is one public method."""


class ServerSession:
    """The coordinator's side of one secure sum over ``cohort``."""

    def __init__(self, cohort: Sequence[SiteId], params: SecAggParams, layout: VectorLayout, *,
                 ca_cert_pem: bytes | None = None, mask_context: bytes = b"", nonce: bytes | None = None,
                 clock: Clock = utc_now) -> None:
        if len(set(cohort)) != len(cohort):
            raise ValueError(f"cohort must list distinct sites, got {len(cohort)} names for {len(set(cohort))} sites")
        if len(cohort) > params.max_sites:
            raise Overflow(f"cohort of {len(cohort)} sites exceeds max_sites={params.max_sites}: sums could overflow")
        if len(cohort) < params.threshold:
            raise ThresholdNotMet(f"cohort of {len(cohort)} sites cannot reach threshold {params.threshold}")
        self.cohort: tuple[SiteId, ...] = tuple(sorted(cohort))
        self.params, self.layout = params, layout
        self.nonce = secrets.token_bytes(32) if nonce is None else nonce
        self._verifier = None if ca_cert_pem is None else CertificateVerifier(ca_cert_pem, clock)
        self._mask_context = hashlib.sha256(mask_context).digest()
        self._graph: dict[SiteId, frozenset[SiteId]] = {}
        self._need = params.shares_needed(len(self.cohort))
        self._stage = Stage.ANNOUNCE
        self._sid = b""
        self._ads: dict[SiteId, KeyAdvertisement] = {}
        self._inbox: dict[SiteId, dict[SiteId, EncryptedShare]] = {}
        self._sharers: set[SiteId] = set()
        self._u1: frozenset[SiteId] = frozenset()
        self._u2: frozenset[SiteId] = frozenset()
        self._u3: set[SiteId] = set()
        self._signatures: dict[SiteId, bytes] = {}
        self._revealers: set[SiteId] = set()
        self._seed_shares: dict[SiteId, list[shamir.Share]] = {}
        self._key_shares: dict[SiteId, list[shamir.Share]] = {}
        self._acc = np.zeros(0, params.ring_dtype)

    @property
    def stage(self) -> Stage:
        """The stage whose site messages are being collected (or ANNOUNCE / DONE / FAILED)."""
        return self._stage

    @property
    def session_id(self) -> bytes | None:
        """The session id, fixed when the advertisements are relayed."""
        return self._sid or None

    @property
    def pending(self) -> frozenset[SiteId]:
        """Sites that may still send a message in the current stage."""
        expected = {Stage.ADVERTISE_KEYS: frozenset(self.cohort), Stage.SHARE_KEYS: self._u1,
                    Stage.MASKED_INPUT: self._u2, Stage.CONSISTENCY: frozenset(self._u3),
                    Stage.UNMASK: frozenset(self._signatures)}.get(self._stage, frozenset())
        return expected - self._heard()

    def _heard(self) -> set[SiteId]:
        return {Stage.ADVERTISE_KEYS: set(self._ads), Stage.SHARE_KEYS: self._sharers,
                Stage.MASKED_INPUT: self._u3, Stage.CONSISTENCY: set(self._signatures),
                Stage.UNMASK: self._revealers}.get(self._stage, set())

    def _advance(self, *, expected: Stage, step: Callable[[], _T]) -> _T:
        if self._stage != expected or expected not in _TRANSITIONS:
            raise ProtocolViolation(f"server cannot close stage {expected.name} while at {self._stage.name}")
        try:
            result = step()
        except BaseException:
            self._stage = Stage.FAILED
            raise
        self._stage = _TRANSITIONS[expected]
        return result

    # Transitions ----------------------------------------------------------------------------
    def start(self) -> Announce:
        """Open the session: the announcement to send to every cohort site."""
        return self._advance(expected=Stage.ANNOUNCE,
                             step=lambda: Announce(self.nonce, self.cohort, self.params, self.layout))

    def relay_advertisements(self) -> AdvertisementsRelay:
        """Close ADVERTISE_KEYS: the advertisements to send to every site in them."""
        return self._advance(expected=Stage.ADVERTISE_KEYS, step=self._relay_advertisements)

    def route_shares(self) -> dict[SiteId, SharesRelay]:
        """Close SHARE_KEYS: per site, the shares addressed to it."""
        return self._advance(expected=Stage.SHARE_KEYS, step=self._route_shares)

    def request_consistency(self) -> ConsistencyRequest:
        """Close MASKED_INPUT: the survivor and dropout lists every survivor is asked to sign."""
        return self._advance(expected=Stage.MASKED_INPUT, step=self._request_consistency)

    def request_unmask(self) -> UnmaskRequest:
        """Close CONSISTENCY: the same lists and the survivors' signatures, to every signer."""
        return self._advance(expected=Stage.CONSISTENCY, step=self._request_unmask)

    def finish(self) -> AggregateResult:
        """Close UNMASK: reconstruct the secrets, remove every mask and decode the sum."""
        return self._advance(expected=Stage.UNMASK, step=self._finish)

    def _relay_advertisements(self) -> AdvertisementsRelay:
        self._require(len(self._ads), "sites advertised keys")
        self._u1 = frozenset(self._ads)
        ads = tuple(self._ads[s] for s in sorted(self._u1))
        self._sid = derive_session_id(self.nonce, self.params, self.layout, ads)
        self._graph = neighbours(sorted(self._u1), self.params.degree, derive_graph_seed(self._sid))
        self._need = self.params.shares_needed(len(self._u1))
        return AdvertisementsRelay(self.nonce, ads)

    def _route_shares(self) -> dict[SiteId, SharesRelay]:
        self._require(len(self._sharers), "sites shared keys")
        self._u2 = frozenset(prune(self._sharers, self._graph, self._need))
        self._require(len(self._u2), "sites shared keys and keep enough share holders")
        participants = tuple(sorted(self._u2))
        self._acc = np.zeros(self.layout.size, self.params.ring_dtype)
        return {
            receiver: SharesRelay(self._sid, receiver, participants,
                                  tuple(self._inbox[receiver][sender] for sender in sorted(self._graph[receiver] & self._u2)))
            for receiver in participants
        }

    def _request_consistency(self) -> ConsistencyRequest:
        self._require(len(self._u3), "sites sent masked input")
        return ConsistencyRequest(self._sid, tuple(sorted(self._u3)), tuple(sorted(self._u2 - self._u3)))

    def _request_unmask(self) -> UnmaskRequest:
        self._require(len(self._signatures), "survivors signed the survivor set")
        return UnmaskRequest(self._sid, tuple(sorted(self._u3)), tuple(sorted(self._u2 - self._u3)),
                             tuple(sorted(self._signatures.items())))

    def _finish(self) -> AggregateResult:
        self._require(len(self._revealers), "sites revealed shares")
        survivors, dropped = sorted(self._u3), sorted(self._u2 - self._u3)
        plus: list[bytes] = []
        minus = [self._reconstruct(j, self._seed_shares, "self-mask seed") for j in survivors]
        for j in dropped:
            private = private_key_from_bytes(self._reconstruct(j, self._key_shares, "mask key"))
            if public_key_bytes(private) != self._ads[j].s_pk:
                raise ProtocolViolation(f"mask key rebuilt for dropped site {j} does not match its advertisement")
            for i in sorted(self._graph[j] & self._u3):
                seed = shared_seed(private, self._ads[i].s_pk, self._sid, Purpose.MASK, self._mask_context)
                (minus if i < j else plus).append(seed)
        apply_masks(self._acc, plus, minus)
        sums = self.layout.split(decode_sum(self._acc, self.params))
        return AggregateResult(self._sid, self._acc, sums, tuple(survivors), tuple(dropped))

    def _reconstruct(self, owner: SiteId, pool: dict[SiteId, list[shamir.Share]], what: str) -> bytes:
        shares = pool.get(owner, [])
        if len(shares) < self._need:
            raise ThresholdNotMet(f"{len(shares)} shares of site {owner}'s {what} revealed, need {self._need}")
        try:
            return shamir.combine(shares)
        except ValueError as exc:
            raise ProtocolViolation(f"shares of site {owner} are inconsistent: {exc}") from None

    def _require(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            raise ThresholdNotMet(f"{count} {what}, need {self.params.threshold}")

    # Collection -----------------------------------------------------------------------------
    def receive(self, site: SiteId, message: ClientMessage) -> None:
        """Accept one message from the authenticated ``site``; raise (and ignore it) if it is bad."""
        if message.stage != self._stage:
            raise ProtocolViolation(f"stage {message.stage.name} message from {site} while collecting {self._stage.name}")
        if site not in self.pending:
            raise ProtocolViolation(f"site {site} is not expected (or already heard) in stage {self._stage.name}")
        match message:
            case KeyAdvertisement():
                self._accept_advertisement(site, message)
            case EncryptedShares():
                self._accept_shares(site, message)
            case MaskedInput():
                self._accept_masked_input(site, message)
            case ConsistencySignature():
                self._accept_signature(site, message)
            case RevealedShares():
                self._accept_revealed(site, message)

    def _check(self, site: SiteId, sender: SiteId, session_id: bytes) -> None:
        if sender != site:
            raise ProtocolViolation(f"message from {site} claims to be from {sender}")
        if session_id != self._sid:
            raise SessionMismatch(f"message from {site} carries another session's id")

    def _accept_advertisement(self, site: SiteId, ad: KeyAdvertisement) -> None:
        if ad.site != site:
            raise ProtocolViolation(f"advertisement from {site} claims to be from {ad.site}")
        if ad.nonce != self.nonce:
            raise SessionMismatch(f"advertisement from {site} carries another session's nonce")
        if len(ad.c_pk) != 32 or len(ad.s_pk) != 32:
            raise ProtocolViolation(f"site {site} advertised malformed X25519 keys")
        if self._verifier is not None:
            self._verifier.verify(site, ad.cert_pem, advertisement_payload(ad.nonce, site, ad.c_pk, ad.s_pk),
                                  ad.signature)
        self._ads[site] = ad

    def _accept_shares(self, site: SiteId, msg: EncryptedShares) -> None:
        self._check(site, msg.sender, msg.session_id)
        receivers = [s.receiver for s in msg.shares]
        expected = self._graph[site] & self._u1
        if sorted(receivers) != sorted(expected) or any(s.sender != site for s in msg.shares):
            raise ProtocolViolation(f"site {site} must send one share to each of {sorted(expected)}")
        for share in msg.shares:
            self._inbox.setdefault(share.receiver, {})[site] = share
        self._sharers.add(site)

    def _accept_masked_input(self, site: SiteId, msg: MaskedInput) -> None:
        self._check(site, msg.sender, msg.session_id)
        vector = msg.vector
        if vector.dtype != self._acc.dtype or vector.shape != self._acc.shape:
            raise ProtocolViolation(f"masked input of {site} is {vector.dtype}{vector.shape}, "
                                    f"expected {self._acc.dtype}{self._acc.shape}")
        np.add(self._acc, vector, out=self._acc)
        self._u3.add(site)

    def _accept_signature(self, site: SiteId, msg: ConsistencySignature) -> None:
        self._check(site, msg.sender, msg.session_id)
        if self._verifier is not None:
            self._verifier.verify(site, self._ads[site].cert_pem, survivors_payload(self._sid, sorted(self._u3)),
                                  msg.signature)
        self._signatures[site] = msg.signature

    def _accept_revealed(self, site: SiteId, msg: RevealedShares) -> None:
        self._check(site, msg.sender, msg.session_id)
        holds = self._graph[site] | {site}
        parsed: list[tuple[dict[SiteId, list[shamir.Share]], SiteId, shamir.Share]] = []
        for pool, owners, allowed in ((self._seed_shares, msg.self_mask_shares, self._u3),
                                      (self._key_shares, msg.mask_key_shares, self._u2 - self._u3)):
            names = [owner for owner, _ in owners]
            if len(set(names)) != len(names) or not set(names) <= allowed & holds:
                raise ProtocolViolation(f"site {site} revealed shares for unexpected sites {sorted(names)}")
            for owner, encoded in owners:
                try:
                    parsed.append((pool, owner, shamir.Share.from_bytes(encoded)))
                except ValueError as exc:
                    raise ProtocolViolation(f"share of {owner} from {site} is malformed: {exc}") from None
        for pool, owner, share in parsed:
            pool.setdefault(owner, []).append(share)
        self._revealers.add(site)
