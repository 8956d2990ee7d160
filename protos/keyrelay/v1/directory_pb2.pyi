import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from keyrelay.v1 import kms_pb2 as _kms_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DirectoryRecord(_message.Message):
    __slots__ = ("user_id", "record_version", "sealed", "kms_key_id", "publish_time")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    KMS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    record_version: int
    sealed: _kms_pb2.SealedPublicKey
    kms_key_id: str
    publish_time: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., record_version: _Optional[int] = ..., sealed: _Optional[_Union[_kms_pb2.SealedPublicKey, _Mapping]] = ..., kms_key_id: _Optional[str] = ..., publish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PublishRecordRequest(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: DirectoryRecord
    def __init__(self, record: _Optional[_Union[DirectoryRecord, _Mapping]] = ...) -> None: ...

class PublishRecordResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: DirectoryRecord
    def __init__(self, record: _Optional[_Union[DirectoryRecord, _Mapping]] = ...) -> None: ...

class GetRecordRequest(_message.Message):
    __slots__ = ("user_id", "record_version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    record_version: int
    def __init__(self, user_id: _Optional[str] = ..., record_version: _Optional[int] = ...) -> None: ...

class GetRecordResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: DirectoryRecord
    def __init__(self, record: _Optional[_Union[DirectoryRecord, _Mapping]] = ...) -> None: ...
