"""Unit tests of kms_node/registry.py (the key registry of the shared KMS) and of how the shared
node's KeyService treats registry records of dedicated keys. Real SQLite files, fake HSM."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fake_clock import T0, Clock
from fake_hsm import FakeHsm
from foundation.errors import (
    AliasExistsError,
    AliasNotFoundError,
    InstanceNotFoundError,
    InvalidArgumentError,
    KeyNotFoundError,
    KeyStateConflictError,
    RevisionConflictError,
)
from kms_node.registry import KeyRegistry
from kms_node.service import Caller, KeyService
from kms_node.store.admin_base import Instance
from kms_node.store.admin_sql import SqlAdminStore
from kms_node.store.base import KeyState
from kms_node.store.sql import SqlKeyStore

DAY = 86400.0
A, B = Caller("acme"), Caller("globex")
DEDICATED, DEDICATED_2 = "acme-ded", "acme-ded-2"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def stores(tmp_path, clock):
    path = str(tmp_path / "shared.db")
    keys, admin = SqlKeyStore(path, clock=clock), SqlAdminStore(path)
    for instance_id, tenant in ((DEDICATED, "acme"), (DEDICATED_2, "acme"), ("globex-ded", "globex")):
        admin.add_instance(Instance(instance_id, tenant, ("10.0.0.1:7101",), "10.0.0.1:7201", (), False, T0))
    yield keys, admin
    keys.close()
    admin.close()


@pytest.fixture
def registry(stores, clock):
    reg = KeyRegistry(*stores, clock=clock)
    yield reg
    reg.close()


@pytest.fixture
def service(stores, clock):
    svc = KeyService(stores[0], FakeHsm(), clock=clock)
    yield svc
    svc.close()


async def committed(registry, alias: str = "alias/ded", request_id: str | None = None):
    reserved = await registry.reserve("acme", DEDICATED, alias, request_id or uuid.uuid4().hex)
    return await registry.commit(reserved.key_id)


# -- resolve ------------------------------------------------------------------------------------


async def test_resolve_shared_and_dedicated_keys_by_id_and_alias(registry, service):
    """Shared keys and dedicated records resolve by id and alias; a reservation resolves too."""
    shared = await service.create_key(A, alias="alias/shared")
    assert (await registry.resolve("acme", "alias/shared")).key_id == shared.key_id
    resolved = await registry.resolve("acme", shared.key_id)
    assert resolved.instance_id == "" and resolved.state == KeyState.ENABLED

    reserved = await registry.reserve("acme", DEDICATED, "alias/ded", "r-1")
    creating = await registry.resolve("acme", "alias/ded")
    assert (creating.key_id, creating.state, creating.instance_id) == (reserved.key_id, KeyState.CREATING, DEDICATED)


async def test_resolve_errors(registry, service):
    """Unknown ids and other tenants' keys are KEY_NOT_FOUND; unknown aliases ALIAS_NOT_FOUND;
    empty tenants and malformed references INVALID_ARGUMENT."""
    key = await service.create_key(A, alias="alias/mine")
    with pytest.raises(KeyNotFoundError):
        await registry.resolve("acme", str(uuid.uuid4()))
    with pytest.raises(KeyNotFoundError):
        await registry.resolve("globex", key.key_id)
    with pytest.raises(AliasNotFoundError):
        await registry.resolve("globex", "alias/mine")
    with pytest.raises(AliasNotFoundError):
        await registry.resolve("acme", "alias/none")
    for tenant, ref in (("", key.key_id), ("acme", ""), ("acme", "not-a-key"), ("acme", key.key_id.upper())):
        with pytest.raises(InvalidArgumentError):
            await registry.resolve(tenant, ref)


# -- reserve / commit / abort -------------------------------------------------------------------------


async def test_reserve_commit_round_trip(registry, clock):
    """A reservation is CREATING at revision 1 with no versions; commit makes it ENABLED and
    bumps the revision; committing again changes nothing."""
    reserved = await registry.reserve("acme", DEDICATED, "alias/ded", "r-1")
    assert (reserved.state, reserved.revision, reserved.primary_version, reserved.versions) == (
        KeyState.CREATING, 1, 0, ()
    )
    assert reserved.aliases == ("alias/ded",) and reserved.create_time > T0
    assert reserved.update_time == reserved.create_time
    done = await registry.commit(reserved.key_id)
    assert (done.state, done.revision) == (KeyState.ENABLED, 2)
    assert done.update_time > reserved.update_time
    assert await registry.commit(reserved.key_id) == done


async def test_reserve_is_idempotent_on_request_id(registry):
    """A retried reservation returns the same key, also after commit."""
    first = await registry.reserve("acme", DEDICATED, "alias/ded", "retry-me")
    assert (await registry.reserve("acme", DEDICATED, "alias/ded", "retry-me")).key_id == first.key_id
    await registry.commit(first.key_id)
    again = await registry.reserve("acme", DEDICATED, "alias/ded", "retry-me")
    assert (again.key_id, again.state) == (first.key_id, KeyState.ENABLED)


async def test_concurrent_identical_reservations_make_one_key(registry):
    """Parallel retries with one request id all get one key."""
    results = await asyncio.gather(*(registry.reserve("acme", DEDICATED, "alias/p", "same") for _ in range(6)))
    assert len({r.key_id for r in results}) == 1


async def test_reserve_errors(registry, service):
    """Alias collisions (with shared or dedicated keys) are ALIAS_EXISTS; unknown instances and
    other tenants' instances INSTANCE_NOT_FOUND; bad arguments INVALID_ARGUMENT."""
    await service.create_key(A, alias="alias/shared")
    await registry.reserve("acme", DEDICATED, "alias/ded", "r-1")
    with pytest.raises(AliasExistsError):
        await registry.reserve("acme", DEDICATED, "alias/shared", "r-2")
    with pytest.raises(AliasExistsError):
        await registry.reserve("acme", DEDICATED, "alias/ded", "r-3")
    with pytest.raises(InstanceNotFoundError):
        await registry.reserve("acme", "nope", "", "r-4")
    with pytest.raises(InstanceNotFoundError):
        await registry.reserve("acme", "globex-ded", "", "r-5")
    for tenant, instance, alias, request_id in (
        ("", DEDICATED, "", "r-6"), ("acme", DEDICATED, "", ""), ("acme", DEDICATED, "", "x" * 129),
        ("acme", DEDICATED, "bad alias", "r-7"), ("acme", "", "", "r-8"),
    ):
        with pytest.raises(InvalidArgumentError):
            await registry.reserve(tenant, instance, alias, request_id)
    # The same alias in another tenant is fine.
    assert (await registry.reserve("globex", "globex-ded", "alias/ded", "g-1")).aliases == ("alias/ded",)


async def test_a_request_id_reserves_for_one_instance_and_alias_only(registry):
    """A repeated request id naming another instance or alias is refused, so one key id cannot
    be created on two instances; the refusal names what the request id was used for."""
    first = await registry.reserve("acme", DEDICATED, "alias/one", "r-1")
    for instance, alias in ((DEDICATED_2, "alias/one"), (DEDICATED, "alias/two"), (DEDICATED, ""),
                            (DEDICATED_2, "")):
        with pytest.raises(InvalidArgumentError, match=f"reserved key {first.key_id} on instance 'acme-ded'"):
            await registry.reserve("acme", instance, alias, "r-1")
    assert (await registry.reserve("acme", DEDICATED, "alias/one", "r-1")).key_id == first.key_id
    with pytest.raises(AliasNotFoundError):
        await registry.resolve("acme", "alias/two")


async def test_request_ids_are_per_tenant(registry):
    """Another tenant's request id is no secret to learn and no obstacle: the same id reserves a
    key of its own, and neither tenant sees the other's reservation."""
    mine = await registry.reserve("acme", DEDICATED, "alias/x", "shared-id")
    theirs = await registry.reserve("globex", "globex-ded", "alias/x", "shared-id")
    assert mine.key_id != theirs.key_id and theirs.tenant_id == "globex"
    assert (await registry.reserve("acme", DEDICATED, "alias/x", "shared-id")).key_id == mine.key_id
    assert (await registry.reserve("globex", "globex-ded", "alias/x", "shared-id")).key_id == theirs.key_id


async def test_abort_removes_reservation_and_alias(registry):
    """Abort deletes the reservation and frees its alias; a second abort is KEY_NOT_FOUND; a
    committed key cannot be aborted."""
    reserved = await registry.reserve("acme", DEDICATED, "alias/ded", "r-1")
    await registry.abort(reserved.key_id)
    with pytest.raises(KeyNotFoundError):
        await registry.resolve("acme", reserved.key_id)
    with pytest.raises(AliasNotFoundError):
        await registry.resolve("acme", "alias/ded")
    with pytest.raises(KeyNotFoundError):
        await registry.abort(reserved.key_id)
    # The request id reserves afresh once its key is gone, and the alias is free again.
    fresh = await registry.reserve("acme", DEDICATED, "alias/ded", "r-1")
    assert fresh.key_id != reserved.key_id
    await registry.commit(fresh.key_id)
    with pytest.raises(KeyStateConflictError):
        await registry.abort(fresh.key_id)


async def test_commit_and_abort_unknown_or_shared_keys(registry, service):
    """Unknown keys are KEY_NOT_FOUND; a shared key's record is not the registry's to change."""
    with pytest.raises(KeyNotFoundError):
        await registry.commit(str(uuid.uuid4()))
    with pytest.raises(KeyNotFoundError):
        await registry.abort("")
    shared = await service.create_key(A)
    for call in (registry.commit(shared.key_id), registry.abort(shared.key_id),
                 registry.update_record(shared.key_id, KeyState.DISABLED, [])):
        with pytest.raises(KeyStateConflictError, match="shared pool"):
            await call


# -- update_record ------------------------------------------------------------------------------------


async def test_update_record_replaces_state_and_aliases(registry):
    """State and alias set are replaced; every update bumps the revision."""
    record = await committed(registry)
    updated = await registry.update_record(record.key_id, KeyState.DISABLED, ["alias/x", "alias/y"])
    assert (updated.state, updated.aliases, updated.revision) == (KeyState.DISABLED, ("alias/x", "alias/y"), record.revision + 1)
    with pytest.raises(AliasNotFoundError):
        await registry.resolve("acme", "alias/ded")
    pending = await registry.update_record(record.key_id, KeyState.PENDING_DELETION, [], updated.revision)
    assert (pending.state, pending.aliases, pending.revision) == (KeyState.PENDING_DELETION, (), updated.revision + 1)


async def test_update_record_errors(registry, service):
    """Bad states and aliases are INVALID_ARGUMENT; another key's alias ALIAS_EXISTS (nothing
    changes); a stale expected revision REVISION_CONFLICT; unknown keys KEY_NOT_FOUND."""
    record = await committed(registry)
    await service.create_key(A, alias="alias/shared")
    for state in (KeyState.CREATING, "", "UNSPECIFIED", "enabled"):
        with pytest.raises(InvalidArgumentError):
            await registry.update_record(record.key_id, state, [])
    with pytest.raises(InvalidArgumentError):
        await registry.update_record(record.key_id, KeyState.ENABLED, ["nope"])
    with pytest.raises(AliasExistsError):
        await registry.update_record(record.key_id, KeyState.DISABLED, ["alias/shared"])
    assert (await registry.resolve("acme", record.key_id)).state == KeyState.ENABLED
    with pytest.raises(RevisionConflictError):
        await registry.update_record(record.key_id, KeyState.DISABLED, [], record.revision + 7)
    with pytest.raises(KeyNotFoundError):
        await registry.update_record(str(uuid.uuid4()), KeyState.DISABLED, [])
    reserved = await registry.reserve("acme", DEDICATED, "", "r-creating")
    with pytest.raises(KeyStateConflictError, match="CommitKey"):
        await registry.update_record(reserved.key_id, KeyState.ENABLED, [])


async def test_update_record_with_expected_revision_admits_one_writer(registry):
    """Two writers holding the same revision: exactly one wins."""
    record = await committed(registry)
    outcomes = await asyncio.gather(
        registry.update_record(record.key_id, KeyState.DISABLED, [], record.revision),
        registry.update_record(record.key_id, KeyState.ENABLED, ["alias/b"], record.revision),
        return_exceptions=True,
    )
    assert sum(isinstance(o, RevisionConflictError) for o in outcomes) == 1


# -- the shared node's KeyService and registry records ------------------------------------------------


async def test_key_service_describes_and_lists_registry_records(registry, service):
    """DescribeKey and ListKeys on the shared node show dedicated keys' records; reservations stay
    hidden and undescribable; another tenant sees none of them."""
    shared = await service.create_key(A)
    await registry.reserve("acme", DEDICATED, "alias/creating", "r-c")
    dedicated = await committed(registry)
    described = await service.describe_key(A, "alias/ded")
    assert (described.key_id, described.instance_id) == (dedicated.key_id, DEDICATED)
    keys, _ = await service.list_keys(A)
    assert [k.key_id for k in keys] == [shared.key_id, dedicated.key_id]
    with pytest.raises(KeyStateConflictError, match="being created"):
        await service.describe_key(A, "alias/creating")
    with pytest.raises(KeyNotFoundError):
        await service.describe_key(B, dedicated.key_id)
    assert (await service.list_keys(B))[0] == []


async def test_key_service_refuses_everything_else_on_registry_records(registry, service):
    """Every lifecycle and crypto operation on a dedicated key's record names the instance and
    the way to reach it; the record is unchanged."""
    record = await committed(registry)
    shared = await service.create_key(A)
    blob = (await service.encrypt(A, shared.key_id, b"x", {})).ciphertext
    calls = [
        service.enable_key(A, record.key_id),
        service.disable_key(A, "alias/ded"),
        service.schedule_key_deletion(A, record.key_id),
        service.cancel_key_deletion(A, record.key_id),
        service.rotate_key(A, record.key_id),
        service.update_key(A, record.key_id, description="x"),
        service.create_alias(A, "alias/more", record.key_id),
        service.delete_alias(A, "alias/ded"),
        service.encrypt(A, record.key_id, b"x", {}),
        service.generate_data_key(A, record.key_id, 32, {}),
        service.re_encrypt(A, blob, {}, record.key_id, {}),
        service.seal_public_key(A, record.key_id, "alice", b"bundle", 1),
    ]
    for call in calls:
        with pytest.raises(KeyStateConflictError, match=f"dedicated instance {DEDICATED}.*private endpoint"):
            await call
    [outcome] = await service.batch_generate_data_key(A, [(record.key_id, 32, {})])
    assert isinstance(outcome, KeyStateConflictError)
    assert await registry.resolve("acme", record.key_id) == record


async def test_key_service_purge_skips_registry_records(registry, service, stores, clock):
    """A dedicated key's record pending deletion is never purged by the shared node."""
    record = await committed(registry)
    keys, _ = stores
    # Even with a deletion time in the past, as a dedicated node's own row would have.
    current = keys.get_key(record.key_id)
    keys.update_key(current.evolve(state=KeyState.PENDING_DELETION, deletion_time=T0))
    shared = await service.schedule_key_deletion(A, (await service.create_key(A)).key_id, 7)
    clock.now += 8 * DAY
    assert await service.purge_due_keys() == 1
    assert keys.get_key(shared.key_id) is None
    assert keys.get_key(record.key_id) is not None


async def test_shared_create_key_cannot_take_a_dedicated_alias(registry, service):
    """Aliases are unique per tenant across shared and dedicated keys."""
    await committed(registry, alias="alias/one")
    with pytest.raises(AliasExistsError):
        await service.create_key(A, alias="alias/one")
