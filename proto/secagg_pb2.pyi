from . import tensors_pb2 as _tensors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecAggParamsMsg(_message.Message):
    __slots__ = ("threshold", "clip", "max_sites", "degree", "ring_bits", "frac_bits", "share_threshold")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    MAX_SITES_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    FRAC_BITS_FIELD_NUMBER: _ClassVar[int]
    SHARE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    threshold: int
    clip: float
    max_sites: int
    degree: int
    ring_bits: int
    frac_bits: int
    share_threshold: int
    def __init__(self, threshold: _Optional[int] = ..., clip: _Optional[float] = ..., max_sites: _Optional[int] = ..., degree: _Optional[int] = ..., ring_bits: _Optional[int] = ..., frac_bits: _Optional[int] = ..., share_threshold: _Optional[int] = ...) -> None: ...

class AnnounceMsg(_message.Message):
    __slots__ = ("nonce", "cohort", "params", "layout")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    cohort: _containers.RepeatedScalarFieldContainer[str]
    params: SecAggParamsMsg
    layout: _containers.RepeatedCompositeFieldContainer[_tensors_pb2.NamedShape]
    def __init__(self, nonce: _Optional[bytes] = ..., cohort: _Optional[_Iterable[str]] = ..., params: _Optional[_Union[SecAggParamsMsg, _Mapping]] = ..., layout: _Optional[_Iterable[_Union[_tensors_pb2.NamedShape, _Mapping]]] = ...) -> None: ...

class KeyAdvertisementMsg(_message.Message):
    __slots__ = ("nonce", "site", "c_pk", "s_pk", "cert_pem", "signature")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    C_PK_FIELD_NUMBER: _ClassVar[int]
    S_PK_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    site: str
    c_pk: bytes
    s_pk: bytes
    cert_pem: bytes
    signature: bytes
    def __init__(self, nonce: _Optional[bytes] = ..., site: _Optional[str] = ..., c_pk: _Optional[bytes] = ..., s_pk: _Optional[bytes] = ..., cert_pem: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AdvertisementsRelayMsg(_message.Message):
    __slots__ = ("nonce", "advertisements")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ADVERTISEMENTS_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    advertisements: _containers.RepeatedCompositeFieldContainer[KeyAdvertisementMsg]
    def __init__(self, nonce: _Optional[bytes] = ..., advertisements: _Optional[_Iterable[_Union[KeyAdvertisementMsg, _Mapping]]] = ...) -> None: ...

class EncryptedShareMsg(_message.Message):
    __slots__ = ("sender", "receiver", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    receiver: str
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., receiver: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class EncryptedSharesMsg(_message.Message):
    __slots__ = ("session_id", "sender", "shares")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: str
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShareMsg]
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[EncryptedShareMsg, _Mapping]]] = ...) -> None: ...

class SharesRelayMsg(_message.Message):
    __slots__ = ("session_id", "receiver", "participants", "shares")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    receiver: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShareMsg]
    def __init__(self, session_id: _Optional[bytes] = ..., receiver: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., shares: _Optional[_Iterable[_Union[EncryptedShareMsg, _Mapping]]] = ...) -> None: ...

class ConsistencyRequestMsg(_message.Message):
    __slots__ = ("session_id", "survivors", "dropped")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[bytes] = ..., survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ...) -> None: ...

class ConsistencySignatureMsg(_message.Message):
    __slots__ = ("session_id", "sender", "signature")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: str
    signature: bytes
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SignerSignature(_message.Message):
    __slots__ = ("signer", "signature")
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signer: str
    signature: bytes
    def __init__(self, signer: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequestMsg(_message.Message):
    __slots__ = ("session_id", "survivors", "dropped", "signatures")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    signatures: _containers.RepeatedCompositeFieldContainer[SignerSignature]
    def __init__(self, session_id: _Optional[bytes] = ..., survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., signatures: _Optional[_Iterable[_Union[SignerSignature, _Mapping]]] = ...) -> None: ...

class OwnedShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    share: bytes
    def __init__(self, owner: _Optional[str] = ..., share: _Optional[bytes] = ...) -> None: ...

class RevealedSharesMsg(_message.Message):
    __slots__ = ("session_id", "sender", "self_mask_shares", "mask_key_shares")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    sender: str
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[OwnedShare]
    mask_key_shares: _containers.RepeatedCompositeFieldContainer[OwnedShare]
    def __init__(self, session_id: _Optional[bytes] = ..., sender: _Optional[str] = ..., self_mask_shares: _Optional[_Iterable[_Union[OwnedShare, _Mapping]]] = ..., mask_key_shares: _Optional[_Iterable[_Union[OwnedShare, _Mapping]]] = ...) -> None: ...

class LayoutDeclaration(_message.Message):
    __slots__ = ("layout",)
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    layout: _containers.RepeatedCompositeFieldContainer[_tensors_pb2.NamedShape]
    def __init__(self, layout: _Optional[_Iterable[_Union[_tensors_pb2.NamedShape, _Mapping]]] = ...) -> None: ...
