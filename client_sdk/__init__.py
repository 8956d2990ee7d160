"""The keyrelay client SDK: one flat namespace for the KMS and admin clients, profiles and
credentials, their result types and errors.

    from client_sdk import KmsClient, KeyNotFoundError

    with KmsClient() as kms:          # endpoint and credential from .keyrelay/profile.toml
        ...

`ProfileError` (a ValueError) is raised for a missing or wrong profile or credential file; every
error a server answers with is a `KeyrelayError`.
"""

from client_sdk.admin_client import AdminClient
from client_sdk.credentials import (
    CredentialBundle,
    Profile,
    ProfileError,
    default_profile_path,
    load_profile,
    write_profile,
)
from client_sdk.kms_client import KmsClient
from client_sdk.types import (
    AccessPoint,
    AccessPointPage,
    BatchItem,
    Credential,
    DataKey,
    DecryptResult,
    EncryptResult,
    Instance,
    InstancePage,
    IssuedCredential,
    KeyMetadata,
    KeyPage,
    OpenedPublicKey,
    ReEncryptResult,
    SealedPublicKey,
)
from foundation.errors import (
    AccessPointNotFoundError,
    AliasExistsError,
    AliasNotFoundError,
    AlreadyExistsError,
    BatchTooLargeError,
    CiphertextAuthenticationError,
    CredentialExpiredError,
    CredentialLimitReachedError,
    CredentialNotFoundError,
    CredentialRevokedError,
    DeadlineExceededError,
    FailedPreconditionError,
    HsmUnavailableError,
    InstanceExistsError,
    InstanceNotFoundError,
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
    NetworkNotAllowedError,
    NodeNotReadyError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PrivateEndpointRequiredError,
    ResourceExhaustedError,
    RevisionConflictError,
    SealedRecordMismatchError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [name for name in dir() if not name.startswith("_")]
