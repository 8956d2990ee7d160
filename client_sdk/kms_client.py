"""`KmsClient`: every `KeyManagementService` call as a typed method.

    from client_sdk import KmsClient, KeyDisabledError

    with KmsClient("127.0.0.1:7101") as kms:
        key = kms.create_key(description="orders", alias="alias/orders")
        blob = kms.encrypt(key.key_id, b"secret", context={"order": "42"}).ciphertext_blob
        assert kms.decrypt(blob, context={"order": "42"}).plaintext == b"secret"

With no target, the client reads the default profile (`.keyrelay/profile.toml`, see
`client_sdk.credentials`): `KmsClient()` talks to the gateway with the profile's credential.
Every method takes `timeout` (seconds; default the client's) and raises the keyrelay exception
the server raised (`client_sdk.KeyNotFoundError`, ...), never a bare `grpc.RpcError`.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

from client_sdk._channel import (  # noqa: F401  (error_from_rpc and TENANT_METADATA_KEY: public here)
    TENANT_METADATA_KEY,
    ServiceClient,
    error_from_rpc,
    iterate_pages,
    optional_datetime,
    status_code,
    to_datetime,
)
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
from foundation.errors import KeyrelayError, from_status
from keyrelay.v1 import kms_pb2, kms_pb2_grpc

_STATE_NAMES = {value: name.removeprefix("KEY_STATE_") for name, value in kms_pb2.KeyState.items()}


def _metadata(meta: kms_pb2.KeyMetadata) -> KeyMetadata:
    return KeyMetadata(
        key_id=meta.key_id,
        tenant_id=meta.tenant_id,
        description=meta.description,
        tags=dict(meta.tags),
        state=_STATE_NAMES.get(meta.state, "UNSPECIFIED"),
        instance_id=meta.instance_id,
        primary_version=meta.primary_version,
        min_decryption_version=meta.min_decryption_version,
        create_time=to_datetime(meta.create_time),
        deletion_time=optional_datetime(meta, "deletion_time"),
        aliases=tuple(meta.aliases),
        versions=tuple(v.version for v in meta.versions),
    )


class KmsClient(ServiceClient):
    """A synchronous client of `keyrelay.v1.KeyManagementService` (a node, gateway or private endpoint).

    Args:
        target: host:port of the service; None (with no profile) reads the default profile.
        tenant: the tenant to act as where the server takes it from metadata (a bare node);
            behind the gateway the credential decides.
        timeout: default per-call deadline in seconds (default: the profile's, else 10).
        channel: an existing channel to use instead of opening one to `target`.
        credentials: a TLS credential (CA, client certificate and key); None means plain text
            unless the profile names one.
        profile: a `Profile`, or the path of a profile file, to take all of the above from;
            explicit arguments win over it.

    `KmsClient.from_profile(path=None)` is the same as `KmsClient(profile=load_profile(path))`.
    """

    _stub_class = kms_pb2_grpc.KeyManagementServiceStub

    # -- lifecycle --------------------------------------------------------------------------

    def create_key(
        self,
        *,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        alias: str = "",
        instance_id: str = "",
        timeout: float | None = None,
    ) -> KeyMetadata:
        """Create an AES-256 master key (on a dedicated instance if `instance_id` is given)."""
        request = kms_pb2.CreateKeyRequest(
            description=description, tags=dict(tags or {}), alias=alias, instance_id=instance_id
        )
        return _metadata(self._call("CreateKey", request, timeout).key_metadata)

    def describe_key(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Describe a key by id or alias."""
        return _metadata(self._call("DescribeKey", kms_pb2.DescribeKeyRequest(key_id=key_id), timeout).key_metadata)

    def list_keys(self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None) -> KeyPage:
        """One page of the tenant's keys."""
        response = self._call("ListKeys", kms_pb2.ListKeysRequest(page_size=page_size, page_token=page_token), timeout)
        return KeyPage([_metadata(k) for k in response.keys], response.next_page_token)

    def iter_keys(self, *, page_size: int = 0, timeout: float | None = None) -> Iterator[KeyMetadata]:
        """Every key of the tenant, page by page."""
        return iterate_pages(self.list_keys, "keys", page_size=page_size, timeout=timeout)

    def enable_key(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Enable a key."""
        return _metadata(self._call("EnableKey", kms_pb2.EnableKeyRequest(key_id=key_id), timeout).key_metadata)

    def disable_key(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Disable a key (it refuses cryptography until enabled)."""
        return _metadata(self._call("DisableKey", kms_pb2.DisableKeyRequest(key_id=key_id), timeout).key_metadata)

    def schedule_key_deletion(
        self, key_id: str, *, pending_window_days: int = 0, timeout: float | None = None
    ) -> KeyMetadata:
        """Schedule deletion after 7-30 days (0 = 30)."""
        request = kms_pb2.ScheduleKeyDeletionRequest(key_id=key_id, pending_window_days=pending_window_days)
        return _metadata(self._call("ScheduleKeyDeletion", request, timeout).key_metadata)

    def cancel_key_deletion(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Cancel a scheduled deletion (the key becomes DISABLED)."""
        request = kms_pb2.CancelKeyDeletionRequest(key_id=key_id)
        return _metadata(self._call("CancelKeyDeletion", request, timeout).key_metadata)

    def rotate_key(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Add a new primary version; older versions keep decrypting."""
        return _metadata(self._call("RotateKey", kms_pb2.RotateKeyRequest(key_id=key_id), timeout).key_metadata)

    def update_key(
        self,
        key_id: str,
        *,
        description: str | None = None,
        min_decryption_version: int | None = None,
        timeout: float | None = None,
    ) -> KeyMetadata:
        """Change the description and/or the minimum decryption version."""
        request = kms_pb2.UpdateKeyRequest(key_id=key_id)
        if description is not None:
            request.description = description
        if min_decryption_version is not None:
            request.min_decryption_version = min_decryption_version
        return _metadata(self._call("UpdateKey", request, timeout).key_metadata)

    def create_alias(self, alias: str, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Point `alias/NAME` at a key."""
        request = kms_pb2.CreateAliasRequest(alias=alias, key_id=key_id)
        return _metadata(self._call("CreateAlias", request, timeout).key_metadata)

    def delete_alias(self, alias: str, *, timeout: float | None = None) -> str:
        """Delete an alias; returns the key id it pointed to."""
        return self._call("DeleteAlias", kms_pb2.DeleteAliasRequest(alias=alias), timeout).key_id

    # -- cryptography -----------------------------------------------------------------------

    def encrypt(
        self, key_id: str, plaintext: bytes, *, context: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> EncryptResult:
        """Encrypt up to 4096 bytes; `context` must be given again to decrypt."""
        request = kms_pb2.EncryptRequest(key_id=key_id, plaintext=plaintext, encryption_context=dict(context or {}))
        response = self._call("Encrypt", request, timeout)
        return EncryptResult(response.ciphertext_blob, response.key_id, response.key_version)

    def decrypt(
        self,
        ciphertext_blob: bytes,
        *,
        context: Mapping[str, str] | None = None,
        key_id: str = "",
        timeout: float | None = None,
    ) -> DecryptResult:
        """Decrypt a blob from Encrypt or GenerateDataKey (optionally insisting on `key_id`)."""
        request = kms_pb2.DecryptRequest(
            ciphertext_blob=ciphertext_blob, encryption_context=dict(context or {}), key_id=key_id
        )
        response = self._call("Decrypt", request, timeout)
        return DecryptResult(response.plaintext, response.key_id, response.key_version)

    def re_encrypt(
        self,
        ciphertext_blob: bytes,
        destination_key_id: str,
        *,
        source_context: Mapping[str, str] | None = None,
        destination_context: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ReEncryptResult:
        """Re-encrypt under another key (or the newest version) inside the KMS."""
        request = kms_pb2.ReEncryptRequest(
            ciphertext_blob=ciphertext_blob,
            source_encryption_context=dict(source_context or {}),
            destination_key_id=destination_key_id,
            destination_encryption_context=dict(destination_context or {}),
        )
        r = self._call("ReEncrypt", request, timeout)
        return ReEncryptResult(r.ciphertext_blob, r.source_key_id, r.source_key_version, r.key_id, r.key_version)

    def generate_data_key(
        self,
        key_id: str,
        *,
        number_of_bytes: int = 32,
        context: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> DataKey:
        """A fresh data key (16, 32 or 64 bytes) in plaintext and encrypted under the key."""
        request = kms_pb2.GenerateDataKeyRequest(
            key_id=key_id, number_of_bytes=number_of_bytes, encryption_context=dict(context or {})
        )
        r = self._call("GenerateDataKey", request, timeout)
        return DataKey(r.plaintext, r.ciphertext_blob, r.key_id, r.key_version)

    def generate_data_key_without_plaintext(
        self,
        key_id: str,
        *,
        number_of_bytes: int = 32,
        context: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> DataKey:
        """A fresh data key, returned only encrypted (`plaintext` is empty)."""
        request = kms_pb2.GenerateDataKeyWithoutPlaintextRequest(
            key_id=key_id, number_of_bytes=number_of_bytes, encryption_context=dict(context or {})
        )
        r = self._call("GenerateDataKeyWithoutPlaintext", request, timeout)
        return DataKey(b"", r.ciphertext_blob, r.key_id, r.key_version)

    def batch_decrypt(
        self,
        items: Sequence[tuple[bytes, Mapping[str, str]] | bytes],
        *,
        timeout: float | None = None,
    ) -> list[BatchItem]:
        """Decrypt up to 1000 blobs (each a blob or a (blob, context) pair); per-item errors."""
        request = kms_pb2.BatchDecryptRequest()
        for item in items:
            blob, context = (item, {}) if isinstance(item, bytes) else item
            request.items.add(ciphertext_blob=blob, encryption_context=dict(context))
        results = []
        for r in self._call("BatchDecrypt", request, timeout).results:
            if r.HasField("error"):
                results.append(BatchItem(None, _batch_error(r.error)))
            else:
                results.append(BatchItem(DecryptResult(r.plaintext, r.key_id, r.key_version), None))
        return results

    def batch_generate_data_key(
        self,
        items: Sequence[tuple[str, int, Mapping[str, str]] | str],
        *,
        timeout: float | None = None,
    ) -> list[BatchItem]:
        """Generate up to 1000 data keys (each a key id or (key id, bytes, context)); per-item errors."""
        request = kms_pb2.BatchGenerateDataKeyRequest()
        for item in items:
            key_id, size, context = (item, 32, {}) if isinstance(item, str) else item
            request.items.add(key_id=key_id, number_of_bytes=size, encryption_context=dict(context))
        results = []
        for r in self._call("BatchGenerateDataKey", request, timeout).results:
            if r.HasField("error"):
                results.append(BatchItem(None, _batch_error(r.error)))
            else:
                results.append(BatchItem(DataKey(r.plaintext, r.ciphertext_blob, r.key_id, r.key_version), None))
        return results

    def generate_random(self, number_of_bytes: int, *, timeout: float | None = None) -> bytes:
        """1-1024 random bytes from the HSM."""
        return self._call("GenerateRandom", kms_pb2.GenerateRandomRequest(number_of_bytes=number_of_bytes), timeout).random

    def seal_public_key(
        self, key_id: str, user_id: str, public_key_bundle: bytes, bundle_version: int, *, timeout: float | None = None
    ) -> SealedPublicKey:
        """Seal a user's public-key bundle (seed 000): the KMS stores nothing of it."""
        request = kms_pb2.SealPublicKeyRequest(
            key_id=key_id, user_id=user_id, public_key_bundle=public_key_bundle, bundle_version=bundle_version
        )
        s = self._call("SealPublicKey", request, timeout).sealed
        return SealedPublicKey(s.user_id, s.bundle_version, s.sealed_bundle, s.wrapped_dek)

    def open_public_key(self, sealed: SealedPublicKey, *, timeout: float | None = None) -> OpenedPublicKey:
        """Open a sealed record; refused (SealedRecordMismatchError) unless it is the named user's."""
        request = kms_pb2.OpenPublicKeyRequest(
            sealed=kms_pb2.SealedPublicKey(
                user_id=sealed.user_id,
                bundle_version=sealed.bundle_version,
                sealed_bundle=sealed.sealed_bundle,
                wrapped_dek=sealed.wrapped_dek,
            )
        )
        r = self._call("OpenPublicKey", request, timeout)
        return OpenedPublicKey(r.public_key_bundle, r.key_id, r.key_version)


def _batch_error(err) -> KeyrelayError:
    return from_status(status_code(err.code), err.message, err.reason)
