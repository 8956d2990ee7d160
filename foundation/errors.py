"""The one exception hierarchy of keyrelay.

Every error a keyrelay server answers with, and every error the SDK raises, is one of these
classes. Each class carries the gRPC status code it travels as and a *reason* (the
`keyrelay.v1.ErrorReason` value name without its prefix) that travels in the trailing metadata
`keyrelay-error-reason`, so that a client maps a status back to the very class the server raised::

    KeyrelayError
    ├── InvalidArgumentError            INVALID_ARGUMENT
    │   ├── PayloadTooLargeError
    │   │   └── EnvelopeTooLargeError
    │   ├── BatchTooLargeError
    │   ├── InvalidEncryptionContextError
    │   ├── MalformedCiphertextError
    │   ├── CiphertextAuthenticationError
    │   ├── SealedRecordMismatchError
    │   ├── InvalidUserIdError
    │   ├── MalformedRequestError
    │   └── InvalidPageTokenError
    ├── NotFoundError                   NOT_FOUND
    │   ├── KeyNotFoundError
    │   ├── AliasNotFoundError
    │   ├── InstanceNotFoundError
    │   ├── AccessPointNotFoundError
    │   ├── CredentialNotFoundError
    │   └── UserNotFoundError
    ├── AlreadyExistsError              ALREADY_EXISTS
    │   ├── AliasExistsError
    │   ├── KeyExistsError
    │   ├── InstanceExistsError
    │   └── AccountExistsError
    ├── FailedPreconditionError         FAILED_PRECONDITION
    │   ├── KeyDisabledError
    │   ├── KeyPendingDeletionError
    │   ├── KeyVersionRetiredError
    │   ├── KeyStateConflictError
    │   ├── CredentialLimitReachedError
    │   ├── RecordVersionNotNewerError
    │   └── PeerVersionDowngradeError
    ├── RevisionConflictError           ABORTED
    ├── PermissionDeniedError           PERMISSION_DENIED
    │   ├── NetworkNotAllowedError
    │   └── PrivateEndpointRequiredError
    ├── UnauthenticatedError            UNAUTHENTICATED
    │   ├── CredentialRevokedError
    │   ├── CredentialExpiredError
    │   ├── DeviceTokenRevokedError
    │   └── DeviceTokenExpiredError
    ├── ResourceExhaustedError          RESOURCE_EXHAUSTED
    │   ├── MailboxFullError
    │   └── TooManySubscriptionsError
    ├── UnavailableError                UNAVAILABLE
    │   ├── NodeNotReadyError
    │   ├── HsmUnavailableError
    │   └── TlsRefusedError             (raised by the SDK, never sent)
    ├── DeadlineExceededError           DEADLINE_EXCEEDED
    ├── UnknownMethodError              UNIMPLEMENTED
    └── InternalError                   INTERNAL

Messages are written for a person: they say what was wrong and what to do. They never carry
plaintext, key material, PINs or private keys, and quote what the caller sent only through
`quote()`, so no message grows with the request.
"""

from __future__ import annotations

import grpc

from foundation.wire import REASON_METADATA_KEY, REQUEST_ID_METADATA_KEY  # noqa: F401 - public here too

_BY_REASON: dict[str, type["KeyrelayError"]] = {}
_BY_CODE: dict[grpc.StatusCode, type["KeyrelayError"]] = {}


class KeyrelayError(Exception):
    """Base of every keyrelay error.

    Attributes:
        code: the gRPC status code the error travels as.
        reason: the `ErrorReason` name (without prefix) that travels with it.
        message: the human-readable message.
        request_id: the request id, when the error came back from a server.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = "UNSPECIFIED"

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # The first class declaring a reason owns it; the first class declaring a code is the
        # fallback for statuses that arrive without a reason.
        if "reason" in cls.__dict__:
            _BY_REASON.setdefault(cls.reason, cls)
        if "code" in cls.__dict__:
            _BY_CODE.setdefault(cls.code, cls)

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(KeyrelayError):
    """The request is malformed or out of range; fix the request."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class PayloadTooLargeError(InvalidArgumentError):
    """A payload exceeds the documented size limit."""

    reason = "PAYLOAD_TOO_LARGE"


class BatchTooLargeError(InvalidArgumentError):
    """A batch request holds more items than allowed."""

    reason = "BATCH_TOO_LARGE"


class InvalidEncryptionContextError(InvalidArgumentError):
    """The encryption context breaks a rule (size, count, reserved prefix)."""

    reason = "INVALID_ENCRYPTION_CONTEXT"


class MalformedCiphertextError(InvalidArgumentError):
    """The ciphertext blob is not a keyrelay ciphertext (truncated, wrong format)."""

    reason = "MALFORMED_CIPHERTEXT"


class CiphertextAuthenticationError(InvalidArgumentError):
    """The ciphertext did not authenticate: altered, or decrypted with another context."""

    reason = "CIPHERTEXT_AUTHENTICATION_FAILED"


class SealedRecordMismatchError(InvalidArgumentError):
    """A sealed public-key record does not open for the user, version and key it names."""

    reason = "SEALED_RECORD_MISMATCH"


class EnvelopeTooLargeError(PayloadTooLargeError):
    """A relay envelope is larger than the relay accepts (256 KiB)."""

    reason = "ENVELOPE_TOO_LARGE"


class InvalidUserIdError(InvalidArgumentError):
    """A user id is not 1-64 characters of a-z, 0-9, '.', '_' and '-'."""

    reason = "INVALID_USER_ID"


class MalformedRequestError(InvalidArgumentError):
    """The request body is not a valid protobuf message of the RPC's request type."""

    reason = "MALFORMED_REQUEST"


class InvalidPageTokenError(InvalidArgumentError):
    """The page token was not made by this service (or by this list call)."""

    reason = "INVALID_PAGE_TOKEN"


class NotFoundError(KeyrelayError):
    """The named resource does not exist (or belongs to another tenant)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class KeyNotFoundError(NotFoundError):
    """No key with that id or alias exists for the caller's tenant."""

    reason = "KEY_NOT_FOUND"


class AliasNotFoundError(NotFoundError):
    """No alias with that name exists for the caller's tenant."""

    reason = "ALIAS_NOT_FOUND"


class AlreadyExistsError(KeyrelayError):
    """The resource to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class AliasExistsError(AlreadyExistsError):
    """The alias is taken in the caller's tenant."""

    reason = "ALIAS_EXISTS"


class KeyExistsError(AlreadyExistsError):
    """A key with the requested id exists already."""

    reason = "KEY_EXISTS"


class InstanceNotFoundError(NotFoundError):
    """No dedicated instance with this id is registered (for the caller's tenant)."""

    reason = "INSTANCE_NOT_FOUND"


class AccessPointNotFoundError(NotFoundError):
    """No access point with this id exists (for the caller's tenant)."""

    reason = "ACCESS_POINT_NOT_FOUND"


class CredentialNotFoundError(NotFoundError):
    """No credential with this serial exists (for the caller's tenant)."""

    reason = "CREDENTIAL_NOT_FOUND"


class InstanceExistsError(AlreadyExistsError):
    """A dedicated instance with this id is already registered."""

    reason = "INSTANCE_EXISTS"


class UserNotFoundError(NotFoundError):
    """No relay account (or no published record) exists for that user id."""

    reason = "USER_NOT_FOUND"


class AccountExistsError(AlreadyExistsError):
    """The user id is taken on this relay."""

    reason = "ACCOUNT_EXISTS"


class FailedPreconditionError(KeyrelayError):
    """The resource is not in a state that allows the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class KeyDisabledError(FailedPreconditionError):
    """The key is disabled; enable it first."""

    reason = "KEY_DISABLED"


class KeyPendingDeletionError(FailedPreconditionError):
    """The key is scheduled for deletion; cancel the deletion first."""

    reason = "KEY_PENDING_DELETION"


class KeyVersionRetiredError(FailedPreconditionError):
    """The ciphertext's key version is below the key's minimum decryption version."""

    reason = "KEY_VERSION_RETIRED"


class KeyStateConflictError(FailedPreconditionError):
    """The key's state does not allow this transition."""

    reason = "KEY_STATE_CONFLICT"


class CredentialLimitReachedError(FailedPreconditionError):
    """The access point already has its three live credentials; revoke one first."""

    reason = "CREDENTIAL_LIMIT_REACHED"


class RecordVersionNotNewerError(FailedPreconditionError):
    """A directory record's version is not above the newest one published."""

    reason = "RECORD_VERSION_NOT_NEWER"


class PeerVersionDowngradeError(FailedPreconditionError):
    """The directory served an older record version of a peer than this device has seen (SDK only)."""

    reason = "PEER_VERSION_DOWNGRADE"


class RevisionConflictError(KeyrelayError):
    """The record changed since it was read; re-read and retry."""

    code = grpc.StatusCode.ABORTED
    reason = "REVISION_CONFLICT"


class PermissionDeniedError(KeyrelayError):
    """The caller is authenticated but not allowed to do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class NetworkNotAllowedError(PermissionDeniedError):
    """The request came from a network zone or address its access point or instance does not allow."""

    reason = "NETWORK_NOT_ALLOWED"


class PrivateEndpointRequiredError(PermissionDeniedError):
    """Crypto on a dedicated key must go to the instance's private endpoint, named in the message."""

    reason = "PRIVATE_ENDPOINT_REQUIRED"


class UnauthenticatedError(KeyrelayError):
    """The caller presented no valid credential."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class CredentialRevokedError(UnauthenticatedError):
    """The client certificate was revoked (or its access point deleted)."""

    reason = "CREDENTIAL_REVOKED"


class CredentialExpiredError(UnauthenticatedError):
    """The client certificate is past its expiry; issue a new one."""

    reason = "CREDENTIAL_EXPIRED"


class DeviceTokenRevokedError(UnauthenticatedError):
    """The relay device token was revoked; the account's other device token, or one the relay
    operator issues, is needed."""

    reason = "DEVICE_TOKEN_REVOKED"


class DeviceTokenExpiredError(UnauthenticatedError):
    """The relay device token expired before it was rotated; the relay operator issues a new one."""

    reason = "DEVICE_TOKEN_EXPIRED"


class ResourceExhaustedError(KeyrelayError):
    """A quota or rate limit was reached; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"


class MailboxFullError(ResourceExhaustedError):
    """The recipient's mailbox holds as many messages (or bytes) as the relay allows."""

    reason = "MAILBOX_FULL"


class TooManySubscriptionsError(ResourceExhaustedError):
    """A Subscribe stream closed because its account opened more than the relay allows; a newer
    stream of the account is receiving, so this one is not reopened."""

    reason = "TOO_MANY_SUBSCRIPTIONS"


class UnavailableError(KeyrelayError):
    """The service cannot answer now; an idempotent call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"


class NodeNotReadyError(UnavailableError):
    """The node is starting and has not logged in to its HSM yet."""

    reason = "NODE_NOT_READY"


class HsmUnavailableError(UnavailableError):
    """No HSM slot of the pool can serve the request."""

    reason = "HSM_UNAVAILABLE"


class TlsRefusedError(UnavailableError):
    """TLS refused the connection: the server does not accept the client certificate (another CA,
    expired), or the client does not trust the server's certificate or it does not name the host
    dialled. The SDK raises it, a server never sends it; retrying does not help."""

    reason = "TLS_REFUSED"


class DeadlineExceededError(KeyrelayError):
    """The call's deadline passed before it completed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class UnknownMethodError(KeyrelayError):
    """The server has no such RPC (a wrong path, or a client newer than the server)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNKNOWN_METHOD"


class InternalError(KeyrelayError):
    """An unexpected server-side failure; the server log has details under the request id."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


#: Characters of caller-supplied text an error message quotes.
QUOTE_CHARS = 64


def quote(text: object, limit: int = QUOTE_CHARS) -> str:
    """Caller-supplied text as an error message may show it: quoted, at most `limit` characters of
    it followed by "…" when it was longer, and every non-printable character escaped, so a message
    stays short and one line whatever the request held."""
    text = text if isinstance(text, str) else str(text)
    shown = repr(text[:limit])
    if len(text) > limit:
        shown = f"{shown[:-1]}…{shown[-1]}"
    return shown


def error_class_for(code: grpc.StatusCode, reason: str | None) -> type[KeyrelayError]:
    """Return the class a status with this code and reason maps back to."""
    if reason:
        cls = _BY_REASON.get(reason)
        if cls is not None and cls.code == code:
            return cls
    return _BY_CODE.get(code, KeyrelayError)


def from_status(
    code: grpc.StatusCode, message: str, reason: str | None, request_id: str | None = None
) -> KeyrelayError:
    """Rebuild the exception a server raised from its status, message and reason."""
    cls = error_class_for(code, reason)
    err = cls(message, request_id=request_id)
    if cls is KeyrelayError:
        # An unknown status keeps its real code so callers can still branch on it.
        err.code = code
    if cls is KeyrelayError or not reason:
        # A status without a reason (from gRPC itself: a size or metadata limit, a transport
        # failure) is not given one it never had: RESOURCE_EXHAUSTED is not always a rate limit.
        err.reason = reason or "UNSPECIFIED"
    return err
