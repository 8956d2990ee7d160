"""Tests of kms_node/store/sql.py, the node's key store, on both engines: each test runs on a
SQLite file and on a fresh PostgreSQL schema (`database_location`)."""

from __future__ import annotations

import threading
import uuid

import pytest

from foundation.database import open_database
from kms_node.store.base import (
    AliasTaken,
    KeyIdTaken,
    KeyState,
    RequestIdTaken,
    Reservation,
    RevisionConflict,
    VersionRecord,
)
from kms_node.store.sql import MIGRATIONS, SqlKeyStore
from node_store_helpers import StepClock, column_names, raw_sql, record, registry_record, table_names


@pytest.fixture
def location(database_location):
    return database_location


@pytest.fixture
def store(location):
    s = SqlKeyStore(location)
    yield s
    s.close()


# -- schema -------------------------------------------------------------------------------------


def test_migration_creates_latest_schema(store, location):
    """A new database gets every table at the latest schema version."""
    assert len(MIGRATIONS) == 3
    assert store.schema_version() == 3
    assert {"keys", "key_versions", "aliases", "tenant_reservations", "schema_version"} <= table_names(location)
    assert "reservations" not in table_names(location)
    assert raw_sql(location, "SELECT version FROM schema_version") == [(3,)]
    assert "update_time" in column_names(location, "keys")


def test_migration_from_version_1_keeps_keys(location):
    """A version-1 database (before the registry) is migrated to version 2: its keys keep every
    field, their update time becomes their create time, and reservations start empty."""
    old = open_database(location, MIGRATIONS[:1], "schema_version")
    key_id = str(uuid.uuid4())
    old.write(lambda conn: (
        conn.execute(
            "INSERT INTO keys (key_id, tenant_id, description, tags, state, instance_id, key_spec, primary_version, "
            "min_decryption_version, create_time, deletion_time, revision) "
            "VALUES (?, 'acme', 'old', '{}', 'ENABLED', '', 'AES_256', 1, 1, 123.5, NULL, 3)",
            (key_id,),
        ),
        conn.execute("INSERT INTO key_versions VALUES (?, 1, 123.5, ?)", (key_id, b"wrapped")),
        conn.execute("INSERT INTO aliases VALUES ('acme', 'alias/old', ?)", (key_id,)),
    ))
    assert old.schema_version() == 1
    old.close()

    store = SqlKeyStore(location)
    try:
        assert store.schema_version() == 3
        migrated = store.get_key(key_id)
        assert (migrated.description, migrated.revision, migrated.aliases) == ("old", 3, ("alias/old",))
        assert migrated.versions == (VersionRecord(1, 123.5, b"wrapped"),)
        assert migrated.update_time == 123.5
        assert store.find_reservation("acme", "anything") is None
    finally:
        store.close()


def test_migration_from_version_2_keeps_reservations_per_tenant(location):
    """Version-2 reservations (one request id space for every tenant) move to per-tenant ones
    that remember their key's instance and alias, so a retry of them still finds its key."""
    old = open_database(location, MIGRATIONS[:2], "schema_version")
    key_id = str(uuid.uuid4())
    old.write(lambda conn: (
        conn.execute(
            "INSERT INTO keys (key_id, tenant_id, description, tags, state, instance_id, key_spec, primary_version, "
            "min_decryption_version, create_time, deletion_time, revision, update_time) "
            "VALUES (?, 'acme', '', '{}', 'CREATING', 'ded-1', 'AES_256', 0, 0, 5.0, NULL, 1, 5.0)",
            (key_id,),
        ),
        conn.execute("INSERT INTO aliases VALUES ('acme', 'alias/ded', ?)", (key_id,)),
        conn.execute("INSERT INTO reservations VALUES ('req-old', 'acme', ?)", (key_id,)),
    ))
    old.close()
    store = SqlKeyStore(location)
    try:
        assert store.find_reservation("acme", "req-old") == Reservation("req-old", "acme", key_id, "ded-1", "alias/ded")
        assert store.reserve_key(registry_record(), "alias/ded", "req-old").key_id == key_id
        assert store.find_reservation("globex", "req-old") is None
    finally:
        store.close()


def test_reopening_is_idempotent_and_keeps_data(store, location):
    """Opening the same database again migrates nothing, keeps one version row and keeps the keys."""
    created = store.create_key(record(), "alias/a")
    again = SqlKeyStore(location)
    try:
        assert again.schema_version() == len(MIGRATIONS)
        assert again.get_key(created.key_id) == created
        assert raw_sql(location, "SELECT COUNT(*) FROM schema_version") == [(1,)]
    finally:
        again.close()
    SqlKeyStore(location).close()  # a third time still fine


def test_newer_schema_is_refused(location):
    """A database from a newer keyrelay (schema above what this one knows) is refused, not touched."""
    SqlKeyStore(location).close()
    raw_sql(location, "UPDATE schema_version SET version = 99")
    with pytest.raises(RuntimeError, match="upgrade keyrelay"):
        SqlKeyStore(location)
    assert raw_sql(location, "SELECT version FROM schema_version") == [(99,)]


def test_create_and_get_round_trip(store):
    """Everything written comes back: metadata, tags, versions with their bytes, and the alias."""
    original = record(versions=(VersionRecord(1, 1000.0, b"\x00v1\xff"), VersionRecord(2, 1001.5, b"v2")), primary_version=2)
    created = store.create_key(original, "alias/pay")
    assert created.aliases == ("alias/pay",)
    fetched = store.get_key(original.key_id)
    assert fetched == created
    assert fetched.tags == {"team": "payments", "env": "prod"}
    assert [(v.version, v.create_time, v.wrapped) for v in fetched.versions] == [
        (1, 1000.0, b"\x00v1\xff"),
        (2, 1001.5, b"v2"),
    ]
    # Exact types, as SQLite gives them: bytes (not memoryview), float times, int numbers.
    assert type(fetched.versions[0].wrapped) is bytes
    assert type(fetched.create_time) is float and type(fetched.update_time) is float
    assert type(fetched.revision) is int and type(fetched.primary_version) is int
    assert fetched.deletion_time is None
    assert fetched.version(2).wrapped == b"v2" and fetched.version(3) is None
    assert fetched.revision == 1
    assert store.resolve_alias("acme", "alias/pay") == original.key_id


def test_text_with_placeholder_and_percent_characters(store):
    """Values holding `?`, `%` and quotes are parameters, never SQL, on either engine."""
    key = store.create_key(record(description="50% off? 'yes' %s ?", tags={"q?": "%(x)s"}), "alias/what?%")
    fetched = store.get_key(key.key_id)
    assert fetched.description == "50% off? 'yes' %s ?"
    assert fetched.tags == {"q?": "%(x)s"}
    assert store.resolve_alias("acme", "alias/what?%") == key.key_id


def test_get_missing_key(store):
    """An unknown key id gives None."""
    assert store.get_key(str(uuid.uuid4())) is None


def test_list_orders_by_create_time_then_key_id_and_pages(store):
    """Keys come ordered by (create_time, key_id); `after` continues strictly after a position."""
    ids = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(4)]
    # Inserted out of order; two keys share create_time 2.0, so the key id breaks the tie.
    store.create_key(record(create_time=3.0, key_id=ids[0]), None)
    store.create_key(record(create_time=1.0, key_id=ids[3]), None)
    store.create_key(record(create_time=2.0, key_id=ids[2]), "alias/two")
    store.create_key(record(create_time=2.0, key_id=ids[1]), None)
    store.create_key(record(tenant="other", create_time=0.5), None)

    everything = store.list_keys("acme", None, 100)
    assert [r.key_id for r in everything] == [ids[3], ids[1], ids[2], ids[0]]
    assert all(r.tenant_id == "acme" for r in everything)
    assert [r.aliases for r in everything] == [(), (), ("alias/two",), ()]
    assert all([v.version for v in r.versions] == [1] for r in everything)
    assert everything == [store.get_key(r.key_id) for r in everything]

    pages, after = [], None
    while True:
        page = store.list_keys("acme", after, 2)
        if not page:
            break
        pages.append([r.key_id for r in page])
        after = (page[-1].create_time, page[-1].key_id)
    assert [len(p) for p in pages] == [2, 2]
    assert [key for page in pages for key in page] == [r.key_id for r in everything]


def test_list_of_tenant_without_keys(store):
    """A tenant with no keys lists nothing."""
    store.create_key(record(), None)
    assert store.list_keys("nobody", None, 10) == []


# -- aliases ------------------------------------------------------------------------------------


def test_alias_unique_per_tenant(store):
    """The same alias is refused twice in one tenant, and the refused key is not created at all."""
    first = store.create_key(record(), "alias/shared-name")
    second = record()
    with pytest.raises(AliasTaken):
        store.create_key(second, "alias/shared-name")
    assert store.get_key(second.key_id) is None
    assert store.resolve_alias("acme", "alias/shared-name") == first.key_id


def test_key_id_unique(store):
    """A second key with the same id is refused with KeyIdTaken and changes nothing."""
    first = store.create_key(record(), None)
    with pytest.raises(KeyIdTaken):
        store.create_key(record(key_id=first.key_id, description="again"), "alias/new")
    assert store.get_key(first.key_id) == first
    assert store.resolve_alias("acme", "alias/new") is None


def test_same_alias_in_two_tenants(store):
    """Two tenants may each use the same alias name, resolving to their own keys."""
    a = store.create_key(record(tenant="acme"), "alias/main")
    b = store.create_key(record(tenant="globex"), "alias/main")
    assert store.resolve_alias("acme", "alias/main") == a.key_id
    assert store.resolve_alias("globex", "alias/main") == b.key_id
    assert store.resolve_alias("initech", "alias/main") is None


def test_create_and_delete_alias(store):
    """create_alias adds a second name (bumping the revision); delete_alias returns the key id."""
    key = store.create_key(record(), "alias/one")
    store.create_alias("acme", "alias/two", key.key_id)
    fetched = store.get_key(key.key_id)
    assert fetched.aliases == ("alias/one", "alias/two")
    assert fetched.revision == key.revision + 1
    with pytest.raises(AliasTaken):
        store.create_alias("acme", "alias/one", key.key_id)
    assert store.delete_alias("acme", "alias/one") == key.key_id
    assert store.delete_alias("acme", "alias/one") is None
    assert store.delete_alias("globex", "alias/two") is None  # another tenant's alias is untouched
    assert store.get_key(key.key_id).aliases == ("alias/two",)


def test_unique_violations_map_to_the_stores_errors(store, monkeypatch):
    """Should a duplicate get past the checks (a concurrent writer on PostgreSQL), the database's
    unique violation still reaches the caller as AliasTaken / KeyIdTaken, on either engine."""
    key = store.create_key(record(), "alias/one")
    monkeypatch.setattr(SqlKeyStore, "_alias_owner", staticmethod(lambda conn, tenant, alias: None))
    with pytest.raises(AliasTaken):
        store.create_alias("acme", "alias/one", key.key_id)
    other = record()
    with pytest.raises(AliasTaken):
        store.create_key(other, "alias/one")
    with pytest.raises(KeyIdTaken):
        store.create_key(record(key_id=key.key_id), None)
    monkeypatch.undo()
    assert store.get_key(other.key_id) is None
    assert store.get_key(key.key_id).revision == key.revision


# -- compare-and-set updates ----------------------------------------------------------------------


def test_update_bumps_revision_and_saves(store):
    """A current revision saves the changes and returns the record with revision + 1."""
    key = store.create_key(record(), None)
    updated = store.update_key(key.evolve(description="new", tags={"x": "y"}, state=KeyState.DISABLED))
    assert updated.revision == key.revision + 1
    assert (updated.description, updated.tags, updated.state) == ("new", {"x": "y"}, KeyState.DISABLED)
    assert store.get_key(key.key_id) == updated


def test_stale_revision_raises_and_changes_nothing(store):
    """A write based on an old read raises RevisionConflict and leaves the stored key alone."""
    key = store.create_key(record(), None)
    winner = store.update_key(key.evolve(description="winner"))
    with pytest.raises(RevisionConflict):
        store.update_key(key.evolve(description="loser"), VersionRecord(2, 5.0, b"v2"))
    stored = store.get_key(key.key_id)
    assert stored.description == "winner"
    assert stored.revision == winner.revision
    assert [v.version for v in stored.versions] == [1]  # the new version was rolled back too


def test_alias_change_makes_earlier_reads_stale(store):
    """Adding an alias bumps the revision, so a write based on an earlier read conflicts."""
    key = store.create_key(record(), None)
    store.create_alias("acme", "alias/late", key.key_id)
    with pytest.raises(RevisionConflict):
        store.update_key(key.evolve(description="stale"))


def test_update_with_new_version(store):
    """A rotation saves the new version and primary version in one write."""
    key = store.create_key(record(), None)
    rotated = store.update_key(key.evolve(primary_version=2), VersionRecord(2, 2000.0, b"v2-wrapped"))
    assert rotated.primary_version == 2
    assert [(v.version, v.wrapped) for v in rotated.versions] == [(1, b"\x01wrapped-v1"), (2, b"v2-wrapped")]


def test_update_of_missing_key_conflicts(store):
    """Updating a key that does not exist is a conflict, not a silent success."""
    with pytest.raises(RevisionConflict):
        store.update_key(record())


# -- deletion -------------------------------------------------------------------------------------


def test_keys_due_for_deletion(store):
    """Only PENDING_DELETION keys whose deletion time has passed (inclusive) are due."""
    due = store.create_key(record(state=KeyState.PENDING_DELETION, deletion_time=100.0), None)
    later = store.create_key(record(state=KeyState.PENDING_DELETION, deletion_time=200.0), None)
    store.create_key(record(state=KeyState.DISABLED, deletion_time=50.0), None)  # not pending: never due
    store.create_key(record(), None)
    assert store.keys_due_for_deletion(99.9) == []
    assert store.keys_due_for_deletion(100.0) == [due.key_id]
    assert sorted(store.keys_due_for_deletion(1e12)) == sorted([due.key_id, later.key_id])


def test_delete_key_removes_versions_and_aliases(store, location):
    """delete_key with the current revision removes the key, its versions and its aliases."""
    key = store.create_key(record(state=KeyState.PENDING_DELETION, deletion_time=1.0), "alias/doomed")
    keep = store.create_key(record(), "alias/keep")
    assert store.delete_key(key.key_id, key.revision + 5) is False  # stale revision: nothing deleted
    assert store.get_key(key.key_id) is not None

    assert store.delete_key(key.key_id, key.revision) is True
    assert store.get_key(key.key_id) is None
    assert store.resolve_alias("acme", "alias/doomed") is None
    assert store.keys_due_for_deletion(1e12) == []
    assert raw_sql(location, "SELECT COUNT(*) FROM key_versions WHERE key_id = ?", (key.key_id,)) == [(0,)]
    assert store.get_key(keep.key_id) is not None
    assert store.delete_key(key.key_id, key.revision) is False  # already gone


def test_concurrent_threads_share_the_database(store):
    """Writes from several threads (one connection each) all land."""
    errors: list[Exception] = []

    def create(n: int) -> None:
        try:
            store.create_key(record(create_time=float(n)), f"alias/t{n}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_keys("acme", None, 100)) == 8


def _expected_state(key, revision: int):
    """The key of the test below at a revision: rotated to version p at revision 2p - 2, then
    aliased alias/v{p} at 2p - 1."""
    primary = revision // 2 + 1
    aliased = revision % 2 == 1 and revision > 1
    alias = primary if aliased else primary - 1
    return key.evolve(
        revision=revision,
        primary_version=primary,
        versions=key.versions + tuple(VersionRecord(n, float(n), b"v%d" % n) for n in range(2, primary + 1)),
        aliases=(f"alias/v{alias}",) if alias >= 2 else (),
        update_time=0.0,
    )


def test_reads_are_consistent_while_a_key_changes(store):
    """A reader never sees a key's row of one revision with the versions or aliases of another,
    while writers rotate it and change its aliases."""
    key = store.create_key(record(), None)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            current = key
            for n in range(2, 40):
                current = store.update_key(current.evolve(primary_version=n), VersionRecord(n, float(n), b"v%d" % n))
                current = store.replace_aliases(current, [f"alias/v{n}"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not stop.is_set() or reads == 0:
        for seen in [store.get_key(key.key_id), *store.list_keys("acme", None, 10)]:
            reads += 1
            assert seen.evolve(update_time=0.0) == _expected_state(key, seen.revision)
    writer.join()
    assert errors == []
    assert store.get_key(key.key_id).primary_version == 39


# -- update time ----------------------------------------------------------------------------------


@pytest.fixture
def clocked(location):
    s = SqlKeyStore(location, clock=StepClock(5000.0, step=1.0))
    yield s
    s.close()


def test_update_time_is_set_on_every_change(clocked):
    """A new key's update time is its create time; every later change stamps the store's clock."""
    key = clocked.create_key(record(create_time=1000.0), None)
    assert key.update_time == 1000.0 == clocked.get_key(key.key_id).update_time
    updated = clocked.update_key(key.evolve(description="x"))
    assert updated.update_time == 5001.0
    clocked.create_alias("acme", "alias/t", key.key_id)
    assert clocked.get_key(key.key_id).update_time == 5002.0
    clocked.delete_alias("acme", "alias/t")
    assert clocked.get_key(key.key_id).update_time == 5003.0
    replaced = clocked.replace_aliases(clocked.get_key(key.key_id), ["alias/r"])
    assert replaced.update_time == 5004.0


# -- registry records -----------------------------------------------------------------------------


def test_replace_aliases_sets_the_complete_set(store):
    """replace_aliases saves the metadata and makes the given aliases exactly the key's, in one
    revision; an empty list removes them all."""
    key = store.create_key(record(), "alias/a")
    store.create_alias("acme", "alias/b", key.key_id)
    current = store.get_key(key.key_id)
    replaced = store.replace_aliases(current.evolve(state=KeyState.DISABLED), ["alias/b", "alias/c", "alias/c"])
    assert replaced.aliases == ("alias/b", "alias/c")
    assert replaced.state == KeyState.DISABLED
    assert replaced.revision == current.revision + 1
    assert store.resolve_alias("acme", "alias/a") is None
    assert store.resolve_alias("acme", "alias/c") == key.key_id
    emptied = store.replace_aliases(replaced, [])
    assert emptied.aliases == () and emptied.revision == replaced.revision + 1


def test_replace_aliases_refuses_taken_alias_and_stale_revision(store):
    """An alias of another key of the tenant is refused and nothing changes; another tenant's
    alias of the same name is no obstacle; a stale revision conflicts."""
    key = store.create_key(record(), "alias/mine")
    store.create_key(record(), "alias/theirs")
    store.create_key(record(tenant="globex"), "alias/elsewhere")
    with pytest.raises(AliasTaken):
        store.replace_aliases(key.evolve(state=KeyState.DISABLED), ["alias/new", "alias/theirs"])
    unchanged = store.get_key(key.key_id)
    assert (unchanged.aliases, unchanged.state, unchanged.revision) == (("alias/mine",), KeyState.ENABLED, key.revision)
    assert store.resolve_alias("acme", "alias/new") is None
    assert store.replace_aliases(key, ["alias/elsewhere"]).aliases == ("alias/elsewhere",)
    with pytest.raises(RevisionConflict):
        store.replace_aliases(key, ["alias/late"])


def test_reserve_key_is_idempotent_per_request_id(store):
    """The same request id, tenant, instance and alias get the first reservation back; the
    reservation is findable; another instance or alias under that request id is refused, and
    another tenant's request ids are its own."""
    first = store.reserve_key(registry_record(), "alias/ded", "req-1")
    assert first.state == KeyState.CREATING and first.aliases == ("alias/ded",)
    assert first.versions == () and first.primary_version == 0
    again = store.reserve_key(registry_record(), "alias/ded", "req-1")
    assert again == store.get_key(first.key_id)
    assert store.find_reservation("acme", "req-1") == Reservation("req-1", "acme", first.key_id, "ded-1", "alias/ded")
    for instance, alias in (("ded-2", "alias/ded"), ("ded-1", "alias/other"), ("ded-1", None)):
        with pytest.raises(RequestIdTaken) as taken:
            store.reserve_key(registry_record(instance=instance), alias, "req-1")
        assert taken.value.args[0] == Reservation("req-1", "acme", first.key_id, "ded-1", "alias/ded")
    assert store.resolve_alias("acme", "alias/other") is None
    theirs = store.reserve_key(registry_record(tenant="globex"), None, "req-1")
    assert theirs.key_id != first.key_id and store.find_reservation("globex", "req-1").key_id == theirs.key_id


def test_reserve_key_after_the_key_is_gone_reserves_afresh(store):
    """Once the reserved key is deleted (aborted), the request id reserves a new key."""
    first = store.reserve_key(registry_record(), "alias/ded", "req-2")
    assert store.delete_key(first.key_id, first.revision)
    second = store.reserve_key(registry_record(), "alias/ded", "req-2")
    assert second.key_id != first.key_id
    assert store.find_reservation("acme", "req-2").key_id == second.key_id


def test_reserve_key_alias_conflicts_across_shared_and_dedicated(store):
    """A reservation cannot take an alias of a shared key of the tenant, and is not recorded."""
    store.create_key(record(), "alias/taken")
    with pytest.raises(AliasTaken):
        store.reserve_key(registry_record(), "alias/taken", "req-3")
    assert store.find_reservation("acme", "req-3") is None


def test_registry_records_are_listed_once_committed(store):
    """CREATING reservations are not listed; committed registry records are, beside shared keys."""
    shared = store.create_key(record(create_time=1.0), None)
    reserved = store.reserve_key(registry_record(create_time=2.0), None, "req-4")
    assert [r.key_id for r in store.list_keys("acme", None, 10)] == [shared.key_id]
    store.update_key(reserved.evolve(state=KeyState.ENABLED))
    assert [r.key_id for r in store.list_keys("acme", None, 10)] == [shared.key_id, reserved.key_id]
