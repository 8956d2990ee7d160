"""The keyrelay client SDK: one flat namespace for the KMS, admin and relay clients, envelope
encryption, the end-to-end messenger, profiles and credentials, their result types and errors.

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
from client_sdk.datakey_cache import DataKeyCache, DataKeyCacheStats
from client_sdk.device_keys import DeviceKeyPair, DeviceKeys
from client_sdk.envelope import DEFAULT_CHUNK_SIZE, EnvelopeInfo, decrypt_stream, encrypt_stream
from client_sdk.kms_client import AsyncKmsClient, KmsClient
from client_sdk.messenger import Messenger, ReceivedMessage, RejectedMessage, RejectReason, log_rejection
from client_sdk.messenger_policy import MessengerPolicy
from client_sdk.relay_client import RelayClient, Subscription
from client_sdk.relay_types import DirectoryRecord, RelayAccount, RelayMessage, SendReceipt
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
    AccountExistsError,
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
    DeviceTokenExpiredError,
    DeviceTokenRevokedError,
    EnvelopeTooLargeError,
    FailedPreconditionError,
    HsmUnavailableError,
    InstanceExistsError,
    InstanceNotFoundError,
    InternalError,
    InvalidArgumentError,
    InvalidEncryptionContextError,
    InvalidPageTokenError,
    InvalidUserIdError,
    KeyDisabledError,
    KeyExistsError,
    KeyNotFoundError,
    KeyPendingDeletionError,
    KeyrelayError,
    KeyStateConflictError,
    KeyVersionRetiredError,
    MailboxFullError,
    MalformedCiphertextError,
    MalformedRequestError,
    NetworkNotAllowedError,
    NodeNotReadyError,
    NotFoundError,
    PayloadTooLargeError,
    PeerVersionDowngradeError,
    PermissionDeniedError,
    PrivateEndpointRequiredError,
    RecordVersionNotNewerError,
    ResourceExhaustedError,
    RevisionConflictError,
    SealedRecordMismatchError,
    TlsRefusedError,
    TooManySubscriptionsError,
    UnauthenticatedError,
    UnavailableError,
    UnknownMethodError,
    UserNotFoundError,
)

__all__ = [name for name in dir() if not name.startswith("_")]
