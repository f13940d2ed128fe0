"""Domain errors of the coordinator; ``rpc_errors`` maps each to one precise gRPC status."""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base class: a request the coordinator refuses, with the reason."""


class InvalidRequest(CoordinatorError):
    """Malformed input: bad shapes, NaN/Inf values, unknown fields, bad encoding."""


class TooLarge(CoordinatorError):
    """A message or stream over its configured limit."""


class NotEnrolled(CoordinatorError):
    """The site has not said Hello (or was forgotten after a restart)."""


class Mismatch(CoordinatorError):
    """The site's setup does not match the federation (base model fingerprint, task, targets)."""


class StaleStep(CoordinatorError):
    """The request names a round, phase or step that is not the current one for this site."""


class NotInCohort(CoordinatorError):
    """The site is not a participant of the round it names."""


class Duplicate(CoordinatorError):
    """A second, different submission for a step that already has one."""


class UnknownVersion(CoordinatorError):
    """A pull for a model version or tag that does not exist."""


class StreamDeadline(CoordinatorError):
    """A stream that went idle past, or ran longer than, the server's deadline."""
