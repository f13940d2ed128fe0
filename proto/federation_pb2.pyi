import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import round_pb2 as _round_pb2
from . import tensors_pb2 as _tensors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StepKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_KIND_UNSPECIFIED: _ClassVar[StepKind]
    IDLE: _ClassVar[StepKind]
    TRAIN: _ClassVar[StepKind]
    UPLOAD_PLAIN: _ClassVar[StepKind]
    SECAGG_ADVERTISE: _ClassVar[StepKind]
    SECAGG_SHARE: _ClassVar[StepKind]
    SECAGG_MASKED: _ClassVar[StepKind]
    SECAGG_UNMASK: _ClassVar[StepKind]
    ROUND_DONE: _ClassVar[StepKind]
    SHUTDOWN: _ClassVar[StepKind]
    DECLARE_LAYOUT: _ClassVar[StepKind]
    SECAGG_CONSISTENCY: _ClassVar[StepKind]

class FederationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEDERATION_STATE_UNSPECIFIED: _ClassVar[FederationState]
    FEDERATION_STATE_RUNNING: _ClassVar[FederationState]
    FEDERATION_STATE_PAUSED: _ClassVar[FederationState]
    FEDERATION_STATE_FINISHED: _ClassVar[FederationState]

class RoundStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_STAGE_UNSPECIFIED: _ClassVar[RoundStage]
    ROUND_STAGE_TRAINING: _ClassVar[RoundStage]
    ROUND_STAGE_PHASE: _ClassVar[RoundStage]
    ROUND_STAGE_DONE: _ClassVar[RoundStage]

class SiteProgress(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SITE_PROGRESS_UNSPECIFIED: _ClassVar[SiteProgress]
    SITE_PROGRESS_TRAINING: _ClassVar[SiteProgress]
    SITE_PROGRESS_TRAINED: _ClassVar[SiteProgress]
    SITE_PROGRESS_WAITING: _ClassVar[SiteProgress]
    SITE_PROGRESS_SENT: _ClassVar[SiteProgress]
    SITE_PROGRESS_DROPPED: _ClassVar[SiteProgress]
STEP_KIND_UNSPECIFIED: StepKind
IDLE: StepKind
TRAIN: StepKind
UPLOAD_PLAIN: StepKind
SECAGG_ADVERTISE: StepKind
SECAGG_SHARE: StepKind
SECAGG_MASKED: StepKind
SECAGG_UNMASK: StepKind
ROUND_DONE: StepKind
SHUTDOWN: StepKind
DECLARE_LAYOUT: StepKind
SECAGG_CONSISTENCY: StepKind
FEDERATION_STATE_UNSPECIFIED: FederationState
FEDERATION_STATE_RUNNING: FederationState
FEDERATION_STATE_PAUSED: FederationState
FEDERATION_STATE_FINISHED: FederationState
ROUND_STAGE_UNSPECIFIED: RoundStage
ROUND_STAGE_TRAINING: RoundStage
ROUND_STAGE_PHASE: RoundStage
ROUND_STAGE_DONE: RoundStage
SITE_PROGRESS_UNSPECIFIED: SiteProgress
SITE_PROGRESS_TRAINING: SiteProgress
SITE_PROGRESS_TRAINED: SiteProgress
SITE_PROGRESS_WAITING: SiteProgress
SITE_PROGRESS_SENT: SiteProgress
SITE_PROGRESS_DROPPED: SiteProgress

class HelloRequest(_message.Message):
    __slots__ = ("agent_version", "base_fingerprint", "num_samples", "lora_rank", "lora_alpha", "task", "target_shapes")
    class TargetShapesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensors_pb2.Shape
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensors_pb2.Shape, _Mapping]] = ...) -> None: ...
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TARGET_SHAPES_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    base_fingerprint: str
    num_samples: int
    lora_rank: int
    lora_alpha: float
    task: str
    target_shapes: _containers.MessageMap[str, _tensors_pb2.Shape]
    def __init__(self, agent_version: _Optional[str] = ..., base_fingerprint: _Optional[str] = ..., num_samples: _Optional[int] = ..., lora_rank: _Optional[int] = ..., lora_alpha: _Optional[float] = ..., task: _Optional[str] = ..., target_shapes: _Optional[_Mapping[str, _tensors_pb2.Shape]] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("site_id", "federation", "base_fingerprint", "rule", "last_step", "max_chunk_bytes")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    BASE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    federation: str
    base_fingerprint: str
    rule: str
    last_step: int
    max_chunk_bytes: int
    def __init__(self, site_id: _Optional[str] = ..., federation: _Optional[str] = ..., base_fingerprint: _Optional[str] = ..., rule: _Optional[str] = ..., last_step: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("after_step", "wait_seconds")
    AFTER_STEP_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    after_step: int
    wait_seconds: float
    def __init__(self, after_step: _Optional[int] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("step", "kind", "round_id", "phase", "payload", "message", "spec")
    STEP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    step: int
    kind: StepKind
    round_id: str
    phase: int
    payload: bytes
    message: str
    spec: _round_pb2.RoundSpec
    def __init__(self, step: _Optional[int] = ..., kind: _Optional[_Union[StepKind, str]] = ..., round_id: _Optional[str] = ..., phase: _Optional[int] = ..., payload: _Optional[bytes] = ..., message: _Optional[str] = ..., spec: _Optional[_Union[_round_pb2.RoundSpec, _Mapping]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("what", "round_id", "phase")
    class What(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WHAT_UNSPECIFIED: _ClassVar[DownloadRequest.What]
        GLOBAL: _ClassVar[DownloadRequest.What]
        BROADCAST: _ClassVar[DownloadRequest.What]
        CRL: _ClassVar[DownloadRequest.What]
    WHAT_UNSPECIFIED: DownloadRequest.What
    GLOBAL: DownloadRequest.What
    BROADCAST: DownloadRequest.What
    CRL: DownloadRequest.What
    WHAT_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    what: DownloadRequest.What
    round_id: str
    phase: int
    def __init__(self, what: _Optional[_Union[DownloadRequest.What, str]] = ..., round_id: _Optional[str] = ..., phase: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("round_id", "step", "phase", "encoding", "layout", "total_bytes")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    step: int
    phase: int
    encoding: _tensors_pb2.Encoding
    layout: _containers.RepeatedCompositeFieldContainer[_tensors_pb2.NamedShape]
    total_bytes: int
    def __init__(self, round_id: _Optional[str] = ..., step: _Optional[int] = ..., phase: _Optional[int] = ..., encoding: _Optional[_Union[_tensors_pb2.Encoding, str]] = ..., layout: _Optional[_Iterable[_Union[_tensors_pb2.NamedShape, _Mapping]]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data", "sha256")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    sha256: str
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("round_id", "step", "kind", "payload", "refusal", "train", "unmask")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    step: int
    kind: StepKind
    payload: bytes
    refusal: str
    train: _round_pb2.TrainReport
    unmask: _round_pb2.UnmaskReport
    def __init__(self, round_id: _Optional[str] = ..., step: _Optional[int] = ..., kind: _Optional[_Union[StepKind, str]] = ..., payload: _Optional[bytes] = ..., refusal: _Optional[str] = ..., train: _Optional[_Union[_round_pb2.TrainReport, _Mapping]] = ..., unmask: _Optional[_Union[_round_pb2.UnmaskReport, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("accepted", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    message: str
    def __init__(self, accepted: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("model", "version", "round", "rule", "tags", "published_at", "epsilon", "round_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    round: int
    rule: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    published_at: _timestamp_pb2.Timestamp
    epsilon: float
    round_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., round: _Optional[int] = ..., rule: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., epsilon: _Optional[float] = ..., round_id: _Optional[str] = ...) -> None: ...

class VersionList(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("path", "data", "offset", "file_size", "sha256", "version")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    data: bytes
    offset: int
    file_size: int
    sha256: str
    version: str
    def __init__(self, path: _Optional[str] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ..., file_size: _Optional[int] = ..., sha256: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: FederationStatus
    def __init__(self, status: _Optional[_Union[FederationStatus, _Mapping]] = ...) -> None: ...

class FederationStatus(_message.Message):
    __slots__ = ("generated_at", "federation", "model", "rule", "secure_aggregation", "running", "state", "rounds_done", "rounds_planned", "global_version", "current_round", "sites", "history")
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_PLANNED_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    generated_at: _timestamp_pb2.Timestamp
    federation: str
    model: str
    rule: str
    secure_aggregation: bool
    running: bool
    state: FederationState
    rounds_done: int
    rounds_planned: int
    global_version: str
    current_round: CurrentRound
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    history: _containers.RepeatedCompositeFieldContainer[RoundOutcome]
    def __init__(self, generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., federation: _Optional[str] = ..., model: _Optional[str] = ..., rule: _Optional[str] = ..., secure_aggregation: _Optional[bool] = ..., running: _Optional[bool] = ..., state: _Optional[_Union[FederationState, str]] = ..., rounds_done: _Optional[int] = ..., rounds_planned: _Optional[int] = ..., global_version: _Optional[str] = ..., current_round: _Optional[_Union[CurrentRound, _Mapping]] = ..., sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[RoundOutcome, _Mapping]]] = ...) -> None: ...

class CurrentRound(_message.Message):
    __slots__ = ("round", "round_id", "stage", "phase", "cohort", "participants", "progress", "deadline", "secure_sum_step")
    class ProgressEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SiteProgress
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SiteProgress, str]] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    SECURE_SUM_STEP_FIELD_NUMBER: _ClassVar[int]
    round: int
    round_id: str
    stage: RoundStage
    phase: int
    cohort: _containers.RepeatedScalarFieldContainer[str]
    participants: _containers.RepeatedScalarFieldContainer[str]
    progress: _containers.ScalarMap[str, SiteProgress]
    deadline: _timestamp_pb2.Timestamp
    secure_sum_step: StepKind
    def __init__(self, round: _Optional[int] = ..., round_id: _Optional[str] = ..., stage: _Optional[_Union[RoundStage, str]] = ..., phase: _Optional[int] = ..., cohort: _Optional[_Iterable[str]] = ..., participants: _Optional[_Iterable[str]] = ..., progress: _Optional[_Mapping[str, SiteProgress]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., secure_sum_step: _Optional[_Union[StepKind, str]] = ...) -> None: ...

class RoundOutcome(_message.Message):
    __slots__ = ("round", "version", "round_id", "published_at", "contributors", "dropouts", "seconds", "loss_before", "loss_after", "eval_loss", "epsilon", "clipped", "site_noise_sigmas", "discarded", "interrupted")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    DROPOUTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOSS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LOSS_AFTER_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    SITE_NOISE_SIGMAS_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    round: int
    version: str
    round_id: str
    published_at: _timestamp_pb2.Timestamp
    contributors: int
    dropouts: int
    seconds: float
    loss_before: float
    loss_after: float
    eval_loss: float
    epsilon: float
    clipped: int
    site_noise_sigmas: _containers.RepeatedScalarFieldContainer[float]
    discarded: str
    interrupted: bool
    def __init__(self, round: _Optional[int] = ..., version: _Optional[str] = ..., round_id: _Optional[str] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., contributors: _Optional[int] = ..., dropouts: _Optional[int] = ..., seconds: _Optional[float] = ..., loss_before: _Optional[float] = ..., loss_after: _Optional[float] = ..., eval_loss: _Optional[float] = ..., epsilon: _Optional[float] = ..., clipped: _Optional[int] = ..., site_noise_sigmas: _Optional[_Iterable[float]] = ..., discarded: _Optional[str] = ..., interrupted: _Optional[bool] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("site_id", "online", "num_samples", "lora_rank", "last_seen_at")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    online: bool
    num_samples: int
    lora_rank: int
    last_seen_at: _timestamp_pb2.Timestamp
    def __init__(self, site_id: _Optional[str] = ..., online: _Optional[bool] = ..., num_samples: _Optional[int] = ..., lora_rank: _Optional[int] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SiteList(_message.Message):
    __slots__ = ("sites",)
    SITES_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ...) -> None: ...

class FederationStateRequest(_message.Message):
    __slots__ = ("running",)
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    running: bool
    def __init__(self, running: _Optional[bool] = ...) -> None: ...
