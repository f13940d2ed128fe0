"""What a site reports beside its tensors (``SubmitRequest.train`` / ``.unmask``) <-> plain dicts.

The domain keeps a TRAIN report as the dict the agent builds and the coordinator stores (keys ``n``,
``loss_before``, ``loss_after``, ``eval_loss``, ``steps``, ``dp``); this module is its one encoder and
decoder. Decoding returns only the fields that were sent, so the coordinator's checks
(``coordinator/site_input.py``: bounds, finite numbers) see exactly what the site said.
"""

from __future__ import annotations

from typing import Any, Mapping

from . import round_pb2 as rpb
from .codec import CodecError

_TRAIN_FIELDS = {"n": "num_samples", "loss_before": "loss_before", "loss_after": "loss_after",
                 "eval_loss": "eval_loss", "steps": "steps"}
"""Domain key -> TrainReport field."""
_DP_FIELDS = tuple(f.name for f in rpb.DpReport.DESCRIPTOR.fields)


def train_report_to_pb(metrics: Mapping[str, Any]) -> rpb.TrainReport:
    """A TRAIN report -> its message; None values are left unset; ``CodecError`` names an unknown key."""
    msg = rpb.TrainReport()
    for key, value in metrics.items():
        if value is None:
            continue
        if key == "dp":
            msg.dp.CopyFrom(_dp_to_pb(value))
        elif key in _TRAIN_FIELDS:
            _set(msg, _TRAIN_FIELDS[key], value, f"train report {key}")
        else:
            raise CodecError(f"train report key {key!r} has no field in TrainReport (known: {sorted(_TRAIN_FIELDS)})")
    return msg


def train_report_from_pb(msg: rpb.TrainReport) -> dict[str, Any]:
    """The message -> a TRAIN report dict holding only the fields that were sent."""
    back = {wire: key for key, wire in _TRAIN_FIELDS.items()}
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.name == "dp":
            out["dp"] = _dp_from_pb(value)
        else:
            out[back[field.name]] = value
    return out


def unmask_report_to_pb(clipped: int) -> rpb.UnmaskReport:
    """An unmasking reply's clipped-value count -> its message."""
    return rpb.UnmaskReport(clipped=clipped)


def _dp_to_pb(dp: Mapping[str, Any]) -> rpb.DpReport:
    msg = rpb.DpReport()
    for key, value in dp.items():
        if key not in _DP_FIELDS:
            raise CodecError(f"DP report key {key!r} has no field in DpReport (known: {sorted(_DP_FIELDS)})")
        if value is not None:
            _set(msg, key, value, f"DP report {key}")
    return msg


def _dp_from_pb(msg: rpb.DpReport) -> dict[str, Any]:
    """Every DpReport field, as the manifest records it (epsilon None: no finite guarantee)."""
    out: dict[str, Any] = {name: getattr(msg, name) for name in _DP_FIELDS}
    if not msg.HasField("epsilon"):
        out["epsilon"] = None
    return out


def _set(msg: Any, field: str, value: Any, what: str) -> None:
    try:
        setattr(msg, field, value)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{what}: {exc}") from None
