"""Plain result types the SDK returns (no protobuf in the public API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from client_sdk.credentials import CredentialBundle
from foundation.errors import KeyrelayError


@dataclass(frozen=True)
class KeyMetadata:
    """A key as the KMS describes it. `state` is ENABLED, DISABLED, PENDING_DELETION or CREATING."""

    key_id: str
    tenant_id: str
    description: str
    tags: dict[str, str]
    state: str
    instance_id: str
    primary_version: int
    min_decryption_version: int
    create_time: datetime
    deletion_time: datetime | None
    aliases: tuple[str, ...]
    versions: tuple[int, ...]


@dataclass(frozen=True)
class KeyPage:
    """One page of ListKeys; pass `next_page_token` to get the next ('' on the last page)."""

    keys: list[KeyMetadata]
    next_page_token: str


@dataclass(frozen=True)
class EncryptResult:
    """A ciphertext blob and the key version that made it."""

    ciphertext_blob: bytes
    key_id: str
    key_version: int


@dataclass(frozen=True)
class DecryptResult:
    """A plaintext and the key version that decrypted it."""

    plaintext: bytes = field(repr=False)
    key_id: str
    key_version: int


@dataclass(frozen=True)
class ReEncryptResult:
    """A ciphertext re-encrypted under the destination key."""

    ciphertext_blob: bytes
    source_key_id: str
    source_key_version: int
    key_id: str
    key_version: int


@dataclass(frozen=True)
class DataKey:
    """A data key: `plaintext` (empty for the WithoutPlaintext call) and its ciphertext blob."""

    plaintext: bytes = field(repr=False)
    ciphertext_blob: bytes
    key_id: str
    key_version: int


@dataclass(frozen=True)
class BatchItem:
    """One result of a batch call: `value` on success, else `error` (never both)."""

    value: DecryptResult | DataKey | None
    error: KeyrelayError | None

    @property
    def ok(self) -> bool:
        """Whether this item succeeded."""
        return self.error is None


@dataclass(frozen=True)
class SealedPublicKey:
    """A sealed public-key record, as the directory stores it."""

    user_id: str
    bundle_version: int
    sealed_bundle: bytes
    wrapped_dek: bytes


@dataclass(frozen=True)
class OpenedPublicKey:
    """The opened public-key bundle and the KMS key that wrapped its DEK."""

    public_key_bundle: bytes
    key_id: str
    key_version: int


# -- administration (AdminService) ---------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """A registered dedicated KMS instance: its node replicas, private endpoint and network policy.

    `management_zones` empty means no zone restriction; `allow_public_crypto` false means crypto
    on its keys is served only at `private_endpoint`.
    """

    instance_id: str
    tenant_id: str
    node_endpoints: tuple[str, ...]
    private_endpoint: str
    management_zones: tuple[str, ...]
    allow_public_crypto: bool
    create_time: datetime


@dataclass(frozen=True)
class InstancePage:
    """One page of ListInstances; pass `next_page_token` to get the next ('' on the last page)."""

    instances: list[Instance]
    next_page_token: str


@dataclass(frozen=True)
class AccessPoint:
    """An access point: a tenant's identity with its roles (of `key-admin`, `access-admin`,
    `crypto-user`, `messaging-user`), the key patterns it may use, the networks it may come from
    (empty `allowed_zones` / `allowed_cidrs`: any), and whether it is an operator (administers
    every tenant)."""

    access_point_id: str
    tenant_id: str
    name: str
    roles: tuple[str, ...]
    key_patterns: tuple[str, ...]
    allowed_zones: tuple[str, ...]
    allowed_cidrs: tuple[str, ...]
    create_time: datetime
    operator: bool = False

    @property
    def role(self) -> str:
        """The roles as one word: `admin` for all four, else the role names joined by commas."""
        return "admin" if len(self.roles) == 4 else ",".join(self.roles)


@dataclass(frozen=True)
class AccessPointPage:
    """One page of ListAccessPoints; pass `next_page_token` to get the next ('' on the last page)."""

    access_points: list[AccessPoint]
    next_page_token: str


@dataclass(frozen=True)
class Credential:
    """An access point's client certificate as the server records it (serial in lowercase hex)."""

    serial: str
    access_point_id: str
    not_before: datetime
    not_after: datetime
    revoked: bool
    revoke_time: datetime | None
    fingerprint_sha256: str

    def status(self, now: datetime | None = None) -> str:
        """`revoked`, `expired` or `active` (at `now`, default the current time)."""
        if self.revoked:
            return "revoked"
        return "expired" if (now or datetime.now(timezone.utc)) >= self.not_after else "active"


@dataclass(frozen=True)
class IssuedCredential:
    """A newly issued credential: its record, the client certificate, the CA that signed it, and
    the private key made on this machine (never in `repr`). `files` holds where they were
    written ("cert", "key", "ca", "profile"), when they were."""

    credential: Credential
    certificate_pem: bytes
    ca_certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def bundle(self) -> CredentialBundle:
        """The credential, ready for `KmsClient(endpoint, credentials=...)`."""
        return CredentialBundle(self.ca_certificate_pem, self.certificate_pem, self.private_key_pem)
