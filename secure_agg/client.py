"""Client half of SecAgg / SecAgg+ as a sans-IO state machine.

Theory of operation. A site holds a private vector x_i. It sends the server
``y_i = q(x_i) + PRG(b_i) + sum_j ±PRG(s_ij)`` where q is the fixed-point encoding, b_i a
fresh self-mask seed and s_ij a seed agreed by X25519 with each neighbour j (added when
i < j, subtracted when i > j), so pairwise masks cancel in the sum over all sites. To let
the server finish when sites drop, each site Shamir-shares b_i and its mask private key s_sk
among its neighbours; at the end every honest site reveals, for each other site, the share
of b_j (if j's masked input arrived) or of s_sk_j (if it did not) — never both, which is what
keeps x_j hidden. Before revealing, the site checks the server's lists itself.

Stages (the server's message that opens each, and this site's reply):
  ANNOUNCE      Announce            -> KeyAdvertisement (c_pk, s_pk, signature, certificate)
  SHARE_KEYS    AdvertisementsRelay -> EncryptedShares  (verify every advertisement first)
  MASKED_INPUT  SharesRelay         -> MaskedInput
  CONSISTENCY   ConsistencyRequest  -> ConsistencySignature (signs the survivor set it was shown)
  UNMASK        UnmaskRequest       -> RevealedShares   (same lists, >= floor valid signatures on them)
Any error moves the session to FAILED for good; a failed session never reveals anything.

The site's own :class:`~.policy.ClientPolicy` is checked at every stage before anything is sent:
the cohort, the advertisers, the sharers, the survivors and the signers must each number at
least ``max(t, policy.min_sites)``; the SecAgg+ graph is seeded from the session id (so from
every site's fresh keys, not from a nonce the coordinator could grind); a multi-phase sum may
require exactly the first phase's contributors at every stage. The consistency stage is
Bonawitz et al. 2017's active-adversary round: a coordinator that shows two sites different
survivor sets cannot collect enough signatures on either, and nobody reveals.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

import numpy.typing as npt

from . import aead, shamir
from .crl import RevocationSet
from .errors import InputError, InvalidSignature, Overflow, ProtocolViolation, SessionMismatch, ThresholdNotMet
from .graph import neighbours
from .keys import KeyPair, Purpose, generate_key_pair, shared_seed
from .messages import (
    AdvertisementsRelay, Announce, ClientMessage, ConsistencyRequest, ConsistencySignature, EncryptedShare,
    EncryptedShares, KeyAdvertisement, MaskedInput, RevealedShares, ServerMessage, SharesRelay, SiteId, Stage,
    UnmaskRequest,
)
from .params import SecAggParams
from .policy import ClientPolicy
from .prg import apply_masks
from .quantize import quantize
from .signing import (
    CertificateVerifier, Clock, SigningKey, advertisement_payload, sign, survivors_payload, utc_now,
)
from .transcript import derive_graph_seed, derive_session_id

__all__ = ["ClientSession"]

_T = TypeVar("_T")

_TRANSITIONS: Final[dict[Stage, Stage]] = {
    Stage.ANNOUNCE: Stage.SHARE_KEYS,
    Stage.SHARE_KEYS: Stage.MASKED_INPUT,
    Stage.MASKED_INPUT: Stage.CONSISTENCY,
    Stage.CONSISTENCY: Stage.UNMASK,
    Stage.UNMASK: Stage.DONE,
}
"""Stage awaited -> stage awaited after handling the server message that opens it."""

_SHARE_BYTES: Final = len(shamir.Share(1, 0).to_bytes())


class ClientSession:
    """One site's side of one secure sum: feed it server messages, send back what it returns."""

    def __init__(self, site: SiteId, identity_key: SigningKey, cert_pem: bytes, ca_cert_pem: bytes, *,
                 vectors: Mapping[str, npt.ArrayLike] | None = None, mask_context: bytes = b"",
                 clock: Clock = utc_now, rounding_seed: bytes | None = None,
                 policy: ClientPolicy | None = None, revocations: RevocationSet | None = None) -> None:
        self.site = site
        self._identity_key = identity_key
        self._cert_pem = cert_pem
        self._verifier = CertificateVerifier(ca_cert_pem, clock, revocations=revocations)
        self._vectors = vectors
        self._mask_context = hashlib.sha256(mask_context).digest()
        self._rounding_seed = rounding_seed
        self.policy = policy or ClientPolicy()
        """This site's floor under the session (see :class:`~.policy.ClientPolicy`)."""
        self.survivors: frozenset[SiteId] | None = None
        """The survivor set this site signed (known after CONSISTENCY): a multi-phase sum's contributors."""
        self._stage = Stage.ANNOUNCE
        self._sid = b""
        self.clipped: int | None = None
        """How many of this site's values were clipped (known after MASKED_INPUT)."""

    @property
    def session_id(self) -> bytes | None:
        """The session id, known once every advertisement has been verified (stage SHARE_KEYS)."""
        return self._sid or None

    @property
    def params(self) -> SecAggParams | None:
        """The announced parameters (known once the announcement was accepted)."""
        announce = getattr(self, "_announce", None)
        return None if announce is None else announce.params

    @property
    def stage(self) -> Stage:
        """The stage whose opening server message this session awaits (or DONE / FAILED)."""
        return self._stage

    def set_input(self, vectors: Mapping[str, npt.ArrayLike]) -> None:
        """Provide the vectors to sum (any time before the MASKED_INPUT stage opens)."""
        if self._stage > Stage.MASKED_INPUT:
            raise ProtocolViolation(f"input given at stage {self._stage.name}, after it was needed")
        if self._stage > Stage.ANNOUNCE:
            self._announce.layout.check(vectors)
        self._vectors = vectors

    def handle(self, message: ServerMessage) -> ClientMessage:
        """Process one server message and return the reply to send."""
        return self._advance(expected=message.stage, step=lambda: self._dispatch(message))

    def _advance(self, *, expected: Stage, step: Callable[[], _T]) -> _T:
        if self._stage != expected or expected not in _TRANSITIONS:
            stage, self._stage = self._stage, Stage.FAILED if self._stage != Stage.DONE else Stage.DONE
            raise ProtocolViolation(f"site {self.site}: got a stage {expected.name} message while at {stage.name}")
        try:
            result = step()
        except BaseException:
            self._stage = Stage.FAILED
            raise
        self._stage = _TRANSITIONS[expected]
        return result

    def _dispatch(self, message: ServerMessage) -> ClientMessage:
        match message:
            case Announce():
                return self._advertise(message)
            case AdvertisementsRelay():
                return self._share_keys(message)
            case SharesRelay():
                return self._masked_input(message)
            case ConsistencyRequest():
                return self._sign_survivors(message)
            case UnmaskRequest():
                return self._reveal(message)

    # Stage 0 -> 1 -------------------------------------------------------------------------
    def _advertise(self, msg: Announce) -> KeyAdvertisement:
        cohort, params = msg.cohort, msg.params
        if self.site not in cohort or len(set(cohort)) != len(cohort):
            raise ProtocolViolation(f"cohort must list distinct sites including {self.site}")
        if len(cohort) > params.max_sites:
            raise Overflow(f"cohort of {len(cohort)} exceeds max_sites={params.max_sites}: sums could overflow")
        self.policy.check_announce(self.site, cohort, params)
        if len(msg.nonce) < 16:
            raise ProtocolViolation(f"nonce of {len(msg.nonce)} bytes is too short (need >= 16)")
        if self._vectors is not None:
            msg.layout.check(self._vectors)
        self._announce = msg
        self._c_keys: KeyPair = generate_key_pair()
        self._s_keys: KeyPair = generate_key_pair()
        payload = advertisement_payload(msg.nonce, self.site, self._c_keys.public, self._s_keys.public)
        self._own_ad = KeyAdvertisement(msg.nonce, self.site, self._c_keys.public, self._s_keys.public,
                                        self._cert_pem, sign(self._identity_key, payload))
        return self._own_ad

    # Stage 2 ------------------------------------------------------------------------------
    def _share_keys(self, msg: AdvertisementsRelay) -> EncryptedShares:
        self._ads = self._check_advertisements(msg)
        params = self._announce.params
        session_id = derive_session_id(self._announce.nonce, params, self._announce.layout, self._ads.values())
        self._sid = session_id
        self._graph = neighbours(sorted(self._ads), params.degree, derive_graph_seed(session_id))
        holders = sorted(self._graph[self.site] | {self.site})
        need = params.shares_needed(len(self._ads))
        if len(holders) < need:
            raise ThresholdNotMet(f"site {self.site}: {len(holders)} share holders left, need {need}")
        self._seed = secrets.token_bytes(32)
        seed_shares = shamir.split(self._seed, need, len(holders))
        key_shares = shamir.split(self._s_keys.private_bytes(), need, len(holders))
        self._held: dict[SiteId, tuple[bytes, bytes]] = {}
        out = []
        for holder, b_share, s_share in zip(holders, seed_shares, key_shares):
            plaintext = b_share.to_bytes() + s_share.to_bytes()
            if holder == self.site:
                self._held[holder] = (plaintext[:_SHARE_BYTES], plaintext[_SHARE_BYTES:])
                continue
            key = self._pair_seed(holder, Purpose.SHARE_ENCRYPTION)
            ad = aead.associated_data(session_id, self.site, holder, Stage.SHARE_KEYS)
            out.append(EncryptedShare(self.site, holder, aead.encrypt(key, plaintext, ad)))
        return EncryptedShares(session_id, self.site, tuple(out))

    def _check_advertisements(self, msg: AdvertisementsRelay) -> dict[SiteId, KeyAdvertisement]:
        nonce, cohort = self._announce.nonce, set(self._announce.cohort)
        ads: dict[SiteId, KeyAdvertisement] = {}
        if msg.nonce != nonce or any(ad.nonce != nonce for ad in msg.advertisements):
            raise SessionMismatch(f"site {self.site}: advertisement relay carries another session's nonce")
        for ad in msg.advertisements:
            if ad.site not in cohort or ad.site in ads:
                raise ProtocolViolation(f"advertisement of {ad.site!r} is unknown to the cohort or repeated")
            if len(ad.c_pk) != 32 or len(ad.s_pk) != 32:
                raise ProtocolViolation(f"site {ad.site} advertised malformed X25519 keys")
            self._verifier.verify(ad.site, ad.cert_pem, advertisement_payload(nonce, ad.site, ad.c_pk, ad.s_pk),
                                  ad.signature)
            ads[ad.site] = ad
        if ads.get(self.site) != self._own_ad:
            raise ProtocolViolation(f"the relay omits or alters site {self.site}'s own advertisement")
        if len(ads) < self._announce.params.threshold:
            raise ThresholdNotMet(f"{len(ads)} sites advertised keys, need {self._announce.params.threshold}")
        self.policy.check_count(self.site, "sites advertised keys", len(ads), self._announce.params)
        self.policy.check_members(self.site, "the key advertisers", frozenset(ads))
        return ads

    # Stage 3 ------------------------------------------------------------------------------
    def _masked_input(self, msg: SharesRelay) -> MaskedInput:
        session_id = self._check_session(msg.session_id)
        participants = self._check_participants(msg)
        peers = (self._graph[self.site] & participants) - {self.site}
        senders = [share.sender for share in msg.shares]
        if sorted(senders) != sorted(peers) or any(s.receiver != self.site for s in msg.shares):
            raise ProtocolViolation(f"site {self.site} expected shares from {sorted(peers)}, got {sorted(senders)}")
        for share in msg.shares:
            ad = aead.associated_data(session_id, share.sender, self.site, Stage.SHARE_KEYS)
            plain = aead.decrypt(self._pair_seed(share.sender, Purpose.SHARE_ENCRYPTION), share.ciphertext, ad,
                                 what=f"share from {share.sender} to {self.site}")
            if len(plain) != 2 * _SHARE_BYTES:
                raise ProtocolViolation(f"share from {share.sender} has {len(plain)} bytes")
            self._held[share.sender] = (plain[:_SHARE_BYTES], plain[_SHARE_BYTES:])
        self._participants = participants
        if self._vectors is None:
            raise InputError(f"site {self.site}: no input vectors were provided before MASKED_INPUT")
        vector, self.clipped = quantize(self._vectors, self._announce.layout, self._announce.params,
                                        rounding_seed=self._rounding_seed)
        self._vectors = None
        plus = [self._seed] + [self._pair_seed(j, Purpose.MASK) for j in sorted(peers) if self.site < j]
        minus = [self._pair_seed(j, Purpose.MASK) for j in sorted(peers) if self.site > j]
        apply_masks(vector, plus, minus)
        return MaskedInput(session_id, self.site, vector)

    def _check_participants(self, msg: SharesRelay) -> frozenset[SiteId]:
        participants = frozenset(msg.participants)
        if msg.receiver != self.site or len(participants) != len(msg.participants):
            raise ProtocolViolation(f"shares relay for {msg.receiver} reached {self.site} or repeats participants")
        if self.site not in participants or not participants <= self._ads.keys():
            raise ProtocolViolation("participants must include this site and only sites that advertised keys")
        if len(participants) < self._announce.params.threshold:
            raise ThresholdNotMet(f"{len(participants)} sites shared keys, need {self._announce.params.threshold}")
        self.policy.check_count(self.site, "sites shared keys", len(participants), self._announce.params)
        self.policy.check_members(self.site, "the sites that shared keys", participants)
        return participants

    # Stage 4 ------------------------------------------------------------------------------
    def _sign_survivors(self, msg: ConsistencyRequest) -> ConsistencySignature:
        session_id = self._check_session(msg.session_id)
        survivors, dropped = self._check_lists(msg.survivors, msg.dropped)
        self._lists = (tuple(sorted(survivors)), tuple(sorted(dropped)))
        self.survivors = frozenset(survivors)
        signature = sign(self._identity_key, survivors_payload(session_id, self._lists[0]))
        return ConsistencySignature(session_id, self.site, signature)

    def _check_lists(self, shown_survivors: tuple[SiteId, ...], shown_dropped: tuple[SiteId, ...]
                     ) -> tuple[set[SiteId], set[SiteId]]:
        survivors, dropped = set(shown_survivors), set(shown_dropped)
        if survivors & dropped:
            raise ProtocolViolation(f"sites {sorted(survivors & dropped)} are listed as both survivors and dropped")
        if len(survivors) != len(shown_survivors) or len(dropped) != len(shown_dropped):
            raise ProtocolViolation("survivor or dropout list repeats a site")
        if len(survivors) < self._announce.params.threshold:
            raise ThresholdNotMet(f"{len(survivors)} survivors, need {self._announce.params.threshold}")
        if self.site not in survivors or survivors | dropped != self._participants:
            raise ProtocolViolation("survivors and dropped must split exactly the sites that shared keys")
        self.policy.check_count(self.site, "survivors", len(survivors), self._announce.params)
        self.policy.check_members(self.site, "the survivors", frozenset(survivors))
        return survivors, dropped

    # Stage 5 ------------------------------------------------------------------------------
    def _reveal(self, msg: UnmaskRequest) -> RevealedShares:
        session_id = self._check_session(msg.session_id)
        if (tuple(sorted(msg.survivors)), tuple(sorted(msg.dropped))) != self._lists:
            raise ProtocolViolation(f"site {self.site}: the unmask request lists other survivors than the set it signed")
        survivors, dropped = set(self._lists[0]), set(self._lists[1])
        self._check_signatures(session_id, msg.signatures)
        return RevealedShares(
            session_id, self.site,
            tuple((owner, shares[0]) for owner, shares in sorted(self._held.items()) if owner in survivors),
            tuple((owner, shares[1]) for owner, shares in sorted(self._held.items()) if owner in dropped),
        )

    def _check_signatures(self, session_id: bytes, signatures: tuple[tuple[SiteId, bytes], ...]) -> None:
        """At least the floor of distinct survivors signed exactly the survivor set this site signed."""
        payload = survivors_payload(session_id, self._lists[0])
        signers: set[SiteId] = set()
        for signer, signature in signatures:
            if signer not in self._lists[0] or signer in signers:
                raise ProtocolViolation(f"survivor-set signature from {signer!r}, who is not a survivor or repeats")
            try:
                self._verifier.verify(signer, self._ads[signer].cert_pem, payload, signature)
            except InvalidSignature as exc:
                raise InvalidSignature(f"site {self.site}: {signer} did not sign the survivor set this site "
                                       f"was shown ({exc}); refusing to reveal") from None
            signers.add(signer)
        if self.site not in signers:
            raise ProtocolViolation(f"site {self.site}: its own survivor-set signature is missing from the request")
        if len(signers) < self._announce.params.threshold:
            raise ThresholdNotMet(f"{len(signers)} survivors signed the survivor set, need "
                                  f"{self._announce.params.threshold}")
        self.policy.check_count(self.site, "survivors signed the survivor set", len(signers), self._announce.params)

    # Helpers ------------------------------------------------------------------------------
    def _check_session(self, session_id: bytes) -> bytes:
        if not self._sid or session_id != self._sid:
            raise SessionMismatch(f"site {self.site}: message carries another session's id")
        return self._sid

    def _pair_seed(self, peer: SiteId, purpose: Purpose) -> bytes:
        if purpose is Purpose.MASK:
            private, public, context = self._s_keys.private, self._ads[peer].s_pk, self._mask_context
        else:
            private, public, context = self._c_keys.private, self._ads[peer].c_pk, b""
        try:
            return shared_seed(private, public, self._sid, purpose, context)
        except ValueError:
            raise ProtocolViolation(f"site {peer} advertised an unusable X25519 key") from None
