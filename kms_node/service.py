"""The node's domain logic: key lifecycle and cryptography. No gRPC here.

Every store call runs on the store's worker thread and every HSM call on the HSM pool's
threads; this module only composes them. A key belongs to one tenant: another tenant gets
"not found" for it, exactly as for a key that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable, Mapping, Sequence, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from foundation import blob_formats as blobs
from foundation import encryption_context as contexts
from foundation import page_tokens
from foundation.errors import (
    quote,
    AliasExistsError,
    AliasNotFoundError,
    BatchTooLargeError,
    CiphertextAuthenticationError,
    InvalidArgumentError,
    KeyDisabledError,
    KeyExistsError,
    KeyNotFoundError,
    KeyPendingDeletionError,
    KeyrelayError,
    KeyStateConflictError,
    KeyVersionRetiredError,
    MalformedCiphertextError,
    PayloadTooLargeError,
    SealedRecordMismatchError,
)
from foundation.page_tokens import Listing
from foundation.key_refs import check_alias, check_ref, is_uuid  # noqa: F401 - the node's, too
from foundation.store_workers import StoreWorkers
from foundation.wire import MAX_BATCH_ITEMS
from kms_node.hsm.backend import HsmAuthenticationFailed, HsmBackend, HsmSession, KeyVersionRef
from kms_node.store.base import (
    AliasTaken,
    KeyIdTaken,
    KeyRecord,
    KeyState,
    KeyStore,
    RevisionConflict,
    VersionRecord,
)

log = logging.getLogger(__name__)

MAX_PLAINTEXT_BYTES = 4096
DATA_KEY_SIZES = (16, 32, 64)
MAX_RANDOM_BYTES = 1024
MAX_BUNDLE_BYTES = 16384
MIN_DELETION_DAYS, MAX_DELETION_DAYS, DEFAULT_DELETION_DAYS = 7, 30, 30
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE, MAX_DESCRIPTION = 50, 128, 256, 1024
KEY_SPEC_AES_256 = "AES_256"
_USER_ID = re.compile(r"^[a-z0-9._-]{1,64}$")
_SEALED_DEK_CONTEXT = contexts.encode({"keyrelay:purpose": "sealed-public-key"})
_SEALED_FORMAT = 1
_BATCH_CHUNK = 64
_CAS_ATTEMPTS = 8
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the tenant whose keys the call may touch."""

    tenant_id: str


@dataclass(frozen=True, slots=True)
class CryptoResult:
    """Output of a single crypto operation; `plaintext` empty where none is returned."""

    key_id: str
    key_version: int
    ciphertext: bytes = b""
    plaintext: bytes = b""


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """A sealed public-key record (seed 000): what the directory stores."""

    user_id: str
    bundle_version: int
    sealed_bundle: bytes
    wrapped_dek: bytes


async def retry_on_conflict(
    attempt: Callable[[], Awaitable[T]], exhausted: Callable[[], KeyrelayError], attempts: int = _CAS_ATTEMPTS
) -> T:
    """Run a read-modify-write `attempt` again while it raises RevisionConflict (another writer won
    the race); after `attempts` tries raise `exhausted()`."""
    for tries in range(attempts):
        try:
            return await attempt()
        except RevisionConflict:
            await _conflict_pause(tries)
    raise exhausted()


async def _conflict_pause(tries: int) -> None:
    """A short random pause after a lost compare-and-set, growing with the losses, so writers
    racing on one key (on several replicas) do not keep colliding in step."""
    await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * 2**tries)))


def _fmt_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def clamp_page_size(requested: int) -> int:
    """The page size to use for a requested one: 0 means 100, at most 1000."""
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _check_context(context: Mapping[str, str]) -> bytes:
    contexts.validate(context)
    return contexts.encode(context)


def _check_plaintext(plaintext: bytes) -> None:
    if not plaintext:
        raise InvalidArgumentError("plaintext is empty; Encrypt needs 1 to 4096 bytes")
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise PayloadTooLargeError(
            f"plaintext is {len(plaintext)} bytes; Encrypt takes at most {MAX_PLAINTEXT_BYTES}. "
            "For larger data use envelope encryption: GenerateDataKey, then encrypt locally"
        )


def _check_batch(items: Sequence) -> None:
    if not items:
        raise InvalidArgumentError("the batch is empty; send 1 to 1000 items")
    if len(items) > MAX_BATCH_ITEMS:
        raise BatchTooLargeError(
            f"the batch has {len(items)} items; at most {MAX_BATCH_ITEMS} are allowed per call: split it"
        )


def _data_key_size(number_of_bytes: int) -> int:
    size = number_of_bytes or 32
    if size not in DATA_KEY_SIZES:
        raise InvalidArgumentError(f"number_of_bytes must be 16, 32 or 64 (got {number_of_bytes})")
    return size


def _require_usable(record: KeyRecord) -> None:
    if record.state == KeyState.ENABLED:
        return
    if record.state == KeyState.DISABLED:
        raise KeyDisabledError(f"key {record.key_id} is disabled; enable it (EnableKey) before using it")
    if record.state == KeyState.PENDING_DELETION:
        raise KeyPendingDeletionError(
            f"key {record.key_id} is scheduled for deletion on {_fmt_time(record.deletion_time or 0)}; "
            "cancel the deletion (CancelKeyDeletion) and enable it to use it"
        )
    raise KeyStateConflictError(f"key {record.key_id} is still being created; retry shortly")


def _not_pending(record: KeyRecord, action: str) -> None:
    if record.state == KeyState.PENDING_DELETION:
        raise KeyPendingDeletionError(
            f"key {record.key_id} is scheduled for deletion; cancel the deletion (CancelKeyDeletion) before you {action}"
        )


def _ref(record: KeyRecord, version: int) -> KeyVersionRef:
    stored = record.version(version)
    if stored is None:
        raise MalformedCiphertextError(
            f"the ciphertext names version {version} of key {record.key_id}, which has versions "
            f"1-{record.primary_version}; the blob was altered or is not from this KMS"
        )
    return KeyVersionRef(record.key_id, version, stored.wrapped)


def _encrypt_with(session: HsmSession, ref: KeyVersionRef, plaintext: bytes, aad_context: bytes) -> bytes:
    iv = os.urandom(blobs.IV_BYTES)
    header = blobs.encode_header(ref.key_id, ref.version, iv)
    return header + session.encrypt(ref, iv, plaintext, header + aad_context)


def _decrypt_with(
    session: HsmSession, ref: KeyVersionRef, parsed: blobs.CiphertextBlob, aad_context: bytes
) -> bytes:
    return session.decrypt(ref, parsed.iv, parsed.ciphertext, parsed.header + aad_context)


def _authentication_error(parsed: blobs.CiphertextBlob) -> CiphertextAuthenticationError:
    return CiphertextAuthenticationError(
        f"the ciphertext did not authenticate under version {parsed.version} of key {parsed.key_id}: "
        "either it was altered, or the encryption context differs from the one given when it was made"
    )


class KeyService:
    """Key lifecycle and cryptography over a key store and an HSM pool.

    On a shared node the store also holds the registry records of dedicated keys (rows with an
    `instance_id`): DescribeKey and ListKeys show them, every other operation refuses them
    (KEY_STATE_CONFLICT, naming the instance), and the deletion sweep leaves them alone.
    """

    def __init__(
        self,
        store: KeyStore,
        hsm: HsmBackend,
        *,
        mode: str = "shared",
        instance_id: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._hsm = hsm
        self._mode = mode
        self._instance_id = instance_id
        self._clock = clock
        self._db = StoreWorkers()

    def close(self) -> None:
        """Stop the store worker threads (the store and HSM are closed by their owners)."""
        self._db.close()

    # -- resolution -------------------------------------------------------------------------

    def _is_local(self, record: KeyRecord) -> bool:
        """Whether this node's pool holds the key (it is not a registry record of a dedicated key)."""
        return record.instance_id == self._instance_id

    def _require_local(self, record: KeyRecord) -> None:
        if not self._is_local(record):
            raise KeyStateConflictError(
                f"key {record.key_id} lives on dedicated instance {record.instance_id}; send requests for it "
                "through the gateway or the instance's private endpoint"
            )

    def _lookup_blocking(self, caller: Caller, ref: str, local: bool = True) -> KeyRecord:
        """The caller's key named by id or alias; with `local`, refuse registry records."""
        key_id = ref
        if ref.startswith("alias/"):
            found = self._store.resolve_alias(caller.tenant_id, ref)
            if found is None:
                raise AliasNotFoundError(f"no key has the alias {quote(ref)} in tenant {quote(caller.tenant_id)}")
            key_id = found
        record = self._store.get_key(key_id)
        if record is None or record.tenant_id != caller.tenant_id:
            raise KeyNotFoundError(f"no key {quote(ref)} exists in tenant {quote(caller.tenant_id)}")
        if record.state == KeyState.CREATING:
            raise KeyStateConflictError(f"key {record.key_id} is still being created; retry shortly")
        if local:
            self._require_local(record)
        return record

    async def _lookup(self, caller: Caller, ref: str, *, local: bool = True) -> KeyRecord:
        check_ref(ref)
        return await self._db(self._lookup_blocking, caller, ref, local)

    async def _lookup_for_ciphertext(self, caller: Caller, parsed: blobs.CiphertextBlob) -> KeyVersionRef:
        record = await self._db(self._lookup_blocking, caller, parsed.key_id)
        return self._decryption_ref(record, parsed)

    @staticmethod
    def _decryption_ref(record: KeyRecord, parsed: blobs.CiphertextBlob) -> KeyVersionRef:
        _require_usable(record)
        if parsed.version < record.min_decryption_version:
            raise KeyVersionRetiredError(
                f"the ciphertext uses version {parsed.version} of key {record.key_id}, below its minimum "
                f"decryption version {record.min_decryption_version}; lower it with UpdateKey to decrypt"
            )
        return _ref(record, parsed.version)

    async def _modify(self, caller: Caller, ref: str, change: Callable[[KeyRecord], KeyRecord | None]) -> KeyRecord:
        """Read-modify-write a key with compare-and-set; `change` returns None for no change."""

        async def attempt() -> KeyRecord:
            record = await self._lookup(caller, ref)
            updated = change(record)
            return record if updated is None else await self._db(self._store.update_key, updated)

        return await retry_on_conflict(
            attempt, lambda: KeyStateConflictError(f"key {ref} is being changed by other requests; retry")
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def create_key(
        self,
        caller: Caller,
        *,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        alias: str = "",
        instance_id: str = "",
        key_spec: str = KEY_SPEC_AES_256,
        key_id: str = "",
    ) -> KeyRecord:
        """Generate a CMK in the HSM and record the key (and alias) for the caller's tenant."""
        tags = dict(tags or {})
        if len(description) > MAX_DESCRIPTION:
            raise InvalidArgumentError(f"description is {len(description)} characters; at most {MAX_DESCRIPTION}")
        if len(tags) > MAX_TAGS:
            raise InvalidArgumentError(f"a key takes at most {MAX_TAGS} tags (got {len(tags)})")
        for tag_key, tag_value in tags.items():
            if not 1 <= len(tag_key) <= MAX_TAG_KEY or len(tag_value) > MAX_TAG_VALUE:
                raise InvalidArgumentError(
                    f"tag {quote(tag_key)}: keys are 1-{MAX_TAG_KEY} characters, values at most {MAX_TAG_VALUE}"
                )
        if alias:
            check_alias(alias)
        if key_spec != KEY_SPEC_AES_256:
            raise InvalidArgumentError(f"key_spec {key_spec} is not supported; use KEY_SPEC_AES_256")
        if self._mode == "shared" and instance_id:
            raise InvalidArgumentError(
                f"this is a shared KMS node; keys of dedicated instance {quote(instance_id)} are created through "
                "the gateway or on the instance's own node"
            )
        if self._mode == "dedicated" and instance_id and instance_id != self._instance_id:
            raise InvalidArgumentError(
                f"this node serves dedicated instance {quote(self._instance_id)}, not {quote(instance_id)}"
            )
        if key_id and not is_uuid(key_id):
            raise InvalidArgumentError(f"key_id {quote(key_id)} must be a lower-case UUID")
        if key_id:
            # A retry of a create this node already made (the gateway names the key id it
            # reserved): answered before the alias, which that create took, is checked, so the
            # gateway learns the key exists and completes its reservation instead of aborting it.
            existing = await self._db(self._store.get_key, key_id)
            if existing is not None:
                raise KeyExistsError(f"a key with id {key_id} exists already")
        key_id = key_id or str(uuid.uuid4())
        wrapped = await self._hsm.run(lambda session: session.generate_wrapped_key())
        now = self._clock()
        record = KeyRecord(
            key_id=key_id,
            tenant_id=caller.tenant_id,
            description=description,
            tags=tags,
            state=KeyState.ENABLED,
            instance_id=self._instance_id,
            key_spec=key_spec,
            primary_version=1,
            min_decryption_version=1,
            create_time=now,
            versions=(VersionRecord(1, now, wrapped),),
        )
        try:
            created = await self._db(self._store.create_key, record, alias or None)
        except AliasTaken:
            raise AliasExistsError(f"alias {quote(alias)} is taken in tenant {quote(caller.tenant_id)}; choose another") from None
        except KeyIdTaken:
            raise KeyExistsError(f"a key with id {key_id} exists already") from None
        log.info("created key %s for tenant %s", key_id, caller.tenant_id)
        return created

    async def describe_key(self, caller: Caller, ref: str) -> KeyRecord:
        """The key's metadata (on a shared node also a dedicated key's, from the registry)."""
        return await self._lookup(caller, ref, local=False)

    async def list_keys(self, caller: Caller, page_size: int = 0, page_token: str = "") -> tuple[list[KeyRecord], str]:
        """One page of the caller's keys and the token of the next page ('' on the last)."""
        size = clamp_page_size(page_size)
        after = None
        if page_token:
            after = page_tokens.decode(Listing.KEYS, page_token)
        records = await self._db(self._store.list_keys, caller.tenant_id, after, size + 1)
        next_token = ""
        if len(records) > size:
            records = records[:size]
            next_token = page_tokens.encode(Listing.KEYS, (records[-1].create_time, records[-1].key_id))
        return records, next_token

    async def enable_key(self, caller: Caller, ref: str) -> KeyRecord:
        """Enable a disabled key (no change if enabled)."""

        def change(record: KeyRecord) -> KeyRecord | None:
            _not_pending(record, "enable it")
            return None if record.state == KeyState.ENABLED else record.evolve(state=KeyState.ENABLED)

        return await self._modify(caller, ref, change)

    async def disable_key(self, caller: Caller, ref: str) -> KeyRecord:
        """Disable a key: it refuses cryptography until enabled again."""

        def change(record: KeyRecord) -> KeyRecord | None:
            _not_pending(record, "disable it")
            return None if record.state == KeyState.DISABLED else record.evolve(state=KeyState.DISABLED)

        return await self._modify(caller, ref, change)

    async def schedule_key_deletion(self, caller: Caller, ref: str, pending_window_days: int = 0) -> KeyRecord:
        """Schedule deletion after 7-30 days (default 30); the key refuses cryptography meanwhile."""
        days = pending_window_days or DEFAULT_DELETION_DAYS
        if not MIN_DELETION_DAYS <= days <= MAX_DELETION_DAYS:
            raise InvalidArgumentError(
                f"pending_window_days must be {MIN_DELETION_DAYS}-{MAX_DELETION_DAYS} (got {pending_window_days})"
            )

        def change(record: KeyRecord) -> KeyRecord:
            _not_pending(record, "schedule it again")
            return record.evolve(state=KeyState.PENDING_DELETION, deletion_time=self._clock() + days * 86400)

        return await self._modify(caller, ref, change)

    async def cancel_key_deletion(self, caller: Caller, ref: str) -> KeyRecord:
        """Cancel a scheduled deletion; the key returns DISABLED."""

        def change(record: KeyRecord) -> KeyRecord:
            if record.state != KeyState.PENDING_DELETION:
                raise KeyStateConflictError(f"key {record.key_id} is not scheduled for deletion")
            return record.evolve(state=KeyState.DISABLED, deletion_time=None)

        return await self._modify(caller, ref, change)

    async def rotate_key(self, caller: Caller, ref: str) -> KeyRecord:
        """Add a new CMK version and make it primary; earlier versions still decrypt."""
        record = await self._lookup(caller, ref)
        _require_usable(record)
        wrapped = await self._hsm.run(lambda session: session.generate_wrapped_key())
        for tries in range(_CAS_ATTEMPTS):
            _require_usable(record)
            new_version = VersionRecord(record.primary_version + 1, self._clock(), wrapped)
            try:
                updated = await self._db(
                    self._store.update_key, record.evolve(primary_version=new_version.version), new_version
                )
            except RevisionConflict:
                await _conflict_pause(tries)
                record = await self._lookup(caller, record.key_id)
                continue
            log.info("rotated key %s to version %d", record.key_id, new_version.version)
            return updated
        raise KeyStateConflictError(f"key {ref} is being changed by other requests; retry")

    async def update_key(
        self, caller: Caller, ref: str, *, description: str | None = None, min_decryption_version: int | None = None
    ) -> KeyRecord:
        """Change the description and/or the minimum decryption version."""
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise InvalidArgumentError(f"description is {len(description)} characters; at most {MAX_DESCRIPTION}")

        def change(record: KeyRecord) -> KeyRecord | None:
            _not_pending(record, "update it")
            changes = {}
            if description is not None:
                changes["description"] = description
            if min_decryption_version is not None:
                if not 1 <= min_decryption_version <= record.primary_version:
                    raise InvalidArgumentError(
                        f"min_decryption_version must be 1-{record.primary_version} for key {record.key_id} "
                        f"(got {min_decryption_version})"
                    )
                changes["min_decryption_version"] = min_decryption_version
            return record.evolve(**changes) if changes else None

        return await self._modify(caller, ref, change)

    async def create_alias(self, caller: Caller, alias: str, ref: str) -> KeyRecord:
        """Point a new alias at a key of the caller's tenant."""
        check_alias(alias)

        async def attempt() -> KeyRecord:
            # Compare-and-set on the key's revision, like every other change of a key: an alias
            # never lands on a key another replica scheduled for deletion (or purged) meanwhile.
            record = await self._lookup(caller, ref)
            _not_pending(record, "alias it")
            if alias in record.aliases:
                raise AliasExistsError(f"alias {quote(alias)} is taken: it already points at key {record.key_id}")
            try:
                return await self._db(self._store.replace_aliases, record, (*record.aliases, alias))
            except AliasTaken:
                raise AliasExistsError(
                    f"alias {quote(alias)} is taken in tenant {quote(caller.tenant_id)}; delete it first"
                ) from None

        return await retry_on_conflict(
            attempt, lambda: KeyStateConflictError(f"key {ref} is being changed by other requests; retry")
        )

    async def delete_alias(self, caller: Caller, alias: str) -> str:
        """Remove an alias; returns the key id it pointed to."""
        check_alias(alias)
        key_id = await self._db(self._delete_alias_blocking, caller, alias)
        if key_id is None:
            raise AliasNotFoundError(f"no alias {quote(alias)} exists in tenant {quote(caller.tenant_id)}")
        return key_id

    def _delete_alias_blocking(self, caller: Caller, alias: str) -> str | None:
        key_id = self._store.resolve_alias(caller.tenant_id, alias)
        record = self._store.get_key(key_id) if key_id else None
        if record is not None:
            self._require_local(record)
        return self._store.delete_alias(caller.tenant_id, alias)

    async def purge_due_keys(self) -> int:
        """Delete keys whose deletion time has passed; returns how many were deleted."""
        purged = 0
        for key_id in await self._db(self._store.keys_due_for_deletion, self._clock()):
            record = await self._db(self._store.get_key, key_id)
            if record and record.state == KeyState.PENDING_DELETION and self._is_local(record):
                if await self._db(self._store.delete_key, key_id, record.revision):
                    purged += 1
                    log.info("deleted key %s at the end of its deletion window", key_id)
        return purged

    # -- cryptography -----------------------------------------------------------------------

    async def encrypt(
        self, caller: Caller, ref: str, plaintext: bytes, context: Mapping[str, str]
    ) -> CryptoResult:
        """Encrypt up to 4096 bytes under the key's primary version."""
        _check_plaintext(plaintext)
        aad = _check_context(context)
        record = await self._lookup(caller, ref)
        _require_usable(record)
        key = _ref(record, record.primary_version)
        blob = await self._hsm.run(lambda session: _encrypt_with(session, key, plaintext, aad))
        return CryptoResult(record.key_id, key.version, ciphertext=blob)

    async def decrypt(
        self, caller: Caller, ciphertext: bytes, context: Mapping[str, str], expected_ref: str = ""
    ) -> CryptoResult:
        """Decrypt a ciphertext blob made by Encrypt or GenerateDataKey."""
        parsed = blobs.parse_ciphertext(ciphertext)
        aad = _check_context(context)
        if expected_ref:
            expected = await self._lookup(caller, expected_ref)
            if expected.key_id != parsed.key_id:
                raise InvalidArgumentError(
                    f"the ciphertext was made under key {parsed.key_id}, not {expected.key_id} named in key_id"
                )
        key = await self._lookup_for_ciphertext(caller, parsed)
        try:
            plaintext = await self._hsm.run(lambda session: _decrypt_with(session, key, parsed, aad))
        except HsmAuthenticationFailed:
            raise _authentication_error(parsed) from None
        return CryptoResult(parsed.key_id, parsed.version, plaintext=plaintext)

    async def re_encrypt(
        self,
        caller: Caller,
        ciphertext: bytes,
        source_context: Mapping[str, str],
        destination_ref: str,
        destination_context: Mapping[str, str],
    ) -> tuple[CryptoResult, CryptoResult]:
        """Decrypt and encrypt again under another key (or version) without the plaintext leaving
        the node. Returns (source, destination) results; the destination carries the ciphertext."""
        parsed = blobs.parse_ciphertext(ciphertext)
        source_aad = _check_context(source_context)
        destination_aad = _check_context(destination_context)
        source = await self._lookup_for_ciphertext(caller, parsed)
        destination_record = await self._lookup(caller, destination_ref)
        _require_usable(destination_record)
        destination = _ref(destination_record, destination_record.primary_version)

        def work(session: HsmSession) -> bytes:
            plaintext = _decrypt_with(session, source, parsed, source_aad)
            return _encrypt_with(session, destination, plaintext, destination_aad)

        try:
            blob = await self._hsm.run(work)
        except HsmAuthenticationFailed:
            raise _authentication_error(parsed) from None
        return (
            CryptoResult(parsed.key_id, parsed.version),
            CryptoResult(destination.key_id, destination.version, ciphertext=blob),
        )

    async def generate_data_key(
        self, caller: Caller, ref: str, number_of_bytes: int, context: Mapping[str, str], *, with_plaintext: bool = True
    ) -> CryptoResult:
        """A fresh data key from the HSM's generator, and that key encrypted under the CMK."""
        size = _data_key_size(number_of_bytes)
        aad = _check_context(context)
        record = await self._lookup(caller, ref)
        _require_usable(record)
        key = _ref(record, record.primary_version)

        def work(session: HsmSession) -> tuple[bytes, bytes]:
            data_key = session.random(size)
            return data_key, _encrypt_with(session, key, data_key, aad)

        data_key, blob = await self._hsm.run(work)
        return CryptoResult(record.key_id, key.version, ciphertext=blob, plaintext=data_key if with_plaintext else b"")

    async def generate_random(self, number_of_bytes: int) -> bytes:
        """1-1024 random bytes from the HSM."""
        if not 1 <= number_of_bytes <= MAX_RANDOM_BYTES:
            raise InvalidArgumentError(f"number_of_bytes must be 1-{MAX_RANDOM_BYTES} (got {number_of_bytes})")
        return await self._hsm.run(lambda session: session.random(number_of_bytes))

    async def batch_decrypt(
        self, caller: Caller, items: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[CryptoResult | KeyrelayError]:
        """Decrypt up to 1000 blobs; each result is a CryptoResult or the item's own error."""
        _check_batch(items)
        results: list[CryptoResult | KeyrelayError | None] = [None] * len(items)
        prepared: list[tuple[int, blobs.CiphertextBlob, bytes]] = []
        for index, (ciphertext, context) in enumerate(items):
            try:
                prepared.append((index, blobs.parse_ciphertext(ciphertext), _check_context(context)))
            except KeyrelayError as exc:
                results[index] = exc
        records = await self._db(self._lookup_many, caller, {parsed.key_id for _, parsed, _ in prepared})
        jobs = []
        for index, parsed, aad in prepared:
            try:
                record = records[parsed.key_id]
                if isinstance(record, KeyrelayError):
                    raise record
                jobs.append((index, self._decryption_ref(record, parsed), parsed, aad))
            except KeyrelayError as exc:
                results[index] = exc

        def run_chunk(chunk):
            def work(session: HsmSession) -> list[tuple[int, CryptoResult | KeyrelayError]]:
                done = []
                for index, key, parsed, aad in chunk:
                    try:
                        plaintext = _decrypt_with(session, key, parsed, aad)
                        done.append((index, CryptoResult(parsed.key_id, parsed.version, plaintext=plaintext)))
                    except HsmAuthenticationFailed:
                        done.append((index, _authentication_error(parsed)))
                return done

            return work

        for index, outcome in await self._run_chunks(jobs, run_chunk):
            results[index] = outcome
        return results  # type: ignore[return-value]

    async def batch_generate_data_key(
        self, caller: Caller, items: Sequence[tuple[str, int, Mapping[str, str]]]
    ) -> list[CryptoResult | KeyrelayError]:
        """Generate up to 1000 data keys; each result is a CryptoResult or the item's own error."""
        _check_batch(items)
        results: list[CryptoResult | KeyrelayError | None] = [None] * len(items)
        prepared = []
        for index, (ref, number_of_bytes, context) in enumerate(items):
            try:
                check_ref(ref)
                prepared.append((index, ref, _data_key_size(number_of_bytes), _check_context(context)))
            except KeyrelayError as exc:
                results[index] = exc
        records = await self._db(self._lookup_many, caller, {ref for _, ref, _, _ in prepared})
        jobs = []
        for index, ref, size, aad in prepared:
            try:
                record = records[ref]
                if isinstance(record, KeyrelayError):
                    raise record
                _require_usable(record)
                jobs.append((index, _ref(record, record.primary_version), size, aad))
            except KeyrelayError as exc:
                results[index] = exc

        def run_chunk(chunk):
            def work(session: HsmSession):
                done = []
                for index, key, size, aad in chunk:
                    data_key = session.random(size)
                    blob = _encrypt_with(session, key, data_key, aad)
                    done.append((index, CryptoResult(key.key_id, key.version, ciphertext=blob, plaintext=data_key)))
                return done

            return work

        for index, outcome in await self._run_chunks(jobs, run_chunk):
            results[index] = outcome
        return results  # type: ignore[return-value]

    def _lookup_many(self, caller: Caller, refs: set[str]) -> dict[str, KeyRecord | KeyrelayError]:
        found: dict[str, KeyRecord | KeyrelayError] = {}
        for ref in refs:
            try:
                found[ref] = self._lookup_blocking(caller, ref)
            except KeyrelayError as exc:
                found[ref] = exc
        return found

    async def _run_chunks(self, jobs: list, make_work) -> list:
        chunks = [jobs[i : i + _BATCH_CHUNK] for i in range(0, len(jobs), _BATCH_CHUNK)]
        outcomes = await asyncio.gather(*(self._hsm.run(make_work(chunk)) for chunk in chunks))
        return [item for chunk in outcomes for item in chunk]

    # -- sealed public keys (seed 000) ------------------------------------------------------

    @staticmethod
    def _bundle_aad(user_id: str, bundle_version: int, key_id: str) -> bytes:
        return contexts.encode(
            {
                "keyrelay:purpose": "public-key-bundle",
                "keyrelay:user_id": user_id,
                "keyrelay:bundle_version": str(bundle_version),
                "keyrelay:kms_key_id": key_id,
            }
        )

    async def seal_public_key(
        self, caller: Caller, ref: str, user_id: str, bundle: bytes, bundle_version: int
    ) -> tuple[SealedRecord, CryptoResult]:
        """Encrypt a public-key bundle under a fresh DEK bound to (user, version, key) and wrap the
        DEK under the CMK. Neither is stored here."""
        if not _USER_ID.fullmatch(user_id):
            raise InvalidArgumentError(f"user_id {quote(user_id)} must be 1-64 of a-z 0-9 . _ -")
        if not bundle:
            raise InvalidArgumentError("public_key_bundle is empty")
        if len(bundle) > MAX_BUNDLE_BYTES:
            raise PayloadTooLargeError(f"public_key_bundle is {len(bundle)} bytes; at most {MAX_BUNDLE_BYTES}")
        if bundle_version < 1:
            raise InvalidArgumentError("bundle_version must be 1 or more")
        record = await self._lookup(caller, ref)
        _require_usable(record)
        key = _ref(record, record.primary_version)

        def work(session: HsmSession) -> tuple[bytes, bytes]:
            dek = session.random(32)
            return dek, _encrypt_with(session, key, dek, _SEALED_DEK_CONTEXT)

        dek, wrapped_dek = await self._hsm.run(work)
        nonce = os.urandom(12)
        sealed = bytes([_SEALED_FORMAT]) + nonce + AESGCM(dek).encrypt(
            nonce, bundle, self._bundle_aad(user_id, bundle_version, record.key_id)
        )
        del dek
        return (
            SealedRecord(user_id, bundle_version, sealed, wrapped_dek),
            CryptoResult(record.key_id, key.version),
        )

    async def open_public_key(self, caller: Caller, sealed: SealedRecord) -> CryptoResult:
        """Open a sealed record; refuse it unless it was sealed for exactly this user, version and key."""
        parsed = blobs.parse_ciphertext(sealed.wrapped_dek)
        key = await self._lookup_for_ciphertext(caller, parsed)
        try:
            dek = await self._hsm.run(lambda session: _decrypt_with(session, key, parsed, _SEALED_DEK_CONTEXT))
        except HsmAuthenticationFailed:
            raise SealedRecordMismatchError(
                "the sealed record's wrapped DEK did not authenticate: it was altered or not sealed by this KMS"
            ) from None
        body = sealed.sealed_bundle
        try:
            if len(body) < 1 + 12 + 16 or body[0] != _SEALED_FORMAT:
                raise InvalidTag()
            bundle = AESGCM(dek).decrypt(
                body[1:13], body[13:], self._bundle_aad(sealed.user_id, sealed.bundle_version, parsed.key_id)
            )
        except InvalidTag:
            raise SealedRecordMismatchError(
                f"the sealed record does not open as user {quote(sealed.user_id)}, bundle version "
                f"{sealed.bundle_version}: it was sealed for another user or version, or altered. "
                "Do not trust this directory entry"
            ) from None
        return CryptoResult(parsed.key_id, parsed.version, plaintext=bundle)
