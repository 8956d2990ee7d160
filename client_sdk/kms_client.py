"""`KmsClient` and `AsyncKmsClient`: every `KeyManagementService` call as a typed method, for
shared and dedicated keys alike.

    from client_sdk import KmsClient, KeyDisabledError

    with KmsClient() as kms:           # the gateway and private endpoints of .keyrelay/profile.toml
        key = kms.create_key(description="orders", alias="alias/orders")
        blob = kms.encrypt(key.key_id, b"secret", context={"order": "42"}).ciphertext_blob
        assert kms.decrypt(blob, context={"order": "42"}).plaintext == b"secret"

One client for both kinds of key (seed 001 §0004 complains of needing two SDKs). Management
calls go to the gateway. Cryptography on a key of a dedicated instance goes to that instance's
private endpoint when the profile names one (`[private_endpoints]`): the client learns a key's
instance from DescribeKey through the gateway (cached), and reads a ciphertext's key from the
blob itself. Without private endpoints every call goes to the one target.

Idempotent calls (reads and cryptography) are retried on UNAVAILABLE, with backoff, for as long as
the call's deadline allows, under one request id: a connection lost mid-call or a server not yet
listening is the server restarting. A connection that TLS refused is not retried: it raises
`TlsRefusedError` saying what to check (`client_sdk._connectivity` tells the cases apart by the
channel's state, not by gRPC's message). Every method takes `timeout` (seconds; default the
client's) and raises the keyrelay exception the server raised (`client_sdk.KeyNotFoundError`, ...),
never a bare `grpc.RpcError`.

`AsyncKmsClient` has the same methods for asyncio; each returns an awaitable.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence

import grpc

from client_sdk._channel import (  # noqa: F401  (error_from_rpc and TENANT_METADATA_KEY: public here)
    TENANT_METADATA_KEY,
    ServiceClient,
    error_from_rpc,
    iterate_pages,
    optional_datetime,
    status_code,
    to_datetime,
)
from client_sdk._connectivity import Link
from client_sdk._retry import Backoff
from client_sdk.credentials import CredentialBundle, Profile
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
from foundation.access_policy import CRYPTO_METHODS
from foundation.key_refs import BATCH_METHODS, routing_refs
from foundation.wire import MAX_KMS_REQUEST_BYTES
from foundation.errors import (
    BatchTooLargeError,
    PayloadTooLargeError,
    DeadlineExceededError,
    KeyrelayError,
    TlsRefusedError,
    UnavailableError,
    from_status,
)
from keyrelay.v1 import kms_pb2, kms_pb2_grpc

_STATE_NAMES = {value: name.removeprefix("KEY_STATE_") for name, value in kms_pb2.KeyState.items()}
#: How long the client remembers which instance a key lives on.
INSTANCE_CACHE_SECONDS = 300.0
_INSTANCE_CACHE_SIZE = 10_000


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


def _key_metadata(response) -> KeyMetadata:
    return _metadata(response.key_metadata)


def _batch_error(err) -> KeyrelayError:
    return from_status(status_code(err.code), err.message, err.reason)


def _decrypt_items(response) -> list[BatchItem]:
    return [
        BatchItem(None, _batch_error(r.error)) if r.HasField("error")
        else BatchItem(DecryptResult(r.plaintext, r.key_id, r.key_version), None)
        for r in response.results
    ]


def _data_key_items(response) -> list[BatchItem]:
    return [
        BatchItem(None, _batch_error(r.error)) if r.HasField("error")
        else BatchItem(DataKey(r.plaintext, r.ciphertext_blob, r.key_id, r.key_version), None)
        for r in response.results
    ]


@dataclass(frozen=True, slots=True)
class _Call:
    """One RPC as the methods describe it: what to send, how to read the answer, whether a retry
    is safe."""

    method: str
    request: Any
    convert: Callable[[Any], Any]
    idempotent: bool = True

    def check_size(self) -> None:
        """Refuse a request larger than the KMS takes, with a reason, rather than leave it to the
        server's transport (a bare RESOURCE_EXHAUSTED after the whole body went over the wire).
        Checked per call sent, so a batch split between instances is measured part by part."""
        size = self.request.ByteSize()
        if size > MAX_KMS_REQUEST_BYTES:
            error = BatchTooLargeError if self.method in BATCH_METHODS else PayloadTooLargeError
            raise error(
                f"the {self.method} request is {size} bytes encoded; the KMS takes at most {MAX_KMS_REQUEST_BYTES}: "
                + ("split the batch into smaller ones" if error is BatchTooLargeError else "send less data per call")
            )

    @property
    def routes(self) -> list[str | None]:
        """What the call is routed by (`foundation.key_refs.routing_refs`): the key id or alias it
        names, one per item for a batch; None for a blob that is not a keyrelay ciphertext."""
        return routing_refs(self.method, self.request)


class _InstanceCache:
    """Key id or alias -> the instance the key lives on ('' for the shared KMS), with a TTL."""

    def __init__(self, ttl: float = INSTANCE_CACHE_SECONDS) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, meta: KeyMetadata, *names: str) -> str:
        expires = time.monotonic() + self._ttl
        with self._lock:
            if len(self._entries) >= _INSTANCE_CACHE_SIZE:
                self._entries.clear()  # crude but bounded; entries are cheap to learn again
            for name in (meta.key_id, *meta.aliases, *names):
                self._entries[name] = (meta.instance_id, expires)
        return meta.instance_id


def _split(call: _Call, instances: Sequence[str]) -> list[tuple[str, _Call, list[int]]]:
    """A batch call as one call per instance: (instance, call, indices of its items)."""
    groups: dict[str, list[int]] = {}
    for index, instance in enumerate(instances):
        groups.setdefault(instance, []).append(index)
    if len(groups) <= 1:
        return [(instances[0] if instances else "", call, list(range(len(instances))))]
    parts = []
    for instance, indices in groups.items():
        request = type(call.request)()
        request.items.extend(call.request.items[i] for i in indices)
        parts.append((instance, _Call(call.method, request, call.convert, call.idempotent), indices))
    return parts


def _final_error(error: KeyrelayError, previous: KeyrelayError | None) -> KeyrelayError:
    """What to raise when retrying stops: a retry cut short by the deadline says only "deadline
    exceeded", so the UNAVAILABLE that caused the retries is the better answer."""
    if previous is not None and isinstance(error, DeadlineExceededError):
        return previous
    return error


def _merge(parts: Sequence[tuple[list[int], list]], size: int) -> list:
    merged: list = [None] * size
    for indices, results in parts:
        for index, result in zip(indices, results):
            merged[index] = result
    return merged


class _KmsMethods:
    """Every KeyManagementService method, described once as a `_Call` and run by the client
    class's `_run` (synchronously in `KmsClient`, as a coroutine in `AsyncKmsClient`)."""

    def _run(self, call: _Call, timeout: float | None):  # pragma: no cover - provided by the client
        raise NotImplementedError

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
        return self._run(_Call("CreateKey", request, _key_metadata, idempotent=False), timeout)

    def describe_key(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Describe a key by id or alias."""
        return self._run(_Call("DescribeKey", kms_pb2.DescribeKeyRequest(key_id=key_id), _key_metadata), timeout)

    def list_keys(self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None) -> KeyPage:
        """One page of the tenant's keys."""
        return self._run(
            _Call(
                "ListKeys",
                kms_pb2.ListKeysRequest(page_size=page_size, page_token=page_token),
                lambda r: KeyPage([_metadata(k) for k in r.keys], r.next_page_token),
            ),
            timeout,
        )

    def enable_key(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Enable a key."""
        return self._run(_Call("EnableKey", kms_pb2.EnableKeyRequest(key_id=key_id), _key_metadata), timeout)

    def disable_key(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Disable a key (it refuses cryptography until enabled)."""
        return self._run(_Call("DisableKey", kms_pb2.DisableKeyRequest(key_id=key_id), _key_metadata), timeout)

    def schedule_key_deletion(
        self, key_id: str, *, pending_window_days: int = 0, timeout: float | None = None
    ) -> KeyMetadata:
        """Schedule deletion after 7-30 days (0 = 30)."""
        request = kms_pb2.ScheduleKeyDeletionRequest(key_id=key_id, pending_window_days=pending_window_days)
        return self._run(_Call("ScheduleKeyDeletion", request, _key_metadata, idempotent=False), timeout)

    def cancel_key_deletion(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Cancel a scheduled deletion (the key becomes DISABLED)."""
        request = kms_pb2.CancelKeyDeletionRequest(key_id=key_id)
        return self._run(_Call("CancelKeyDeletion", request, _key_metadata, idempotent=False), timeout)

    def rotate_key(self, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Add a new primary version; older versions keep decrypting. Not retried: a retry
        could add two versions."""
        request = kms_pb2.RotateKeyRequest(key_id=key_id)
        return self._run(_Call("RotateKey", request, _key_metadata, idempotent=False), timeout)

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
        return self._run(_Call("UpdateKey", request, _key_metadata), timeout)

    def create_alias(self, alias: str, key_id: str, *, timeout: float | None = None) -> KeyMetadata:
        """Point `alias/NAME` at a key."""
        request = kms_pb2.CreateAliasRequest(alias=alias, key_id=key_id)
        return self._run(_Call("CreateAlias", request, _key_metadata, idempotent=False), timeout)

    def delete_alias(self, alias: str, *, timeout: float | None = None) -> str:
        """Delete an alias; returns the key id it pointed to."""
        request = kms_pb2.DeleteAliasRequest(alias=alias)
        return self._run(_Call("DeleteAlias", request, lambda r: r.key_id, idempotent=False), timeout)

    # -- cryptography -----------------------------------------------------------------------

    def encrypt(
        self, key_id: str, plaintext: bytes, *, context: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> EncryptResult:
        """Encrypt up to 4096 bytes; `context` must be given again to decrypt."""
        request = kms_pb2.EncryptRequest(key_id=key_id, plaintext=plaintext, encryption_context=dict(context or {}))
        return self._run(
            _Call("Encrypt", request, lambda r: EncryptResult(r.ciphertext_blob, r.key_id, r.key_version)),
            timeout,
        )

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
        return self._run(
            _Call("Decrypt", request, lambda r: DecryptResult(r.plaintext, r.key_id, r.key_version)),
            timeout,
        )

    def re_encrypt(
        self,
        ciphertext_blob: bytes,
        destination_key_id: str,
        *,
        source_context: Mapping[str, str] | None = None,
        destination_context: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ReEncryptResult:
        """Re-encrypt under another key (or the newest version) inside the KMS (both keys in one KMS)."""
        request = kms_pb2.ReEncryptRequest(
            ciphertext_blob=ciphertext_blob,
            source_encryption_context=dict(source_context or {}),
            destination_key_id=destination_key_id,
            destination_encryption_context=dict(destination_context or {}),
        )
        return self._run(
            _Call(
                "ReEncrypt", request,
                lambda r: ReEncryptResult(r.ciphertext_blob, r.source_key_id, r.source_key_version, r.key_id, r.key_version),
            ),
            timeout,
        )

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
        return self._run(
            _Call("GenerateDataKey", request, lambda r: DataKey(r.plaintext, r.ciphertext_blob, r.key_id, r.key_version)),
            timeout,
        )

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
        return self._run(
            _Call("GenerateDataKeyWithoutPlaintext", request, lambda r: DataKey(b"", r.ciphertext_blob, r.key_id, r.key_version)),
            timeout,
        )

    def batch_decrypt(
        self,
        items: Sequence[tuple[bytes, Mapping[str, str]] | bytes],
        *,
        timeout: float | None = None,
    ) -> list[BatchItem]:
        """Decrypt up to 1000 blobs (each a blob or a (blob, context) pair); per-item errors.
        Blobs of keys on different instances are sent to each one and merged in order."""
        request = kms_pb2.BatchDecryptRequest()
        blobs = []
        for item in items:
            blob, context = (item, {}) if isinstance(item, bytes) else item
            request.items.add(ciphertext_blob=blob, encryption_context=dict(context))
            blobs.append(blob)
        return self._run(_Call("BatchDecrypt", request, _decrypt_items), timeout)

    def batch_generate_data_key(
        self,
        items: Sequence[tuple[str, int, Mapping[str, str]] | str],
        *,
        timeout: float | None = None,
    ) -> list[BatchItem]:
        """Generate up to 1000 data keys (each a key id or (key id, bytes, context)); per-item errors."""
        request = kms_pb2.BatchGenerateDataKeyRequest()
        keys = []
        for item in items:
            key_id, size, context = (item, 32, {}) if isinstance(item, str) else item
            request.items.add(key_id=key_id, number_of_bytes=size, encryption_context=dict(context))
            keys.append(key_id)
        return self._run(
            _Call("BatchGenerateDataKey", request, _data_key_items), timeout
        )

    def generate_random(self, number_of_bytes: int, *, timeout: float | None = None) -> bytes:
        """1-1024 random bytes from the HSM."""
        request = kms_pb2.GenerateRandomRequest(number_of_bytes=number_of_bytes)
        return self._run(_Call("GenerateRandom", request, lambda r: r.random), timeout)

    def seal_public_key(
        self, key_id: str, user_id: str, public_key_bundle: bytes, bundle_version: int, *, timeout: float | None = None
    ) -> SealedPublicKey:
        """Seal a user's public-key bundle (seed 000): the KMS stores nothing of it."""
        request = kms_pb2.SealPublicKeyRequest(
            key_id=key_id, user_id=user_id, public_key_bundle=public_key_bundle, bundle_version=bundle_version
        )

        def convert(response) -> SealedPublicKey:
            s = response.sealed
            return SealedPublicKey(s.user_id, s.bundle_version, s.sealed_bundle, s.wrapped_dek)

        return self._run(_Call("SealPublicKey", request, convert), timeout)

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
        return self._run(
            _Call("OpenPublicKey", request, lambda r: OpenedPublicKey(r.public_key_bundle, r.key_id, r.key_version)),
            timeout,
        )


class _Routing:
    """What both clients share: the constructor, the private endpoints of the profile, and which
    calls go there."""

    def __init__(
        self,
        target: str | None = None,
        *,
        tenant: str | None = None,
        timeout: float | None = None,
        channel: grpc.Channel | None = None,
        credentials: CredentialBundle | None = None,
        profile: str | os.PathLike | Profile | None = None,
        private_endpoints: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(target, tenant=tenant, timeout=timeout, channel=channel, credentials=credentials, profile=profile)
        self._init_routing(private_endpoints)

    def _init_routing(self, private_endpoints: Mapping[str, str] | None) -> None:
        profile: Profile | None = self._profile  # type: ignore[attr-defined]
        endpoints = private_endpoints if private_endpoints is not None else (profile.private_endpoints if profile else {})
        self._private_endpoints = dict(endpoints)
        self._private_stubs: dict[str, tuple[Any, Link]] = {}
        self._private_channels: list[Any] = []
        self._instances = _InstanceCache()
        self._stub_lock = threading.Lock()

    @property
    def private_endpoints(self) -> dict[str, str]:
        """Instance id -> host:port of the private endpoints this client sends cryptography to."""
        return dict(self._private_endpoints)

    def _private_routes(self, call: _Call) -> list[str | None]:
        """What a call that may go to a private endpoint is routed by; [] for the gateway."""
        if not self._private_endpoints or call.method not in CRYPTO_METHODS:
            return []
        return call.routes

    def _known_instance(self, key: str | None) -> tuple[str, str | None]:
        """(key, its instance) when known without asking: from the cache, or '' for a blob that is
        not a keyrelay ciphertext (the gateway will say what is wrong with it); (key, None) when
        the gateway must be asked."""
        if key is None:
            return "", ""
        return key, self._instances.get(key)

    def _stub_for(self, instance: str) -> tuple[Any, Link]:
        """The stub of the instance's private endpoint, or of the gateway, and its channel's link."""
        target = self._private_endpoints.get(instance) if instance else None
        if target is None:
            return self._stub, self._link  # type: ignore[attr-defined]
        with self._stub_lock:
            entry = self._private_stubs.get(instance)
            if entry is None:
                channel = self._open_channel(target)  # type: ignore[attr-defined]
                self._private_channels.append(channel)
                link = self._link_for(channel, target)  # type: ignore[attr-defined]
                entry = self._private_stubs[instance] = (kms_pb2_grpc.KeyManagementServiceStub(channel), link)
            return entry


def _retryable(call: _Call, error: KeyrelayError) -> bool:
    """Whether a failed attempt of `call` may be sent again: an idempotent call that found no
    server (UNAVAILABLE), unless TLS refused the connection."""
    return call.idempotent and isinstance(error, UnavailableError) and not isinstance(error, TlsRefusedError)


class KmsClient(_Routing, _KmsMethods, ServiceClient):
    """A synchronous client of `keyrelay.v1.KeyManagementService`: the gateway (and the private
    endpoints of dedicated instances), a node, or one private endpoint.

    Args:
        target: host:port of the service; None (with no channel) reads the default profile.
        tenant: the tenant to act as where the server takes it from metadata (a bare node);
            behind the gateway the credential decides.
        timeout: default per-call deadline in seconds (default: the profile's, else 10); retries
            of idempotent calls happen within it.
        channel: an existing channel to use instead of opening one to `target`.
        credentials: a TLS credential (CA, client certificate and key); None means plain text
            unless the profile names one.
        profile: a `Profile`, or the path of a profile file, to take all of the above from;
            explicit arguments win over it.
        private_endpoints: instance id -> host:port; cryptography on a key of that instance goes
            there (default: the profile's `[private_endpoints]`).

    `KmsClient.from_profile(path=None)` is the same as `KmsClient(profile=load_profile(path))`.
    """

    _stub_class = kms_pb2_grpc.KeyManagementServiceStub

    def iter_keys(self, *, page_size: int = 0, timeout: float | None = None) -> Iterator[KeyMetadata]:
        """Every key of the tenant, page by page."""
        return iterate_pages(self.list_keys, "keys", page_size=page_size, timeout=timeout)

    def close(self) -> None:
        """Close the channels this client opened."""
        for channel in self._private_channels:
            channel.close()
        super().close()

    def _instance_of(self, route: str | None, backoff: Backoff) -> str:
        key, instance = self._known_instance(route)
        if instance is not None:
            return instance
        try:
            return self._instances.put(self.describe_key(key, timeout=max(backoff.remaining(), 0.001)), key)
        except KeyrelayError:
            return ""  # the gateway answers the call itself, with the error the caller should see

    def _run(self, call: _Call, timeout: float | None):
        timeout = self._timeout if timeout is None else timeout
        backoff = Backoff(timeout)
        routes = self._private_routes(call)
        if not routes:
            return self._attempt(self._stub_for(""), call, backoff)
        instances = [self._instance_of(route, backoff) for route in routes]
        parts = _split(call, instances)
        if len(parts) == 1:
            return self._attempt(self._stub_for(parts[0][0]), call, backoff)
        results = [(indices, self._attempt(self._stub_for(instance), part, backoff)) for instance, part, indices in parts]
        return _merge(results, len(routes))

    def _attempt(self, target: tuple[Any, Link], call: _Call, backoff: Backoff):
        """Send `call` on `target` (a stub and its link), retrying an idempotent one on UNAVAILABLE
        within the deadline (one request id)."""
        call.check_size()
        stub, link = target
        metadata = self._metadata(uuid.uuid4().hex)
        method = getattr(stub, call.method)
        previous: KeyrelayError | None = None
        while True:
            try:
                response = method(call.request, timeout=max(backoff.remaining(), 0.001), metadata=metadata)
            except grpc.RpcError as exc:
                error = self._error(exc, link)
            else:
                link.answered()
                return call.convert(response)
            delay = backoff.next_delay() if _retryable(call, error) else None
            if delay is None:
                raise _final_error(error, previous)
            previous = error
            time.sleep(delay)


class AsyncKmsClient(_Routing, _KmsMethods, ServiceClient):
    """`KmsClient` for asyncio: the same constructor and methods, each returning an awaitable.

        async with AsyncKmsClient() as kms:
            blob = (await kms.encrypt("alias/orders", b"secret")).ciphertext_blob

    Close it with `await client.close()` or `async with`.
    """

    _stub_class = kms_pb2_grpc.KeyManagementServiceStub
    _channels = grpc.aio

    async def iter_keys(self, *, page_size: int = 0, timeout: float | None = None) -> AsyncIterator[KeyMetadata]:
        """Every key of the tenant, page by page."""
        token = ""
        while True:
            page = await self.list_keys(page_size=page_size, page_token=token, timeout=timeout)
            for key in page.keys:
                yield key
            token = page.next_page_token
            if not token:
                return

    async def close(self) -> None:
        """Close the channels this client opened."""
        for channel in self._private_channels:
            await channel.close()
        if self._own_channel:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncKmsClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def __enter__(self):
        raise TypeError("AsyncKmsClient is used with `async with`; use KmsClient for `with`")

    async def _instance_of(self, route: str | None, backoff: Backoff) -> str:
        key, instance = self._known_instance(route)
        if instance is not None:
            return instance
        try:
            return self._instances.put(await self.describe_key(key, timeout=max(backoff.remaining(), 0.001)), key)
        except KeyrelayError:
            return ""

    async def _run(self, call: _Call, timeout: float | None):
        timeout = self._timeout if timeout is None else timeout
        backoff = Backoff(timeout)
        routes = self._private_routes(call)
        if not routes:
            return await self._attempt(self._stub_for(""), call, backoff)
        instances = [await self._instance_of(route, backoff) for route in routes]
        parts = _split(call, instances)
        if len(parts) == 1:
            return await self._attempt(self._stub_for(parts[0][0]), call, backoff)
        results = await asyncio.gather(
            *(self._attempt(self._stub_for(instance), part, backoff) for instance, part, _ in parts)
        )
        return _merge([(indices, result) for (_, _, indices), result in zip(parts, results)], len(routes))

    async def _attempt(self, target: tuple[Any, Link], call: _Call, backoff: Backoff):
        call.check_size()
        stub, link = target
        metadata = self._metadata(uuid.uuid4().hex)
        method = getattr(stub, call.method)
        previous: KeyrelayError | None = None
        while True:
            try:
                response = await method(call.request, timeout=max(backoff.remaining(), 0.001), metadata=metadata)
            except grpc.RpcError as exc:
                error = link.refusal(exc) if await link.refused_async(exc) else error_from_rpc(exc)
            else:
                link.answered()
                return call.convert(response)
            delay = backoff.next_delay() if _retryable(call, error) else None
            if delay is None:
                raise _final_error(error, previous)
            previous = error
            await asyncio.sleep(delay)
