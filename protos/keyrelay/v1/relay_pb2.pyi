import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateAccountRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class CreateAccountResponse(_message.Message):
    __slots__ = ("user_id", "device_token", "device_token_expire_time")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TOKEN_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_token: str
    device_token_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., device_token: _Optional[str] = ..., device_token_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RotateDeviceTokenRequest(_message.Message):
    __slots__ = ("revoke_previous",)
    REVOKE_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    revoke_previous: bool
    def __init__(self, revoke_previous: _Optional[bool] = ...) -> None: ...

class RotateDeviceTokenResponse(_message.Message):
    __slots__ = ("device_token", "device_token_expire_time", "previous_token_expire_time")
    DEVICE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TOKEN_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TOKEN_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    device_token: str
    device_token_expire_time: _timestamp_pb2.Timestamp
    previous_token_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, device_token: _Optional[str] = ..., device_token_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_token_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RevokeDeviceTokenRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class RevokeDeviceTokenResponse(_message.Message):
    __slots__ = ("revoked_count",)
    REVOKED_COUNT_FIELD_NUMBER: _ClassVar[int]
    revoked_count: int
    def __init__(self, revoked_count: _Optional[int] = ...) -> None: ...

class RelayMessage(_message.Message):
    __slots__ = ("message_id", "sender_user_id", "recipient_user_id", "envelope", "client_message_id", "store_time", "expire_time")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_USER_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    sender_user_id: str
    recipient_user_id: str
    envelope: bytes
    client_message_id: str
    store_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., sender_user_id: _Optional[str] = ..., recipient_user_id: _Optional[str] = ..., envelope: _Optional[bytes] = ..., client_message_id: _Optional[str] = ..., store_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("recipient_user_id", "envelope", "client_message_id")
    RECIPIENT_USER_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    recipient_user_id: str
    envelope: bytes
    client_message_id: str
    def __init__(self, recipient_user_id: _Optional[str] = ..., envelope: _Optional[bytes] = ..., client_message_id: _Optional[str] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("message_id", "store_time", "duplicate")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_TIME_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    store_time: _timestamp_pb2.Timestamp
    duplicate: bool
    def __init__(self, message_id: _Optional[str] = ..., store_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: RelayMessage
    def __init__(self, message: _Optional[_Union[RelayMessage, _Mapping]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("deleted_count",)
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    def __init__(self, deleted_count: _Optional[int] = ...) -> None: ...
