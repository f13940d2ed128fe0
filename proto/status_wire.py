"""The federation's status on the wire: ``Orchestrator.status()``'s dict <-> ``FederationStatus`` (Admin RPCs).

The status page serves the dict as ``/status.json`` for browsers; Admin callers get the typed message.
``status_to_pb`` and ``status_from_pb`` are the one pair between them, so the CLI decodes a reply back to
the very layout of ``/status.json`` (docs/admin.md lists its fields) and renders both alike. Times that the
coordinator keeps relative to its own clock (``last_seen_seconds_ago``) travel as absolute
``google.protobuf.Timestamp``s next to ``generated_at``, the snapshot's own time, which turns them back.
Keys of the dict that the message has no field for are not sent (the status is a report, not a contract
a caller could break).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from . import federation_pb2 as pb

_STATES = {"running": pb.FEDERATION_STATE_RUNNING, "paused": pb.FEDERATION_STATE_PAUSED,
           "finished": pb.FEDERATION_STATE_FINISHED}
_STAGES = {"training": pb.ROUND_STAGE_TRAINING, "phase": pb.ROUND_STAGE_PHASE, "done": pb.ROUND_STAGE_DONE}
_PROGRESS = {"training": pb.SITE_PROGRESS_TRAINING, "trained": pb.SITE_PROGRESS_TRAINED,
             "waiting": pb.SITE_PROGRESS_WAITING, "sent": pb.SITE_PROGRESS_SENT, "dropped": pb.SITE_PROGRESS_DROPPED}
_LOSSES = ("loss_before", "loss_after", "eval_loss")


def _names(table: Mapping[str, int]) -> dict[int, str]:
    return {v: k for k, v in table.items()}


# --- timestamps -----------------------------------------------------------------------------------


def timestamp_at(seconds: float) -> Timestamp:
    """POSIX seconds -> Timestamp."""
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * 1e9)  # the fraction alone: a float's 53 bits cannot hold 1e18 ns exactly
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return Timestamp(seconds=whole, nanos=nanos)


def timestamp_of_iso(text: str | None) -> Timestamp | None:
    """An ISO 8601 time (with its offset; naive is taken as UTC) -> Timestamp; None for empty or unreadable text."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return timestamp_at(when.timestamp())


def iso_of(ts: Timestamp) -> str:
    """Timestamp -> ISO 8601 in UTC, to the second ("2026-12-01T22:47:32+00:00")."""
    return ts.ToDatetime(tzinfo=timezone.utc).isoformat(timespec="seconds")


def _seconds(ts: Timestamp) -> float:
    return float(ts.ToNanoseconds()) / 1e9


# --- dict -> message -------------------------------------------------------------------------------


def status_to_pb(status: Mapping[str, Any], now: float) -> pb.FederationStatus:
    """``Orchestrator.status()`` taken at wall time ``now`` (POSIX seconds) -> its message."""
    rnd = status.get("current_round")
    return pb.FederationStatus(
        generated_at=timestamp_at(now), federation=str(status["federation"]), model=str(status["model"]),
        rule=str(status["rule"]), secure_aggregation=bool(status.get("secure_aggregation")),
        running=bool(status.get("running")), state=_STATES.get(str(status.get("state")), pb.FEDERATION_STATE_UNSPECIFIED),
        rounds_done=int(status.get("rounds_done") or 0), rounds_planned=int(status.get("rounds_planned") or 0),
        global_version=str(status.get("global_version") or ""),
        current_round=_round_to_pb(rnd) if rnd else None,
        sites=[site_info(s, now) for s in status.get("sites") or ()],
        history=[_outcome_to_pb(h) for h in status.get("history") or ()])


def site_info(site: Mapping[str, Any], now: float) -> pb.SiteInfo:
    """One entry of ``status()["sites"]`` -> SiteInfo (its last call as a wall-clock time)."""
    ago = site.get("last_seen_seconds_ago")
    return pb.SiteInfo(site_id=str(site["site"]), online=bool(site.get("online")),
                         num_samples=int(site.get("num_samples") or 0), lora_rank=int(site.get("rank") or 0),
                         last_seen_at=None if ago is None else timestamp_at(now - float(ago)))


def _round_to_pb(rnd: Mapping[str, Any]) -> pb.CurrentRound:
    step = rnd.get("secure_sum_step")
    kind = 0
    if step:
        name = str(step).upper()
        kind = pb.StepKind.Value(name if name == "DECLARE_LAYOUT" else f"SECAGG_{name}")
    return pb.CurrentRound(
        round=int(rnd["round"]), round_id=str(rnd["id"]), stage=_STAGES.get(str(rnd.get("stage")), pb.ROUND_STAGE_UNSPECIFIED),
        phase=int(rnd.get("phase") or 0), cohort=list(rnd.get("cohort") or ()),
        participants=list(rnd.get("participants") or ()),
        progress={str(s): _PROGRESS.get(str(p), pb.SITE_PROGRESS_UNSPECIFIED) for s, p in (rnd.get("progress") or {}).items()},
        deadline=timestamp_of_iso(rnd.get("deadline_utc")), secure_sum_step=kind)  # type: ignore[arg-type]


def _outcome_to_pb(h: Mapping[str, Any]) -> pb.RoundOutcome:
    msg = pb.RoundOutcome(
        round=int(h["round"]), version=str(h.get("version") or ""), round_id=str(h.get("round_id") or ""),
        published_at=timestamp_of_iso(h.get("published_at")), contributors=int(h.get("contributors") or 0),
        dropouts=int(h.get("dropouts") or 0), seconds=float(h.get("seconds") or 0.0),
        site_noise_sigmas=[float(s) for s in h.get("site_noise_sigmas") or ()],
        discarded=str(h.get("discarded") or ""), interrupted=bool(h.get("interrupted")))
    for key in (*_LOSSES, "epsilon"):
        if isinstance(h.get(key), (int, float)):
            setattr(msg, key, float(h[key]))
    if h.get("clipped") is not None:
        msg.clipped = int(h["clipped"])
    return msg


# --- message -> dict -------------------------------------------------------------------------------


def status_from_pb(msg: pb.FederationStatus) -> dict[str, Any]:
    """The message -> the layout of ``Orchestrator.status()`` / ``/status.json``."""
    now = _seconds(msg.generated_at)
    return {
        "federation": msg.federation, "model": msg.model, "rule": msg.rule,
        "secure_aggregation": msg.secure_aggregation, "running": msg.running,
        "state": _names(_STATES).get(msg.state, "running" if msg.running else "paused"),
        "rounds_done": msg.rounds_done, "rounds_planned": msg.rounds_planned,
        "global_version": msg.global_version or None,
        "current_round": _round_from_pb(msg.current_round) if msg.HasField("current_round") else None,
        "sites": [{"site": s.site_id, "online": s.online, "num_samples": s.num_samples, "rank": s.lora_rank,
                   "last_seen_seconds_ago": round(now - _seconds(s.last_seen_at), 1) if s.HasField("last_seen_at") else None}
                  for s in msg.sites],
        "history": [_outcome_from_pb(h) for h in msg.history],
    }


def _round_from_pb(rnd: pb.CurrentRound) -> dict[str, Any]:
    step = pb.StepKind.Name(rnd.secure_sum_step) if rnd.secure_sum_step else ""
    return {"round": rnd.round, "id": rnd.round_id, "stage": _names(_STAGES).get(rnd.stage, "training"),
            "phase": rnd.phase, "cohort": list(rnd.cohort), "participants": list(rnd.participants),
            "progress": {s: _names(_PROGRESS).get(p, "waiting") for s, p in sorted(rnd.progress.items())},
            "deadline_utc": iso_of(rnd.deadline) if rnd.HasField("deadline") else "",
            "secure_sum_step": step.removeprefix("SECAGG_").lower() or None}


def _outcome_from_pb(h: pb.RoundOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {"round": h.round, "version": h.version or None}
    if h.version:
        out.update({"contributors": h.contributors, "dropouts": h.dropouts, "seconds": h.seconds,
                    **{k: getattr(h, k) if h.HasField(k) else None for k in _LOSSES},
                    "round_id": h.round_id or None,
                    "published_at": iso_of(h.published_at) if h.HasField("published_at") else None,
                    "epsilon": h.epsilon if h.HasField("epsilon") else None})
    else:
        out["discarded"] = h.discarded
        if h.interrupted:
            out["interrupted"] = True
    if h.HasField("clipped"):
        out["clipped"] = h.clipped
    if h.site_noise_sigmas:
        out["site_noise_sigmas"] = list(h.site_noise_sigmas)
    return out
