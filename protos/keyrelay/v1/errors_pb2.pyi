from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_ARGUMENT: _ClassVar[ErrorReason]
    ERROR_REASON_PAYLOAD_TOO_LARGE: _ClassVar[ErrorReason]
    ERROR_REASON_BATCH_TOO_LARGE: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_ENCRYPTION_CONTEXT: _ClassVar[ErrorReason]
    ERROR_REASON_MALFORMED_CIPHERTEXT: _ClassVar[ErrorReason]
    ERROR_REASON_CIPHERTEXT_AUTHENTICATION_FAILED: _ClassVar[ErrorReason]
    ERROR_REASON_SEALED_RECORD_MISMATCH: _ClassVar[ErrorReason]
    ERROR_REASON_KEY_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_ALIAS_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_ALIAS_EXISTS: _ClassVar[ErrorReason]
    ERROR_REASON_KEY_EXISTS: _ClassVar[ErrorReason]
    ERROR_REASON_KEY_DISABLED: _ClassVar[ErrorReason]
    ERROR_REASON_KEY_PENDING_DELETION: _ClassVar[ErrorReason]
    ERROR_REASON_KEY_VERSION_RETIRED: _ClassVar[ErrorReason]
    ERROR_REASON_KEY_STATE_CONFLICT: _ClassVar[ErrorReason]
    ERROR_REASON_PERMISSION_DENIED: _ClassVar[ErrorReason]
    ERROR_REASON_NETWORK_NOT_ALLOWED: _ClassVar[ErrorReason]
    ERROR_REASON_PRIVATE_ENDPOINT_REQUIRED: _ClassVar[ErrorReason]
    ERROR_REASON_UNAUTHENTICATED: _ClassVar[ErrorReason]
    ERROR_REASON_CREDENTIAL_REVOKED: _ClassVar[ErrorReason]
    ERROR_REASON_CREDENTIAL_EXPIRED: _ClassVar[ErrorReason]
    ERROR_REASON_CREDENTIAL_LIMIT_REACHED: _ClassVar[ErrorReason]
    ERROR_REASON_RATE_LIMITED: _ClassVar[ErrorReason]
    ERROR_REASON_MAILBOX_FULL: _ClassVar[ErrorReason]
    ERROR_REASON_INSTANCE_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_ACCESS_POINT_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_CREDENTIAL_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_USER_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_ACCOUNT_EXISTS: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_USER_ID: _ClassVar[ErrorReason]
    ERROR_REASON_RECORD_VERSION_NOT_NEWER: _ClassVar[ErrorReason]
    ERROR_REASON_ENVELOPE_TOO_LARGE: _ClassVar[ErrorReason]
    ERROR_REASON_NODE_NOT_READY: _ClassVar[ErrorReason]
    ERROR_REASON_HSM_UNAVAILABLE: _ClassVar[ErrorReason]
    ERROR_REASON_UPSTREAM_UNAVAILABLE: _ClassVar[ErrorReason]
    ERROR_REASON_INTERNAL: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_INVALID_ARGUMENT: ErrorReason
ERROR_REASON_PAYLOAD_TOO_LARGE: ErrorReason
ERROR_REASON_BATCH_TOO_LARGE: ErrorReason
ERROR_REASON_INVALID_ENCRYPTION_CONTEXT: ErrorReason
ERROR_REASON_MALFORMED_CIPHERTEXT: ErrorReason
ERROR_REASON_CIPHERTEXT_AUTHENTICATION_FAILED: ErrorReason
ERROR_REASON_SEALED_RECORD_MISMATCH: ErrorReason
ERROR_REASON_KEY_NOT_FOUND: ErrorReason
ERROR_REASON_ALIAS_NOT_FOUND: ErrorReason
ERROR_REASON_ALIAS_EXISTS: ErrorReason
ERROR_REASON_KEY_EXISTS: ErrorReason
ERROR_REASON_KEY_DISABLED: ErrorReason
ERROR_REASON_KEY_PENDING_DELETION: ErrorReason
ERROR_REASON_KEY_VERSION_RETIRED: ErrorReason
ERROR_REASON_KEY_STATE_CONFLICT: ErrorReason
ERROR_REASON_PERMISSION_DENIED: ErrorReason
ERROR_REASON_NETWORK_NOT_ALLOWED: ErrorReason
ERROR_REASON_PRIVATE_ENDPOINT_REQUIRED: ErrorReason
ERROR_REASON_UNAUTHENTICATED: ErrorReason
ERROR_REASON_CREDENTIAL_REVOKED: ErrorReason
ERROR_REASON_CREDENTIAL_EXPIRED: ErrorReason
ERROR_REASON_CREDENTIAL_LIMIT_REACHED: ErrorReason
ERROR_REASON_RATE_LIMITED: ErrorReason
ERROR_REASON_MAILBOX_FULL: ErrorReason
ERROR_REASON_INSTANCE_NOT_FOUND: ErrorReason
ERROR_REASON_ACCESS_POINT_NOT_FOUND: ErrorReason
ERROR_REASON_CREDENTIAL_NOT_FOUND: ErrorReason
ERROR_REASON_USER_NOT_FOUND: ErrorReason
ERROR_REASON_ACCOUNT_EXISTS: ErrorReason
ERROR_REASON_INVALID_USER_ID: ErrorReason
ERROR_REASON_RECORD_VERSION_NOT_NEWER: ErrorReason
ERROR_REASON_ENVELOPE_TOO_LARGE: ErrorReason
ERROR_REASON_NODE_NOT_READY: ErrorReason
ERROR_REASON_HSM_UNAVAILABLE: ErrorReason
ERROR_REASON_UPSTREAM_UNAVAILABLE: ErrorReason
ERROR_REASON_INTERNAL: ErrorReason

class ItemError(_message.Message):
    __slots__ = ("code", "reason", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    message: str
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
