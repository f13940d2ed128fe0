"""fedquilt.secure_agg: sans-IO secure aggregation (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020).

numpy + cryptography only; no I/O, no threads. :class:`ClientSession` and :class:`ServerSession`
are state machines: feed messages in, send the messages they return.
"""

from .client import ClientSession
from .crl import RevocationSet, load_crl
from .errors import (
    DecryptionFailed, InputError, InvalidSignature, Overflow, PolicyRefusal, ProtocolViolation, SecAggError,
    SessionMismatch, ThresholdNotMet,
)
from .layout import VectorLayout
from .messages import (
    AdvertisementsRelay, AggregateResult, Announce, ClientMessage, ConsistencyRequest, ConsistencySignature,
    EncryptedShare, EncryptedShares, KeyAdvertisement, MaskedInput, RevealedShares, ServerMessage, SharesRelay, SiteId,
    Stage, UnmaskRequest,
)
from .params import SecAggParams, default_params
from .policy import ClientPolicy
from .server import ServerSession
from .signing import load_signing_key

__all__ = [
    "ClientSession", "ServerSession", "SecAggParams", "default_params", "VectorLayout", "SiteId", "Stage",
    "Announce", "KeyAdvertisement", "AdvertisementsRelay", "EncryptedShare", "EncryptedShares", "SharesRelay",
    "MaskedInput", "ConsistencyRequest", "ConsistencySignature", "UnmaskRequest", "RevealedShares", "AggregateResult",
    "ServerMessage", "ClientMessage", "load_signing_key", "ClientPolicy", "RevocationSet", "load_crl",
    "SecAggError", "ThresholdNotMet", "InvalidSignature", "SessionMismatch", "ProtocolViolation",
    "DecryptionFailed", "Overflow", "InputError", "PolicyRefusal",
]
