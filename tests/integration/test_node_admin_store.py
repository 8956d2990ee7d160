"""Tests of kms_node/store/admin_sql.py, the shared node's control-plane store, on both engines:
each test runs on a SQLite file and on a fresh PostgreSQL schema (`database_location`)."""

from __future__ import annotations

import threading

import pytest

from foundation.access_policy import ALL_ROLES
from foundation.database import open_database
from kms_node.store.admin_base import (
    AccessPoint,
    AccessPointMissing,
    Credential,
    CredentialLimit,
    Instance,
    InstanceIdTaken,
    SerialTaken,
)
from kms_node.store.admin_sql import MIGRATIONS, SqlAdminStore
from kms_node.store.sql import SqlKeyStore
from node_store_helpers import raw_sql, record, table_names


@pytest.fixture
def location(database_location):
    return database_location


@pytest.fixture
def store(location):
    s = SqlAdminStore(location)
    yield s
    s.close()


def instance(instance_id: str = "acme-prod", tenant: str = "acme", **changes) -> Instance:
    fields = dict(
        instance_id=instance_id,
        tenant_id=tenant,
        node_endpoints=("10.0.2.21:7201", "[::1]:7201"),
        private_endpoint="10.0.2.21:7202",
        management_zones=("vpc", "ops"),
        allow_public_crypto=True,
        create_time=1000.5,
    )
    fields.update(changes)
    return Instance(**fields)


def access_point(ap_id: str = "ap-1", tenant: str = "acme", name: str = "app", create_time: float = 1.0) -> AccessPoint:
    return AccessPoint(
        access_point_id=ap_id, tenant_id=tenant, name=name, roles=frozenset({"crypto-user"}), key_patterns=("alias/app-*",),
        allowed_zones=("vpc",), allowed_cidrs=("10.0.0.0/8",), create_time=create_time,
    )


def credential(serial: str, ap_id: str = "ap-1", not_after: float = 1000.0, **changes) -> Credential:
    fields = dict(serial=serial, access_point_id=ap_id, fingerprint_sha256="ab" * 32, not_before=10.0, not_after=not_after)
    fields.update(changes)
    return Credential(**fields)


# -- schema -------------------------------------------------------------------------------------


def test_admin_store_shares_the_key_stores_database(location, store):
    """The control plane lives in the key store's database with its own schema-version table."""
    keys = SqlKeyStore(location)
    try:
        assert (keys.schema_version(), store.schema_version()) == (3, 2)
        assert {"keys", "schema_version", "admin_schema_version", "instances", "access_points", "credentials"} <= (
            table_names(location)
        )
        again = SqlAdminStore(location)
        assert again.schema_version() == 2
        again.close()
        keys.create_key(record(), "alias/k")  # both work side by side
        store.add_instance(instance())
        assert keys.resolve_alias("acme", "alias/k") and store.get_instance("acme-prod")
    finally:
        keys.close()


def test_migration_gives_admins_every_role_and_the_operator_tenants_admins_the_operator_property(location):
    """Access points of the first schema (one role each) keep what they could do: an `admin`
    could mint itself any role, so it holds all four; the operator tenant's admins acted for
    every tenant, so they are operators; nobody else is."""
    old = open_database(location, MIGRATIONS[:1], "admin_schema_version")
    rows = [("ap-boot", "root", "admin"), ("ap-ops", "root", "crypto-user"), ("ap-acme", "acme", "admin"),
            ("ap-app", "acme", "crypto-user"), ("ap-msg", "acme", "messaging-user")]
    old.write(lambda conn: [
        conn.execute(
            "INSERT INTO access_points (access_point_id, tenant_id, name, role, key_patterns, create_time) "
            "VALUES (?, ?, ?, ?, '[\"*\"]', 1.0)",
            (ap_id, tenant, ap_id, role),
        ) for ap_id, tenant, role in rows
    ])
    old.close()
    store = SqlAdminStore(location, operator_tenant="root")
    try:
        migrated = {ap_id: store.get_access_point(ap_id) for ap_id, _, _ in rows}
        assert {k: (v.roles, v.operator) for k, v in migrated.items()} == {
            "ap-boot": (ALL_ROLES, True),
            "ap-ops": (frozenset({"crypto-user"}), False),
            "ap-acme": (ALL_ROLES, False),
            "ap-app": (frozenset({"crypto-user"}), False),
            "ap-msg": (frozenset({"messaging-user"}), False),
        }
        assert migrated["ap-boot"].key_patterns == ("*",)
    finally:
        store.close()


def test_admin_store_refuses_a_newer_schema(location, store):
    """A database whose control-plane schema is newer than this keyrelay is refused."""
    raw_sql(location, "UPDATE admin_schema_version SET version = 42")
    with pytest.raises(RuntimeError, match="upgrade keyrelay"):
        SqlAdminStore(location)


# -- instances ----------------------------------------------------------------------------------


def test_instance_round_trip_and_duplicate(store):
    """An instance comes back as stored, booleans and tuples included; its id is unique."""
    added = store.add_instance(instance())
    assert store.get_instance("acme-prod") == added
    plain = store.add_instance(instance("acme-dev", allow_public_crypto=False, management_zones=(), private_endpoint=""))
    fetched = store.get_instance("acme-dev")
    assert fetched == plain and fetched.allow_public_crypto is False
    assert type(fetched.create_time) is float
    assert store.get_instance("nope") is None
    with pytest.raises(InstanceIdTaken):
        store.add_instance(instance(tenant="globex"))
    assert store.get_instance("acme-prod").tenant_id == "acme"


def test_duplicate_instance_from_the_database_maps_to_instance_id_taken(store, monkeypatch):
    """Should a duplicate get past the check, the unique violation still becomes InstanceIdTaken."""
    store.add_instance(instance())
    real_one = SqlAdminStore._one

    def blind_one(self, sql, args, conn=None):
        return None if sql.startswith("SELECT 1 FROM instances") else real_one(self, sql, args, conn)

    monkeypatch.setattr(SqlAdminStore, "_one", blind_one)
    with pytest.raises(InstanceIdTaken):
        store.add_instance(instance())


def test_list_instances_by_tenant_or_all_in_pages(store):
    """Instances list in id order, of one tenant or (None) of all, after a given id."""
    for instance_id, tenant in [("c-1", "acme"), ("a-1", "acme"), ("b-1", "globex"), ("a-2", "acme")]:
        store.add_instance(instance(instance_id, tenant))
    assert [i.instance_id for i in store.list_instances("acme", None, 10)] == ["a-1", "a-2", "c-1"]
    assert [i.instance_id for i in store.list_instances(None, None, 10)] == ["a-1", "a-2", "b-1", "c-1"]
    assert [i.instance_id for i in store.list_instances(None, "a-2", 2)] == ["b-1", "c-1"]
    assert [i.instance_id for i in store.list_instances("acme", "a-1", 1)] == ["a-2"]
    assert store.list_instances("initech", None, 10) == []


# -- access points ------------------------------------------------------------------------------


def test_access_points_round_trip_find_list_and_delete(store):
    """Access points come back as stored; find returns the oldest of a name; listing pages by
    (create_time, id); deleting revokes its credentials."""
    first = store.add_access_point(access_point("ap-2", create_time=2.0))
    store.add_access_point(access_point("ap-1", create_time=2.0))
    store.add_access_point(access_point("ap-0", name="other", create_time=1.0))
    store.add_access_point(access_point("ap-9", tenant="globex"))
    assert store.get_access_point("ap-2") == first
    assert store.find_access_point("acme", "app").access_point_id == "ap-1"  # same time: lower id first
    assert store.find_access_point("globex", "other") is None
    assert [a.access_point_id for a in store.list_access_points("acme", None, 10)] == ["ap-0", "ap-1", "ap-2"]
    assert [a.access_point_id for a in store.list_access_points("acme", (2.0, "ap-1"), 10)] == ["ap-2"]

    store.add_credential(credential("s-1", "ap-2"), 5, now=0.0)
    assert store.delete_access_point("ap-2", now=50.0) is True
    assert store.get_access_point("ap-2") is None
    revoked = store.get_credential("s-1")
    assert (revoked.revoked, revoked.revoke_time) == (True, 50.0)
    assert store.delete_access_point("ap-2", now=60.0) is False


# -- credentials --------------------------------------------------------------------------------


def test_credentials_limit_serial_and_missing_access_point(store):
    """A credential needs its access point, a fresh serial and room under the live limit; revoked
    and expired credentials leave room."""
    store.add_access_point(access_point())
    with pytest.raises(AccessPointMissing):
        store.add_credential(credential("s-0", "ap-none"), 2, now=0.0)
    first = store.add_credential(credential("s-1"), 2, now=0.0)
    assert store.get_credential("s-1") == first and first.revoked is False
    with pytest.raises(SerialTaken):
        store.add_credential(credential("s-1"), 2, now=0.0)
    store.add_credential(credential("s-2", not_after=100.0), 2, now=0.0)
    with pytest.raises(CredentialLimit):
        store.add_credential(credential("s-3"), 2, now=0.0)
    store.add_credential(credential("s-3"), 2, now=100.0)  # s-2 expired at 100
    store.revoke_credential("s-1", now=101.0)
    store.add_credential(credential("s-4"), 2, now=101.0)
    assert [c.serial for c in store.list_credentials("ap-1")] == ["s-1", "s-2", "s-3", "s-4"]


def test_revoke_keeps_the_first_revoke_time(store):
    store.add_access_point(access_point())
    store.add_credential(credential("s-1"), 5, now=0.0)
    assert store.revoke_credential("s-1", now=20.0).revoke_time == 20.0
    again = store.revoke_credential("s-1", now=30.0)
    assert (again.revoked, again.revoke_time) == (True, 20.0)
    assert store.revoke_credential("s-unknown", now=30.0) is None


def test_concurrent_credentials_never_exceed_the_limit(location, store):
    """Two stores (two replicas) adding credentials to one access point at once: the live limit
    holds, every serial is stored once."""
    other = SqlAdminStore(location)
    store.add_access_point(access_point())
    outcomes: list[str] = []
    lock = threading.Lock()

    def add(target: SqlAdminStore, serial: str) -> None:
        try:
            target.add_credential(credential(serial), 3, now=0.0)
            result = "added"
        except CredentialLimit:
            result = "limit"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=add, args=((store, other)[n % 2], f"s-{n}")) for n in range(10)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.close()
    assert sorted(outcomes) == ["added"] * 3 + ["limit"] * 7
    assert len(store.list_credentials("ap-1")) == 3
