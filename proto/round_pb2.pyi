from . import tensors_pb2 as _tensors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_ADAMW: _ClassVar[Optimizer]
    OPTIMIZER_SGD: _ClassVar[Optimizer]
    OPTIMIZER_GALORE_ADAMW: _ClassVar[Optimizer]
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_ADAMW: Optimizer
OPTIMIZER_SGD: Optimizer
OPTIMIZER_GALORE_ADAMW: Optimizer

class RoundSpec(_message.Message):
    __slots__ = ("round_id", "round", "rule", "params", "ranks", "shapes", "train", "nonce", "global_version", "secagg", "weights", "modules_to_save")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RuleParam
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RuleParam, _Mapping]] = ...) -> None: ...
    class RanksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ShapesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensors_pb2.Shape
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensors_pb2.Shape, _Mapping]] = ...) -> None: ...
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MODULES_TO_SAVE_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    round: int
    rule: str
    params: _containers.MessageMap[str, RuleParam]
    ranks: _containers.ScalarMap[str, int]
    shapes: _containers.MessageMap[str, _tensors_pb2.Shape]
    train: TrainHyper
    nonce: bytes
    global_version: str
    secagg: SecAggSpec
    weights: _containers.ScalarMap[str, int]
    modules_to_save: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round_id: _Optional[str] = ..., round: _Optional[int] = ..., rule: _Optional[str] = ..., params: _Optional[_Mapping[str, RuleParam]] = ..., ranks: _Optional[_Mapping[str, int]] = ..., shapes: _Optional[_Mapping[str, _tensors_pb2.Shape]] = ..., train: _Optional[_Union[TrainHyper, _Mapping]] = ..., nonce: _Optional[bytes] = ..., global_version: _Optional[str] = ..., secagg: _Optional[_Union[SecAggSpec, _Mapping]] = ..., weights: _Optional[_Mapping[str, int]] = ..., modules_to_save: _Optional[_Iterable[str]] = ...) -> None: ...

class RuleParam(_message.Message):
    __slots__ = ("flag", "integer", "number", "text")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    flag: bool
    integer: int
    number: float
    text: str
    def __init__(self, flag: _Optional[bool] = ..., integer: _Optional[int] = ..., number: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class TrainHyper(_message.Message):
    __slots__ = ("local_steps", "epochs", "batch_size", "lr", "weight_decay", "max_grad_norm", "optimizer", "galore_rank", "galore_update_proj_gap", "galore_scale", "eval_batches", "prox_mu")
    LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    GALORE_RANK_FIELD_NUMBER: _ClassVar[int]
    GALORE_UPDATE_PROJ_GAP_FIELD_NUMBER: _ClassVar[int]
    GALORE_SCALE_FIELD_NUMBER: _ClassVar[int]
    EVAL_BATCHES_FIELD_NUMBER: _ClassVar[int]
    PROX_MU_FIELD_NUMBER: _ClassVar[int]
    local_steps: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    max_grad_norm: float
    optimizer: Optimizer
    galore_rank: int
    galore_update_proj_gap: int
    galore_scale: float
    eval_batches: int
    prox_mu: float
    def __init__(self, local_steps: _Optional[int] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., galore_rank: _Optional[int] = ..., galore_update_proj_gap: _Optional[int] = ..., galore_scale: _Optional[float] = ..., eval_batches: _Optional[int] = ..., prox_mu: _Optional[float] = ...) -> None: ...

class SecAggSpec(_message.Message):
    __slots__ = ("weight_scale", "min_contributors", "site_noise")
    WEIGHT_SCALE_FIELD_NUMBER: _ClassVar[int]
    MIN_CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    SITE_NOISE_FIELD_NUMBER: _ClassVar[int]
    weight_scale: float
    min_contributors: int
    site_noise: SiteNoise
    def __init__(self, weight_scale: _Optional[float] = ..., min_contributors: _Optional[int] = ..., site_noise: _Optional[_Union[SiteNoise, _Mapping]] = ...) -> None: ...

class SiteNoise(_message.Message):
    __slots__ = ("sigma", "clip", "sites")
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    sigma: float
    clip: float
    sites: int
    def __init__(self, sigma: _Optional[float] = ..., clip: _Optional[float] = ..., sites: _Optional[int] = ...) -> None: ...

class TrainReport(_message.Message):
    __slots__ = ("num_samples", "loss_before", "loss_after", "eval_loss", "steps", "dp")
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LOSS_AFTER_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    num_samples: int
    loss_before: float
    loss_after: float
    eval_loss: float
    steps: int
    dp: DpReport
    def __init__(self, num_samples: _Optional[int] = ..., loss_before: _Optional[float] = ..., loss_after: _Optional[float] = ..., eval_loss: _Optional[float] = ..., steps: _Optional[int] = ..., dp: _Optional[_Union[DpReport, _Mapping]] = ...) -> None: ...

class DpReport(_message.Message):
    __slots__ = ("epsilon", "delta", "noise_multiplier", "max_grad_norm", "steps", "rounds", "mode", "round_steps", "sample_rate", "accountant")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ROUND_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    steps: int
    rounds: int
    mode: str
    round_steps: int
    sample_rate: float
    accountant: str
    def __init__(self, epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., steps: _Optional[int] = ..., rounds: _Optional[int] = ..., mode: _Optional[str] = ..., round_steps: _Optional[int] = ..., sample_rate: _Optional[float] = ..., accountant: _Optional[str] = ...) -> None: ...

class UnmaskReport(_message.Message):
    __slots__ = ("clipped",)
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    clipped: int
    def __init__(self, clipped: _Optional[int] = ...) -> None: ...
