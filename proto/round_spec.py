"""The round spec: the domain's ``RoundSpec`` and its one encoder / decoder to ``round.proto``'s message.

Domain code (orchestrator, agent loop, rules) only sees ``RoundSpec``; ``encode_spec`` / ``decode_spec``
are the only place that knows the wire message. The open-ended parts stay plain mappings in the domain
(``params``: each rule's own; ``train``: checked by ``contract.TrainHyper`` where it is used; ``secagg``)
and are typed on the wire: a key the wire has no field for is refused here, by name, rather than
dropped. Decoding returns only what was sent, so the receiving side applies its own defaults.
"""

from __future__ import annotations

from typing import Any, Mapping

from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import round_pb2 as rpb
from . import tensors_pb2 as tpb
from .codec import CodecError

NONCE_BYTES = 16


class RoundSpec(BaseModel):
    """Everything a site needs to take part in one round (travels as ``Task.spec``, round.proto)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round_id: str
    round: int = Field(ge=1)
    rule: str
    params: dict[str, Any] = Field(default_factory=dict)
    ranks: dict[str, int]
    shapes: dict[str, tuple[int, int]]
    train: dict[str, Any] = Field(default_factory=dict)
    nonce: str
    """Hex randomness of this round (public; binds sketches and masks to the round)."""
    global_version: str | None = None
    secagg: dict[str, Any] | None = None
    """Secure-aggregation parameters, or None for plaintext aggregation."""
    weights: dict[str, int] = Field(default_factory=dict)
    """The count n each site weights its submission by (the federation's weighting, capped); empty: its own."""
    modules_to_save: list[str] = Field(default_factory=list)
    """Modules trained and averaged densely next to the adapter (e.g. a seq-cls head; issue 14)."""


def encode_spec(spec: RoundSpec) -> rpb.RoundSpec:
    """RoundSpec -> its wire message; ``CodecError`` names a value the wire cannot carry."""
    try:
        nonce = bytes.fromhex(spec.nonce)
    except ValueError:
        raise CodecError(f"round spec nonce must be hex, got {spec.nonce[:40]!r}") from None
    return rpb.RoundSpec(
        round_id=spec.round_id, round=spec.round, rule=spec.rule,
        params={k: _param_to_pb(k, v) for k, v in spec.params.items()}, ranks=dict(spec.ranks),
        shapes={k: tpb.Shape(dims=list(v)) for k, v in spec.shapes.items()}, train=_train_to_pb(spec.train),
        nonce=nonce, global_version=spec.global_version or "",
        secagg=None if spec.secagg is None else _secagg_to_pb(spec.secagg), weights=dict(spec.weights),
        modules_to_save=list(spec.modules_to_save))


def decode_spec(msg: rpb.RoundSpec) -> RoundSpec:
    """The wire message -> RoundSpec, with a precise ``CodecError``."""
    shapes = {k: tuple(int(d) for d in v.dims) for k, v in msg.shapes.items()}
    if any(len(s) != 2 for s in shapes.values()):
        raise CodecError(f"malformed round spec: shapes must be (d, k), got {dict(list(shapes.items())[:3])}")
    try:
        return RoundSpec(
            round_id=msg.round_id, round=msg.round, rule=msg.rule,
            params={k: _param_from_pb(v) for k, v in msg.params.items()}, ranks=dict(msg.ranks), shapes=shapes,
            train=_train_from_pb(msg.train), nonce=msg.nonce.hex(), global_version=msg.global_version or None,
            secagg=_secagg_from_pb(msg.secagg) if msg.HasField("secagg") else None, weights=dict(msg.weights),
            modules_to_save=list(msg.modules_to_save))
    except ValidationError as exc:
        raise CodecError(f"malformed round spec: {exc}") from None


# --- rule parameters -------------------------------------------------------------------------------


def _param_to_pb(name: str, value: Any) -> rpb.RuleParam:
    if value is None:
        return rpb.RuleParam()
    if isinstance(value, bool):
        return rpb.RuleParam(flag=value)
    if isinstance(value, int):
        return rpb.RuleParam(integer=value)
    if isinstance(value, float):
        return rpb.RuleParam(number=value)
    if isinstance(value, str):
        return rpb.RuleParam(text=value)
    raise CodecError(f"rule parameter {name!r} must be a bool, integer, number, string or None, got {value!r}")


def _param_from_pb(msg: rpb.RuleParam) -> Any:
    kind = msg.WhichOneof("value")
    return None if kind is None else getattr(msg, kind)


# --- training hyper-parameters ---------------------------------------------------------------------

_OPTIMIZERS = {"adamw": rpb.OPTIMIZER_ADAMW, "sgd": rpb.OPTIMIZER_SGD, "galore-adamw": rpb.OPTIMIZER_GALORE_ADAMW}
_OPTIMIZER_NAMES = {v: k for k, v in _OPTIMIZERS.items()}
_NONE_AS_ZERO = ("max_grad_norm", "eval_batches")
"""Fields whose None (no clipping; the whole dataset) travels as 0, a value they otherwise never take."""


def _train_to_pb(train: Mapping[str, Any]) -> rpb.TrainHyper:
    msg = rpb.TrainHyper()
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in train.items():
        if key == "optimizer":
            if value not in _OPTIMIZERS:
                raise CodecError(f"train.optimizer must be one of {sorted(_OPTIMIZERS)}, got {value!r}")
            msg.optimizer = _OPTIMIZERS[value]
            continue
        if key not in fields:
            raise CodecError(f"train.{key} has no field in TrainHyper (known: {sorted(fields)})")
        if value is None and key in _NONE_AS_ZERO:
            value = 0
        _set_number(msg, f"train.{key}", key, value)
    return msg


def _train_from_pb(msg: rpb.TrainHyper) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.name == "optimizer":
            out["optimizer"] = _OPTIMIZER_NAMES.get(value, "adamw")
        else:
            out[field.name] = None if field.name in _NONE_AS_ZERO and value == 0 else value
    return out


# --- secure-aggregation parameters -----------------------------------------------------------------


def _secagg_to_pb(secagg: Mapping[str, Any]) -> rpb.SecAggSpec:
    msg = rpb.SecAggSpec()
    for key, value in secagg.items():
        if key == "site_noise":
            if value:
                for sub, v in dict(value).items():
                    _known(msg.site_noise, f"secagg.site_noise.{sub}", sub)
                    _set_number(msg.site_noise, f"secagg.site_noise.{sub}", sub, v)
            continue
        _known(msg, f"secagg.{key}", key)
        _set_number(msg, f"secagg.{key}", key, value)
    return msg


def _secagg_from_pb(msg: rpb.SecAggSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"weight_scale": msg.weight_scale, "min_contributors": msg.min_contributors}
    if msg.HasField("site_noise"):
        noise = msg.site_noise
        out["site_noise"] = {"sigma": noise.sigma, "clip": noise.clip, "sites": noise.sites}
    return out


def _known(msg: Message, what: str, key: str) -> None:
    if key not in msg.DESCRIPTOR.fields_by_name:
        raise CodecError(f"{what} has no field in {msg.DESCRIPTOR.name}")


def _set_number(msg: Message, what: str, key: str, value: Any) -> None:
    """Set a numeric field, refusing a bool, a non-number or a fraction where an integer belongs."""
    field = msg.DESCRIPTOR.fields_by_name[key]
    integral = field.cpp_type in (field.CPPTYPE_INT32, field.CPPTYPE_INT64)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"{what} must be a number, got {value!r}")
    if integral and not float(value).is_integer():
        raise CodecError(f"{what} must be an integer, got {value!r}")
    try:
        setattr(msg, key, int(value) if integral else float(value))
    except (ValueError, TypeError) as exc:  # out of the field's range
        raise CodecError(f"{what}: {exc}") from None
