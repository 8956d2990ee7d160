import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from keyrelay.v1 import admin_pb2 as _admin_pb2
from keyrelay.v1 import kms_pb2 as _kms_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyRecord(_message.Message):
    __slots__ = ("key_id", "tenant_id", "instance_id", "state", "aliases", "revision", "update_time", "create_time")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    tenant_id: str
    instance_id: str
    state: _kms_pb2.KeyState
    aliases: _containers.RepeatedScalarFieldContainer[str]
    revision: int
    update_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., state: _Optional[_Union[_kms_pb2.KeyState, str]] = ..., aliases: _Optional[_Iterable[str]] = ..., revision: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ResolveKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "key_ref")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_REF_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    key_ref: str
    def __init__(self, tenant_id: _Optional[str] = ..., key_ref: _Optional[str] = ...) -> None: ...

class ResolveKeyResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: KeyRecord
    def __init__(self, record: _Optional[_Union[KeyRecord, _Mapping]] = ...) -> None: ...

class ReserveKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "instance_id", "alias", "request_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    instance_id: str
    alias: str
    request_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., alias: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ReserveKeyResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: KeyRecord
    def __init__(self, record: _Optional[_Union[KeyRecord, _Mapping]] = ...) -> None: ...

class CommitKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class CommitKeyResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: KeyRecord
    def __init__(self, record: _Optional[_Union[KeyRecord, _Mapping]] = ...) -> None: ...

class AbortKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class AbortKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateKeyRecordRequest(_message.Message):
    __slots__ = ("key_id", "state", "aliases", "expected_revision")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    state: _kms_pb2.KeyState
    aliases: _containers.RepeatedScalarFieldContainer[str]
    expected_revision: int
    def __init__(self, key_id: _Optional[str] = ..., state: _Optional[_Union[_kms_pb2.KeyState, str]] = ..., aliases: _Optional[_Iterable[str]] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class UpdateKeyRecordResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: KeyRecord
    def __init__(self, record: _Optional[_Union[KeyRecord, _Mapping]] = ...) -> None: ...

class ResolveInstanceRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class ResolveInstanceResponse(_message.Message):
    __slots__ = ("instance",)
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    instance: _admin_pb2.Instance
    def __init__(self, instance: _Optional[_Union[_admin_pb2.Instance, _Mapping]] = ...) -> None: ...

class AuthenticateCredentialRequest(_message.Message):
    __slots__ = ("serial", "fingerprint_sha256")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    serial: str
    fingerprint_sha256: str
    def __init__(self, serial: _Optional[str] = ..., fingerprint_sha256: _Optional[str] = ...) -> None: ...

class AuthenticateCredentialResponse(_message.Message):
    __slots__ = ("credential", "access_point")
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    ACCESS_POINT_FIELD_NUMBER: _ClassVar[int]
    credential: _admin_pb2.Credential
    access_point: _admin_pb2.AccessPoint
    def __init__(self, credential: _Optional[_Union[_admin_pb2.Credential, _Mapping]] = ..., access_point: _Optional[_Union[_admin_pb2.AccessPoint, _Mapping]] = ...) -> None: ...
