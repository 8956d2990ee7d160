"""Two replicas of a node on one database: two store instances (each with its own connections) on
one PostgreSQL schema, or one SQLite file, racing each other from threads. What matters most on
PostgreSQL, where the replicas run on different hosts; the same holds on SQLite."""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from foundation import postgres_db
from foundation.config import ConfigError
from foundation.errors import UnavailableError
from kms_node.store.admin_sql import SqlAdminStore
from kms_node.store.base import AliasTaken, KeyState, RevisionConflict, VersionRecord
from kms_node.store.sql import SqlKeyStore
from node_store_helpers import raw_sql, record, registry_record

THREADS = 8


@pytest.fixture
def replicas(database_location):
    """Two key stores on one database, as two node replicas hold them."""
    first = SqlKeyStore(database_location)
    second = SqlKeyStore(database_location)
    yield first, second
    second.close()
    first.close()


def race(jobs, threads: int = THREADS) -> list:
    """Run the callables at once (released together by a barrier); each one's result or exception."""
    barrier = threading.Barrier(min(threads, len(jobs)))

    def run(job):
        barrier.wait()
        try:
            return job()
        except Exception as exc:  # noqa: BLE001 - the caller looks at it
            return exc

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, jobs))


def test_compare_and_set_loses_no_update(replicas):
    """Read-modify-write increments of one key from both replicas: every successful write is in
    the final state, and each retried on fresh data after RevisionConflict."""
    a, b = replicas
    key = a.create_key(record(tags={"n": "0"}), None)
    per_thread = 15
    conflicts = []

    def increment(store: SqlKeyStore, times: int) -> int:
        done = 0
        while done < times:
            current = store.get_key(key.key_id)
            bumped = current.evolve(tags={"n": str(int(current.tags["n"]) + 1)})
            try:
                store.update_key(bumped)
            except RevisionConflict:
                conflicts.append(1)
                continue
            done += 1
        return done

    results = race([lambda s=(a, b)[n % 2]: increment(s, per_thread) for n in range(THREADS)])
    assert results == [per_thread] * THREADS
    final = b.get_key(key.key_id)
    assert final.tags == {"n": str(THREADS * per_thread)}
    assert final.revision == 1 + THREADS * per_thread
    assert conflicts, "the replicas never raced: the test proves nothing"


def test_racing_rotations_keep_every_version(replicas):
    """Rotations from both replicas (new version = primary + 1, compare-and-set): primary_version
    ends at 1 + the number of rotations and every version is stored once."""
    a, b = replicas
    key = a.create_key(record(), None)
    per_thread = 6

    def rotate(store: SqlKeyStore) -> list[int]:
        made = []
        while len(made) < per_thread:
            current = store.get_key(key.key_id)
            number = current.primary_version + 1
            try:
                store.update_key(current.evolve(primary_version=number), VersionRecord(number, float(number), b"v%d" % number))
            except RevisionConflict:
                continue
            made.append(number)
        return made

    results = race([lambda s=(a, b)[n % 2]: rotate(s) for n in range(THREADS)])
    made = sorted(v for versions in results for v in versions)
    assert made == list(range(2, 2 + THREADS * per_thread))
    final = a.get_key(key.key_id)
    assert final.primary_version == 1 + THREADS * per_thread
    assert [v.version for v in final.versions] == list(range(1, final.primary_version + 1))
    assert all(v.wrapped == b"v%d" % v.version for v in final.versions[1:])


def test_one_alias_raced_onto_different_keys_goes_to_exactly_one(replicas, database_location):
    """create_alias of one alias on different keys from both replicas: one wins, every other
    gets AliasTaken, and the alias names exactly one key."""
    a, b = replicas
    keys = [a.create_key(record(), None) for _ in range(THREADS)]
    for round_ in range(5):
        alias = f"alias/contested-{round_}"
        results = race([lambda s=(a, b)[n % 2], k=k: s.create_alias("acme", alias, k.key_id) for n, k in enumerate(keys)])
        winners = [k for k, r in zip(keys, results) if r is None]
        assert len(winners) == 1, results
        assert all(isinstance(r, AliasTaken) for r in results if r is not None), results
        assert a.resolve_alias("acme", alias) == b.resolve_alias("acme", alias) == winners[0].key_id
        assert raw_sql(database_location, "SELECT key_id FROM aliases WHERE alias = ?", (alias,)) == [(winners[0].key_id,)]
        # Only the winner's revision moved.
        for k in keys:
            assert b.get_key(k.key_id).revision == (k.revision + 1 if k is winners[0] else k.revision)
        keys = [b.get_key(k.key_id) for k in keys]


def test_new_keys_racing_for_one_alias(replicas):
    """create_key with one alias from both replicas: one key is created, the others are not."""
    a, b = replicas
    candidates = [record() for _ in range(THREADS)]
    results = race([lambda s=(a, b)[n % 2], r=r: s.create_key(r, "alias/new") for n, r in enumerate(candidates)])
    created = [r for r in results if not isinstance(r, Exception)]
    assert len(created) == 1 and all(isinstance(r, AliasTaken) for r in results if r not in created), results
    assert a.resolve_alias("acme", "alias/new") == created[0].key_id
    assert [a.get_key(c.key_id) is not None for c in candidates].count(True) == 1


def test_racing_reservations_under_one_request_id_reserve_once(replicas):
    """The gateway retrying a reservation against both replicas at once gets one key back."""
    a, b = replicas
    results = race([lambda s=(a, b)[n % 2]: s.reserve_key(registry_record(), "alias/ded", "req-1") for n in range(THREADS)])
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len({r.key_id for r in results}) == 1
    assert a.find_reservation("acme", "req-1").key_id == results[0].key_id
    assert a.resolve_alias("acme", "alias/ded") == results[0].key_id


def test_schedule_deletion_racing_rotation_and_alias(replicas):
    """Deletion scheduled on one replica while the other rotates and aliases: whatever the order,
    no rotation lands after the key became PENDING_DELETION (the writes compare-and-set)."""
    a, b = replicas
    for _ in range(5):
        key = a.create_key(record(), None)

        def schedule():
            while True:
                current = a.get_key(key.key_id)
                try:
                    return a.update_key(current.evolve(state=KeyState.PENDING_DELETION, deletion_time=1e9))
                except RevisionConflict:
                    continue

        def rotate():
            rotated = 0
            while True:
                current = b.get_key(key.key_id)
                if current.state != KeyState.ENABLED:
                    return rotated
                number = current.primary_version + 1
                try:
                    b.update_key(current.evolve(primary_version=number), VersionRecord(number, 1.0, b"v"))
                    rotated += 1
                except RevisionConflict:
                    continue

        results = race([schedule, rotate, rotate])
        assert not [r for r in results if isinstance(r, Exception)], results
        final = a.get_key(key.key_id)
        assert final.state == KeyState.PENDING_DELETION and final.deletion_time == 1e9
        assert final.primary_version == 1 + results[1] + results[2]
        assert [v.version for v in final.versions] == list(range(1, final.primary_version + 1))


def test_migrations_run_once_when_replicas_start_together(database_location):
    """Key and control-plane stores of several replicas opening an empty database at the same
    moment: each schema is created once, every store opens at the latest version."""
    opened = race([lambda: SqlKeyStore(database_location) for _ in range(4)] +
                  [lambda: SqlAdminStore(database_location) for _ in range(4)])
    try:
        assert not [s for s in opened if isinstance(s, Exception)], opened
        assert {s.schema_version() for s in opened[:4]} == {3}
        assert {s.schema_version() for s in opened[4:]} == {2}
        assert raw_sql(database_location, "SELECT version FROM schema_version") == [(3,)]
        assert raw_sql(database_location, "SELECT version FROM admin_schema_version") == [(2,)]
        key = opened[0].create_key(record(), "alias/after")
        assert opened[3].get_key(key.key_id) == key
    finally:
        for s in opened:
            if not isinstance(s, Exception):
                s.close()


def test_unreachable_postgres_fails_fast_without_the_password(monkeypatch, caplog):
    """A store whose PostgreSQL cannot be reached fails with UnavailableError; neither the error
    nor the log shows the DSN's password."""
    monkeypatch.setattr(postgres_db, "RETRY_SECONDS", 1.0)
    secret = "pw-never-shown"
    with caplog.at_level(logging.DEBUG), pytest.raises(UnavailableError) as caught:
        SqlKeyStore(f"postgresql://kms:{secret}@127.0.0.1:1/keyrelay?connect_timeout=1")
    assert "127.0.0.1" in str(caught.value)
    assert secret not in str(caught.value) and secret not in caplog.text


def test_a_schema_the_user_may_not_write_is_a_config_error_naming_the_fix(postgres_admin, postgres_dsn):
    """A server that refuses the store's tables (here: a user without CREATE on the schema) stops
    the store with ConfigError, not a driver traceback."""
    role = f"kr_readonly_{uuid.uuid4().hex[:8]}"
    with postgres_admin() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        dsn = postgres_dsn.replace("postgres@", f"{role}@", 1)
        with pytest.raises(ConfigError, match=r"cannot create or migrate its tables .* needs CREATE on the schema"):
            SqlKeyStore(dsn)
    finally:
        with postgres_admin() as conn:
            conn.execute(f"DROP ROLE {role}")
