"""Every message of the protocol, in both directions, as frozen dataclasses.

Stage 0-1 messages carry the server's ``nonce``; later ones carry the ``session_id``
(a hash of the nonce, parameters and all advertised keys), so a message replayed from
another session is rejected with :class:`~.errors.SessionMismatch`. Each message class
names the :class:`Stage` it belongs to in its ``stage`` class variable.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, NewType

import numpy as np
import numpy.typing as npt

from .layout import VectorLayout
from .params import SecAggParams

__all__ = [
    "SiteId", "Stage", "RingArray",
    "Announce", "KeyAdvertisement", "AdvertisementsRelay", "EncryptedShare", "EncryptedShares",
    "SharesRelay", "MaskedInput", "ConsistencyRequest", "ConsistencySignature", "UnmaskRequest", "RevealedShares", "AggregateResult",
    "ServerMessage", "ClientMessage",
]

SiteId = NewType("SiteId", str)
"""A site's identity: the subject CN of its certificate."""
RingArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
"""A vector of ring elements."""


class Stage(enum.IntEnum):
    """Protocol stages, in order; DONE and FAILED are terminal."""

    ANNOUNCE = 0
    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY = 4
    UNMASK = 5
    DONE = 6
    FAILED = 7


@dataclass(frozen=True)
class Announce:
    """Server -> cohort (stage 0): who takes part, a fresh nonce, the parameters and layout."""

    stage: ClassVar[Stage] = Stage.ANNOUNCE
    nonce: bytes
    cohort: tuple[SiteId, ...]
    params: SecAggParams
    layout: VectorLayout


@dataclass(frozen=True)
class KeyAdvertisement:
    """Site -> server (stage 1): two X25519 public keys signed with the site's identity key."""

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    nonce: bytes
    site: SiteId
    c_pk: bytes
    """Public key for share encryption."""
    s_pk: bytes
    """Public key for pairwise masks."""
    cert_pem: bytes
    signature: bytes


@dataclass(frozen=True)
class AdvertisementsRelay:
    """Server -> advertisers (opens stage 2): every accepted advertisement."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    nonce: bytes
    advertisements: tuple[KeyAdvertisement, ...]


@dataclass(frozen=True)
class EncryptedShare:
    """One site's shares (self-mask seed and mask key) encrypted for one neighbour."""

    sender: SiteId
    receiver: SiteId
    ciphertext: bytes


@dataclass(frozen=True)
class EncryptedShares:
    """Site -> server (stage 2): its encrypted shares, one per neighbour."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    session_id: bytes
    sender: SiteId
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class SharesRelay:
    """Server -> site (opens stage 3): the sites that shared, and the shares addressed to it."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    session_id: bytes
    receiver: SiteId
    participants: tuple[SiteId, ...]
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Site -> server (stage 3): its quantized vector plus self mask and pairwise masks."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    session_id: bytes
    sender: SiteId
    vector: RingArray


@dataclass(frozen=True)
class ConsistencyRequest:
    """Server -> survivors (opens stage 4): who sent masked input and who dropped; each survivor signs it."""

    stage: ClassVar[Stage] = Stage.CONSISTENCY
    session_id: bytes
    survivors: tuple[SiteId, ...]
    dropped: tuple[SiteId, ...]


@dataclass(frozen=True)
class ConsistencySignature:
    """Site -> server (stage 4): its signature on ``(session_id, survivors)`` as it was shown them."""

    stage: ClassVar[Stage] = Stage.CONSISTENCY
    session_id: bytes
    sender: SiteId
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Server -> signers (opens stage 5): the same lists, and the survivors' signatures on them."""

    stage: ClassVar[Stage] = Stage.UNMASK
    session_id: bytes
    survivors: tuple[SiteId, ...]
    dropped: tuple[SiteId, ...]
    signatures: tuple[tuple[SiteId, bytes], ...] = ()
    """``(signer, signature)`` of every survivor that signed the survivor set (Bonawitz et al.'s round 4)."""


@dataclass(frozen=True)
class RevealedShares:
    """Site -> server (stage 5): shares of survivors' self-mask seeds and dropped sites' mask keys."""

    stage: ClassVar[Stage] = Stage.UNMASK
    session_id: bytes
    sender: SiteId
    self_mask_shares: tuple[tuple[SiteId, bytes], ...]
    """``(owner, share)`` for surviving owners."""
    mask_key_shares: tuple[tuple[SiteId, bytes], ...]
    """``(owner, share)`` for dropped owners."""


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """What the server learns: the sum (ring and decoded) and who contributed to it."""

    session_id: bytes
    ring_sum: RingArray
    sums: Mapping[str, npt.NDArray[np.float64]]
    contributors: tuple[SiteId, ...]
    dropped: tuple[SiteId, ...]


ServerMessage = Announce | AdvertisementsRelay | SharesRelay | ConsistencyRequest | UnmaskRequest
"""Messages the server sends."""
ClientMessage = KeyAdvertisement | EncryptedShares | MaskedInput | ConsistencySignature | RevealedShares
"""Messages a site sends."""
