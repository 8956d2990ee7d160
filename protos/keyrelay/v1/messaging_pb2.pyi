import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KemAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEM_ALGORITHM_UNSPECIFIED: _ClassVar[KemAlgorithm]
    KEM_ALGORITHM_X25519: _ClassVar[KemAlgorithm]
    KEM_ALGORITHM_MLKEM768_X25519: _ClassVar[KemAlgorithm]
KEM_ALGORITHM_UNSPECIFIED: KemAlgorithm
KEM_ALGORITHM_X25519: KemAlgorithm
KEM_ALGORITHM_MLKEM768_X25519: KemAlgorithm

class PublicKeyBundle(_message.Message):
    __slots__ = ("user_id", "bundle_version", "kem", "kem_public_key", "signing_public_key", "create_time")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEM_FIELD_NUMBER: _ClassVar[int]
    KEM_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    bundle_version: int
    kem: KemAlgorithm
    kem_public_key: bytes
    signing_public_key: bytes
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., bundle_version: _Optional[int] = ..., kem: _Optional[_Union[KemAlgorithm, str]] = ..., kem_public_key: _Optional[bytes] = ..., signing_public_key: _Optional[bytes] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EnvelopeBody(_message.Message):
    __slots__ = ("sender_user_id", "recipient_user_id", "message_id", "send_time", "sender_bundle_version", "recipient_bundle_version", "kem", "hpke_ciphertext")
    SENDER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_USER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SEND_TIME_FIELD_NUMBER: _ClassVar[int]
    SENDER_BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEM_FIELD_NUMBER: _ClassVar[int]
    HPKE_CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender_user_id: str
    recipient_user_id: str
    message_id: str
    send_time: _timestamp_pb2.Timestamp
    sender_bundle_version: int
    recipient_bundle_version: int
    kem: KemAlgorithm
    hpke_ciphertext: bytes
    def __init__(self, sender_user_id: _Optional[str] = ..., recipient_user_id: _Optional[str] = ..., message_id: _Optional[str] = ..., send_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sender_bundle_version: _Optional[int] = ..., recipient_bundle_version: _Optional[int] = ..., kem: _Optional[_Union[KemAlgorithm, str]] = ..., hpke_ciphertext: _Optional[bytes] = ...) -> None: ...

class SignedEnvelope(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
