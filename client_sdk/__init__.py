"""The keyrelay client SDK: one flat namespace for the KMS client, its result types and errors.

    from client_sdk import KmsClient, KeyNotFoundError
"""

from client_sdk.kms_client import KmsClient
from client_sdk.types import (
    BatchItem,
    DataKey,
    DecryptResult,
    EncryptResult,
    KeyMetadata,
    KeyPage,
    OpenedPublicKey,
    ReEncryptResult,
    SealedPublicKey,
)
from foundation.errors import (
    AlreadyExistsError,
    AliasExistsError,
    AliasNotFoundError,
    BatchTooLargeError,
    CiphertextAuthenticationError,
    DeadlineExceededError,
    FailedPreconditionError,
    HsmUnavailableError,
    InternalError,
    InvalidArgumentError,
    InvalidEncryptionContextError,
    KeyDisabledError,
    KeyExistsError,
    KeyNotFoundError,
    KeyPendingDeletionError,
    KeyrelayError,
    KeyStateConflictError,
    KeyVersionRetiredError,
    MalformedCiphertextError,
    NodeNotReadyError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SealedRecordMismatchError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [name for name in dir() if not name.startswith("_")]
