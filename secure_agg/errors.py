"""Exceptions raised by :mod:`fedquilt.secure_agg`.

Every failure is a :class:`SecAggError`; the subclasses name the fact that went wrong so a
caller (the coordinator or an agent) can map each one to a precise status and log line.
"""

from __future__ import annotations

__all__ = [
    "SecAggError",
    "ThresholdNotMet",
    "InvalidSignature",
    "SessionMismatch",
    "ProtocolViolation",
    "DecryptionFailed",
    "Overflow",
    "InputError",
    "PolicyRefusal",
]


class SecAggError(Exception):
    """Base class of every secure-aggregation error."""


class ThresholdNotMet(SecAggError):
    """Too few sites (or too few shares) are left to finish the secure sum."""


class InvalidSignature(SecAggError):
    """A key advertisement's signature, certificate chain, validity or subject is wrong."""


class SessionMismatch(SecAggError):
    """A message belongs to another session (nonce or session id differs): a replay or a bug."""


class ProtocolViolation(SecAggError):
    """A peer broke the protocol: wrong stage, inconsistent lists, duplicate or unknown sender."""


class DecryptionFailed(SecAggError):
    """An encrypted share did not authenticate (tampered, misrouted or from another session)."""


class Overflow(SecAggError, ValueError):
    """The fixed-point encoding cannot hold the sum of the declared number of values."""


class InputError(SecAggError, ValueError):
    """The caller's own input is unusable (missing, wrong shape, non-finite)."""


class PolicyRefusal(SecAggError):
    """The session falls below this site's own privacy policy; the site sends nothing more."""
