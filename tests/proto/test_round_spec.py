"""The round spec travels typed (round.proto): every value round-trips with its type, nothing is dropped silently."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquilt.contract import TrainHyper
from fedquilt.proto import round_pb2 as rpb
from fedquilt.proto.codec import CodecError
from fedquilt.proto.round_spec import RoundSpec, decode_spec, encode_spec
from fedquilt.strategies import registry

FULL = RoundSpec(
    round_id="r0003-0a1b2c3d", round=3, rule="secure-stack",
    params={"oversampling": 12, "rtol": 1e-6, "rslora": True, "publish_rank": None, "label": "x"},
    ranks={"site-0": 4, "site-1": 8}, shapes={"q": (16, 8), "v": (16, 16)},
    train={"local_steps": 50, "batch_size": 8, "lr": 3e-4, "eval_batches": None, "max_grad_norm": None,
           "optimizer": "galore-adamw", "prox_mu": 0.01},
    nonce="0a1b2c3d" * 4, global_version="v0002",
    secagg={"weight_scale": 20.0, "min_contributors": 2, "site_noise": {"sigma": 0.8, "clip": 1.5, "sites": 2}},
    weights={"site-0": 10, "site-1": 10}, modules_to_save=["classifier"])


def _wire(spec: RoundSpec) -> rpb.RoundSpec:
    """Encode and send through bytes, as the wire does."""
    return rpb.RoundSpec.FromString(encode_spec(spec).SerializeToString())


def test_a_full_spec_round_trips_with_its_types() -> None:
    back = decode_spec(_wire(FULL))
    assert back == FULL
    assert type(back.params["oversampling"]) is int and type(back.params["rtol"]) is float  # not Struct doubles
    assert back.params["rslora"] is True and back.params["publish_rank"] is None
    assert back.train["eval_batches"] is None and back.train["max_grad_norm"] is None  # None survives (as 0)


def test_a_plaintext_spec_with_an_empty_train_round_trips_without_defaults_added() -> None:
    spec = RoundSpec(round_id="r0001-00000000", round=1, rule="fedit", ranks={"s": 4}, shapes={"m": (8, 4)},
                     nonce="00" * 16)
    back = decode_spec(_wire(spec))
    assert back == spec and back.train == {} and back.secagg is None and back.global_version is None


def test_the_wire_message_is_typed_for_other_languages() -> None:
    msg = _wire(FULL)
    assert msg.train.local_steps == 50 and msg.train.optimizer == rpb.OPTIMIZER_GALORE_ADAMW
    assert not msg.train.HasField("epochs") and msg.train.eval_batches == 0
    assert msg.params["oversampling"].WhichOneof("value") == "integer"
    assert msg.params["rtol"].WhichOneof("value") == "number"
    assert msg.params["publish_rank"].WhichOneof("value") is None
    assert (msg.secagg.site_noise.sites, msg.secagg.min_contributors) == (2, 2)
    assert list(msg.shapes["q"].dims) == [16, 8] and msg.nonce == bytes.fromhex("0a1b2c3d" * 4)


@pytest.mark.parametrize("change, message", [
    ({"train": {"local_step": 5}}, "train.local_step has no field"),
    ({"train": {"local_steps": 2.5}}, "train.local_steps must be an integer"),
    ({"train": {"optimizer": "adam"}}, "train.optimizer must be one of"),
    ({"train": {"lr": "fast"}}, "train.lr must be a number"),
    ({"params": {"ranks": [1, 2]}}, "rule parameter 'ranks' must be"),
    ({"secagg": {"weight_scale": 1.0, "threshold": 3}}, "secagg.threshold has no field"),
    ({"secagg": {"site_noise": {"sigma": 1.0, "delta": 1e-5}}}, "secagg.site_noise.delta has no field"),
    ({"nonce": "not hex"}, "nonce must be hex"),
])
def test_a_value_the_wire_cannot_carry_is_refused_by_name(change: dict[str, typing.Any], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode_spec(FULL.model_copy(update=change))


def test_a_malformed_spec_message_is_a_codec_error() -> None:
    msg = _wire(FULL)
    msg.shapes["q"].dims.append(3)
    with pytest.raises(CodecError, match=r"shapes must be \(d, k\)"):
        decode_spec(msg)
    msg = _wire(FULL)
    msg.round = 0
    with pytest.raises(CodecError, match="malformed round spec"):
        decode_spec(msg)


def test_every_train_hyper_parameter_has_a_wire_field() -> None:
    """A new TrainHyper field without a TrainHyper message field would be refused at the first round."""
    assert set(TrainHyper.model_fields) == {f.name for f in rpb.TrainHyper.DESCRIPTOR.fields}


def test_every_rule_parameter_type_has_a_wire_value() -> None:
    """Every declared rule parameter is a bool, an integer, a real, a string or None: a RuleParam carries it."""
    carried = {bool, int, float, str, type(None)}
    for rule, cls in {name: entry.params for name, entry in registry.RULES.items()}.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = set(typing.get_args(hints[f.name])) or {hints[f.name]}
            assert kinds <= carried, (rule, f.name, hints[f.name])
            encode_spec(FULL.model_copy(update={"params": {f.name: f.default}}))  # the default itself encodes


_names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=12)
_param = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)


@settings(max_examples=200, deadline=None)
@given(params=st.dictionaries(_names, _param, max_size=6),
       ranks=st.dictionaries(_names, st.integers(1, 2**31 - 1), min_size=1, max_size=5),
       shapes=st.dictionaries(_names, st.tuples(st.integers(1, 2**20), st.integers(1, 2**20)), min_size=1, max_size=4),
       weights=st.dictionaries(_names, st.integers(0, 2**62), max_size=5),
       nonce=st.binary(min_size=16, max_size=16), version=st.none() | st.just("v0007"),
       local_steps=st.none() | st.integers(1, 2**31 - 1), lr=st.floats(1e-9, 10.0))
def test_any_spec_round_trips(params: dict[str, typing.Any], ranks: dict[str, int],
                              shapes: dict[str, tuple[int, int]], weights: dict[str, int], nonce: bytes,
                              version: str | None, local_steps: int | None, lr: float) -> None:
    train = {"lr": lr, **({"local_steps": local_steps} if local_steps else {})}
    spec = RoundSpec(round_id="r0001-x", round=1, rule="fedit", params=params, ranks=ranks, shapes=shapes,
                     train=train, nonce=nonce.hex(), global_version=version, weights=weights)
    back = decode_spec(_wire(spec))
    assert back == spec
    assert {k: type(v) for k, v in back.params.items()} == {k: type(v) for k, v in params.items()}
