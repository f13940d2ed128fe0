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
    __slots__ = ("step", "kind", "round_id", "phase", "spec_json", "payload", "message")
    STEP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    step: int
    kind: StepKind
    round_id: str
    phase: int
    spec_json: str
    payload: bytes
    message: str
    def __init__(self, step: _Optional[int] = ..., kind: _Optional[_Union[StepKind, str]] = ..., round_id: _Optional[str] = ..., phase: _Optional[int] = ..., spec_json: _Optional[str] = ..., payload: _Optional[bytes] = ..., message: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("round_id", "step", "kind", "payload", "metrics_json", "refusal")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    step: int
    kind: StepKind
    payload: bytes
    metrics_json: str
    refusal: str
    def __init__(self, round_id: _Optional[str] = ..., step: _Optional[int] = ..., kind: _Optional[_Union[StepKind, str]] = ..., payload: _Optional[bytes] = ..., metrics_json: _Optional[str] = ..., refusal: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("model", "version", "round", "rule", "created", "tags")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    round: int
    rule: str
    created: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., round: _Optional[int] = ..., rule: _Optional[str] = ..., created: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("site_id", "online", "num_samples", "lora_rank", "last_seen")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    online: bool
    num_samples: int
    lora_rank: int
    last_seen: str
    def __init__(self, site_id: _Optional[str] = ..., online: _Optional[bool] = ..., num_samples: _Optional[int] = ..., lora_rank: _Optional[int] = ..., last_seen: _Optional[str] = ...) -> None: ...

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
