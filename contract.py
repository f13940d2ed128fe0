"""What both halves of a round derive from the signed round spec, in one place.

The agent and the coordinator each run one half of a rule. Every quantity both halves use to shape
vectors (the ranks that decide zero-padding and sketch widths, the session randomness, the rule's
parameters) must come from the same source, or a site that drops out of training changes the shapes
on one side only. That source is the round spec: the cohort the round was opened with, not whoever
happens to finish. ``round_context`` is the only constructor of a round's ``RoundContext``.
"""

from __future__ import annotations

from .proto.codec import RoundSpec
from .strategies.base import RoundContext


def round_context(spec: RoundSpec, session: bytes | None = None) -> RoundContext:
    """The rule context of ``spec``'s round: its shapes, the cohort's ranks, its rule parameters, and as public
    randomness ``session`` (a secure sum's session id) or else the round's nonce, and the modules trained densely
    beside the adapter (``modules_to_save``)."""
    return RoundContext(round=spec.round, shapes=spec.shapes, ranks=dict(spec.ranks),
                        session=session or bytes.fromhex(spec.nonce), params=spec.params,
                        saved=tuple(spec.modules_to_save))
