"""The key registry of the shared KMS: where every key of every tenant lives. No gRPC here.

Registry records are rows of the key store: a shared key is its own record, and a dedicated key's
record is a row with `instance_id` set and no versions. So an alias is unique in its tenant across
shared and dedicated keys alike.

Creating a dedicated key is a reservation: `reserve` (state CREATING, key id assigned), the
gateway creates the key on the dedicated node under that id, then `commit` (ENABLED) or, if that
failed, `abort` (the reservation and its alias are gone). The gateway mirrors every later state
and alias change with `update_record`. See `keyrelay.v1.KeyRegistryService`.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Callable, Sequence

from foundation.errors import (
    quote,
    AliasExistsError,
    AliasNotFoundError,
    InstanceNotFoundError,
    InvalidArgumentError,
    KeyExistsError,
    KeyNotFoundError,
    KeyStateConflictError,
    RevisionConflictError,
)
from foundation.store_workers import StoreWorkers
from kms_node.service import KEY_SPEC_AES_256, check_alias, check_ref, retry_on_conflict
from kms_node.store.admin_base import AdminStore
from kms_node.store.base import (
    AliasTaken,
    KeyIdTaken,
    KeyRecord,
    KeyState,
    KeyStore,
    RequestIdTaken,
    RevisionConflict,
)

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 128
#: States UpdateKeyRecord may set.
RECORD_STATES = (KeyState.ENABLED, KeyState.DISABLED, KeyState.PENDING_DELETION)


def _check_tenant(tenant_id: str) -> None:
    if not tenant_id:
        raise InvalidArgumentError("tenant_id is required: the tenant of the original caller")


class KeyRegistry:
    """Resolve, reserve, commit, abort and update registry records.

    `admin` is the control-plane store, asked which instances exist and whose they are.
    """

    def __init__(self, store: KeyStore, admin: AdminStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._admin = admin
        self._clock = clock
        self._db = StoreWorkers(name="registry")

    def close(self) -> None:
        """Stop the worker threads (the stores are closed by their owners)."""
        self._db.close()

    # -- reads ------------------------------------------------------------------------------

    def _resolve_blocking(self, tenant_id: str, ref: str) -> KeyRecord:
        key_id = ref
        if ref.startswith("alias/"):
            key_id = self._store.resolve_alias(tenant_id, ref)
            if key_id is None:
                raise AliasNotFoundError(f"no key has the alias {quote(ref)} in tenant {quote(tenant_id)}")
        record = self._store.get_key(key_id)
        if record is None or record.tenant_id != tenant_id:
            raise KeyNotFoundError(f"no key {quote(ref)} exists in tenant {quote(tenant_id)}")
        return record

    async def resolve(self, tenant_id: str, ref: str) -> KeyRecord:
        """The record of a tenant's key named by id or `alias/NAME`, in any state (CREATING
        included), on the shared pool or a dedicated instance."""
        _check_tenant(tenant_id)
        check_ref(ref)
        return await self._db(self._resolve_blocking, tenant_id, ref)

    def _get_blocking(self, key_id: str) -> KeyRecord:
        record = self._store.get_key(key_id)
        if record is None:
            raise KeyNotFoundError(f"no key {quote(key_id)} is in the registry")
        if not record.instance_id:
            raise KeyStateConflictError(
                f"key {key_id} is on the shared pool, not a dedicated instance; its record changes only "
                "through the shared KMS's own KeyManagementService"
            )
        return record

    # -- the reservation protocol -----------------------------------------------------------

    def _reserve_blocking(self, record: KeyRecord, alias: str, request_id: str) -> KeyRecord:
        instance = self._admin.get_instance(record.instance_id)
        if instance is None or instance.tenant_id != record.tenant_id:
            raise InstanceNotFoundError(
                f"no dedicated instance {quote(record.instance_id)} is registered for tenant {quote(record.tenant_id)}"
            )
        return self._store.reserve_key(record, alias or None, request_id)

    async def reserve(self, tenant_id: str, instance_id: str, alias: str, request_id: str) -> KeyRecord:
        """Reserve a new key id (state CREATING) and its alias on a dedicated instance of the
        tenant. Idempotent on the tenant's `request_id`: a retry with the same instance and alias
        returns the same reservation; another instance or alias is refused (InvalidArgumentError)."""
        _check_tenant(tenant_id)
        if not 1 <= len(request_id) <= MAX_REQUEST_ID:
            raise InvalidArgumentError(f"request_id must be 1-{MAX_REQUEST_ID} characters (got {len(request_id)})")
        if alias:
            check_alias(alias)
        if not instance_id:
            raise InvalidArgumentError(
                "instance_id is empty: only keys of dedicated instances are reserved; create shared keys "
                "with CreateKey on the shared KMS"
            )
        now = self._clock()
        record = KeyRecord(
            key_id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            description="",
            tags={},
            state=KeyState.CREATING,
            instance_id=instance_id,
            key_spec=KEY_SPEC_AES_256,
            primary_version=0,
            min_decryption_version=0,
            create_time=now,
            update_time=now,
        )
        try:
            reserved = await self._db(self._reserve_blocking, record, alias, request_id)
        except AliasTaken:
            raise AliasExistsError(f"alias {quote(alias)} is taken in tenant {quote(tenant_id)}; choose another") from None
        except RequestIdTaken as taken:
            earlier = taken.args[0]
            raise InvalidArgumentError(
                f"request_id {quote(request_id)} reserved key {earlier.key_id} on instance {quote(earlier.instance_id)} "
                f"with alias {quote(earlier.alias or '(none)')}; a retry must name the same instance and alias: use a fresh "
                "request id for another key"
            ) from None
        except KeyIdTaken:  # a UUID collision: practically never
            raise KeyExistsError(f"key id {record.key_id} is taken; retry") from None
        if reserved.key_id == record.key_id:
            log.info("reserved key %s on instance %s for tenant %s", reserved.key_id, instance_id, tenant_id)
        return reserved

    @staticmethod
    def _busy(key_id: str) -> Callable[[], RevisionConflictError]:
        return lambda: RevisionConflictError(f"the record of key {key_id} is being changed by other requests; retry")

    async def commit(self, key_id: str) -> KeyRecord:
        """Mark a reservation ENABLED; a committed key's record is returned unchanged."""

        async def attempt() -> KeyRecord:
            record = await self._db(self._get_blocking, key_id)
            if record.state != KeyState.CREATING:
                return record
            committed = await self._db(self._store.update_key, record.evolve(state=KeyState.ENABLED))
            log.info("committed key %s on instance %s", key_id, record.instance_id)
            return committed

        return await retry_on_conflict(attempt, self._busy(key_id))

    async def abort(self, key_id: str) -> None:
        """Remove a CREATING reservation and its alias. KeyNotFoundError if it is gone already."""

        async def attempt() -> None:
            record = await self._db(self._get_blocking, key_id)
            if record.state != KeyState.CREATING:
                raise KeyStateConflictError(
                    f"key {key_id} is committed already ({record.state}); schedule its deletion instead"
                )
            if not await self._db(self._store.delete_key, key_id, record.revision):
                raise RevisionConflict(key_id)
            log.info("aborted the reservation of key %s", key_id)

        await retry_on_conflict(attempt, self._busy(key_id))

    # -- mirroring changes --------------------------------------------------------------------

    async def update_record(
        self, key_id: str, state: str, aliases: Sequence[str], expected_revision: int = 0
    ) -> KeyRecord:
        """Replace a dedicated key's state and complete alias set. With `expected_revision`
        (non-zero) the update applies only to that revision, else RevisionConflictError."""
        if state not in RECORD_STATES:
            raise InvalidArgumentError(f"state must be ENABLED, DISABLED or PENDING_DELETION (got {state or 'none'})")
        for alias in aliases:
            check_alias(alias)

        async def attempt() -> KeyRecord:
            record = await self._db(self._get_blocking, key_id)
            if record.state == KeyState.CREATING:
                raise KeyStateConflictError(f"key {key_id} is still reserved; commit it (CommitKey) first")
            if expected_revision and record.revision != expected_revision:
                raise RevisionConflictError(
                    f"the record of key {key_id} is at revision {record.revision}, not {expected_revision}; "
                    "re-read it and retry"
                )
            try:
                return await self._db(self._store.replace_aliases, record.evolve(state=state), aliases)
            except AliasTaken as taken:
                raise AliasExistsError(
                    f"alias {quote(taken.args[0])} belongs to another key of tenant {quote(record.tenant_id)}"
                ) from None

        return await retry_on_conflict(attempt, self._busy(key_id))
