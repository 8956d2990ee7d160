"""Plain result types the SDK returns (no protobuf in the public API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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
