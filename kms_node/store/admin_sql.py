"""The control-plane store in SQL, on SQLite or PostgreSQL like the key store (`kms_node.store.sql`):
the shared node keeps it in the key store's database, with its own schema-version table
(`admin_schema_version`) and migrations."""

from __future__ import annotations

import json

from foundation.access_policy import TENANT_ID, sorted_roles
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
from kms_node.store.sql_errors import run_write

# Each entry migrates the schema from version i to i + 1; append, never edit. Written for SQLite;
# `foundation.postgres_db` maps the type names for PostgreSQL. Booleans are integers 0 and 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE instances (
        instance_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        node_endpoints TEXT NOT NULL,
        private_endpoint TEXT NOT NULL DEFAULT '',
        management_zones TEXT NOT NULL DEFAULT '[]',
        allow_public_crypto INTEGER NOT NULL DEFAULT 0,
        create_time REAL NOT NULL
    );
    CREATE INDEX instances_by_tenant ON instances (tenant_id, instance_id);
    CREATE TABLE access_points (
        access_point_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        key_patterns TEXT NOT NULL DEFAULT '[]',
        allowed_zones TEXT NOT NULL DEFAULT '[]',
        allowed_cidrs TEXT NOT NULL DEFAULT '[]',
        create_time REAL NOT NULL
    );
    CREATE INDEX access_points_by_tenant ON access_points (tenant_id, create_time, access_point_id);
    CREATE TABLE credentials (
        serial TEXT PRIMARY KEY,
        access_point_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        not_before REAL NOT NULL,
        not_after REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0,
        revoke_time REAL
    );
    CREATE INDEX credentials_by_access_point ON credentials (access_point_id, not_before, serial);
    """,
    # 2: a set of roles and the operator property. An administrator had every power (it could mint
    # itself any role), so it becomes the holder of every role; the operator tenant's
    # administrators acted for every tenant, so they become operators ({operator_tenant} is
    # filled in by `migrations`).
    """
    ALTER TABLE access_points ADD COLUMN roles TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE access_points ADD COLUMN operator INTEGER NOT NULL DEFAULT 0;
    UPDATE access_points SET operator = 1 WHERE role = 'admin' AND tenant_id = '{operator_tenant}';
    UPDATE access_points SET roles = '["key-admin", "access-admin", "crypto-user", "messaging-user"]' WHERE role = 'admin';
    UPDATE access_points SET roles = '["crypto-user"]' WHERE role = 'crypto-user';
    UPDATE access_points SET roles = '["messaging-user"]' WHERE role = 'messaging-user';
    """,
)


def migrations(operator_tenant: str) -> tuple[str, ...]:
    """The migrations, for a shared KMS whose operator tenant is `operator_tenant`."""
    if not TENANT_ID.fullmatch(operator_tenant):
        raise ValueError(f"operator tenant {operator_tenant[:70]!r} is not a tenant id")
    return tuple(script.replace("{operator_tenant}", operator_tenant) for script in MIGRATIONS)


_INSTANCE = "instance_id, tenant_id, node_endpoints, private_endpoint, management_zones, allow_public_crypto, create_time"
_ACCESS_POINT = (
    "access_point_id, tenant_id, name, role, key_patterns, allowed_zones, allowed_cidrs, create_time, roles, operator"
)
_CREDENTIAL = "serial, access_point_id, fingerprint, not_before, not_after, revoked, revoke_time"


def _instance(row: tuple) -> Instance:
    return Instance(
        instance_id=row[0],
        tenant_id=row[1],
        node_endpoints=tuple(json.loads(row[2])),
        private_endpoint=row[3],
        management_zones=tuple(json.loads(row[4])),
        allow_public_crypto=bool(row[5]),
        create_time=row[6],
    )


def _access_point(row: tuple) -> AccessPoint:
    return AccessPoint(
        access_point_id=row[0],
        tenant_id=row[1],
        name=row[2],
        roles=frozenset(json.loads(row[8])),
        key_patterns=tuple(json.loads(row[4])),
        allowed_zones=tuple(json.loads(row[5])),
        allowed_cidrs=tuple(json.loads(row[6])),
        create_time=row[7],
        operator=bool(row[9]),
    )


def _credential(row: tuple) -> Credential:
    return Credential(
        serial=row[0],
        access_point_id=row[1],
        fingerprint_sha256=row[2],
        not_before=row[3],
        not_after=row[4],
        revoked=bool(row[5]),
        revoke_time=row[6],
    )


class SqlAdminStore:
    """An `AdminStore` in SQLite (a file path) or PostgreSQL (a `postgresql://` DSN), typically the
    key store's database."""

    def __init__(self, location: str, *, operator_tenant: str = "operator") -> None:
        self._db = open_database(
            location, migrations(operator_tenant), "admin_schema_version", what="control-plane store"
        )
        #: Where the store is, fit for messages (a DSN's password is masked).
        self.location = self._db.path

    def schema_version(self) -> int:
        """The control-plane schema version of the database."""
        return self._db.schema_version()

    def _one(self, sql: str, args: tuple, conn=None):
        return (conn or self._db.conn()).execute(sql, args).fetchone()

    # -- instances ------------------------------------------------------------------------

    def add_instance(self, instance: Instance) -> Instance:
        def insert(conn) -> Instance:
            if self._one("SELECT 1 FROM instances WHERE instance_id = ?", (instance.instance_id,), conn):
                raise InstanceIdTaken(instance.instance_id)
            conn.execute(
                f"INSERT INTO instances ({_INSTANCE}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    instance.instance_id, instance.tenant_id, json.dumps(list(instance.node_endpoints)),
                    instance.private_endpoint, json.dumps(list(instance.management_zones)),
                    int(instance.allow_public_crypto), instance.create_time,
                ),
            )
            return instance

        return run_write(self._db, insert, {"instances": lambda: InstanceIdTaken(instance.instance_id)})

    def get_instance(self, instance_id: str) -> Instance | None:
        row = self._one(f"SELECT {_INSTANCE} FROM instances WHERE instance_id = ?", (instance_id,))
        return _instance(row) if row else None

    def list_instances(self, tenant_id: str | None, after: str | None, limit: int) -> list[Instance]:
        # Two statements rather than `? IS NULL`: PostgreSQL cannot type a parameter compared with NULL.
        if tenant_id is None:
            sql, args = f"SELECT {_INSTANCE} FROM instances WHERE instance_id > ?", (after or "",)
        else:
            sql, args = f"SELECT {_INSTANCE} FROM instances WHERE tenant_id = ? AND instance_id > ?", (tenant_id, after or "")
        rows = self._db.conn().execute(sql + " ORDER BY instance_id LIMIT ?", (*args, limit)).fetchall()
        return [_instance(row) for row in rows]

    # -- access points --------------------------------------------------------------------

    def add_access_point(self, access_point: AccessPoint) -> AccessPoint:
        roles = list(sorted_roles(access_point.roles))

        def insert(conn) -> AccessPoint:
            conn.execute(
                f"INSERT INTO access_points ({_ACCESS_POINT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    access_point.access_point_id, access_point.tenant_id, access_point.name, ",".join(roles),
                    json.dumps(list(access_point.key_patterns)), json.dumps(list(access_point.allowed_zones)),
                    json.dumps(list(access_point.allowed_cidrs)), access_point.create_time, json.dumps(roles),
                    int(access_point.operator),
                ),
            )
            return access_point

        return self._db.write(insert)

    def get_access_point(self, access_point_id: str) -> AccessPoint | None:
        row = self._one(f"SELECT {_ACCESS_POINT} FROM access_points WHERE access_point_id = ?", (access_point_id,))
        return _access_point(row) if row else None

    def find_access_point(self, tenant_id: str, name: str) -> AccessPoint | None:
        row = self._one(
            f"SELECT {_ACCESS_POINT} FROM access_points WHERE tenant_id = ? AND name = ? "
            "ORDER BY create_time, access_point_id LIMIT 1",
            (tenant_id, name),
        )
        return _access_point(row) if row else None

    def list_access_points(self, tenant_id: str, after: tuple[float, str] | None, limit: int) -> list[AccessPoint]:
        after_time, after_id = after if after is not None else (float("-inf"), "")
        rows = self._db.conn().execute(
            f"SELECT {_ACCESS_POINT} FROM access_points WHERE tenant_id = ? "
            "AND (create_time, access_point_id) > (?, ?) ORDER BY create_time, access_point_id LIMIT ?",
            (tenant_id, after_time, after_id, limit),
        ).fetchall()
        return [_access_point(row) for row in rows]

    def delete_access_point(self, access_point_id: str, now: float) -> bool:
        def delete(conn) -> bool:
            conn.execute(
                "UPDATE credentials SET revoked = 1, revoke_time = ? WHERE access_point_id = ? AND revoked = 0",
                (now, access_point_id),
            )
            return conn.execute("DELETE FROM access_points WHERE access_point_id = ?", (access_point_id,)).rowcount == 1

        return self._db.write(delete)

    # -- credentials ----------------------------------------------------------------------

    def add_credential(self, credential: Credential, max_live: int, now: float) -> Credential:
        def insert(conn) -> Credential:
            ap_id = credential.access_point_id
            if not self._one("SELECT 1 FROM access_points WHERE access_point_id = ?", (ap_id,), conn):
                raise AccessPointMissing(ap_id)
            (live,) = self._one(
                "SELECT COUNT(*) FROM credentials WHERE access_point_id = ? AND revoked = 0 AND not_after > ?",
                (ap_id, now),
                conn,
            )
            if live >= max_live:
                raise CredentialLimit(ap_id)
            if self._one("SELECT 1 FROM credentials WHERE serial = ?", (credential.serial,), conn):
                raise SerialTaken(credential.serial)
            conn.execute(
                f"INSERT INTO credentials ({_CREDENTIAL}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    credential.serial, ap_id, credential.fingerprint_sha256, credential.not_before,
                    credential.not_after, int(credential.revoked), credential.revoke_time,
                ),
            )
            return credential

        return run_write(self._db, insert, {"credentials": lambda: SerialTaken(credential.serial)})

    def get_credential(self, serial: str) -> Credential | None:
        row = self._one(f"SELECT {_CREDENTIAL} FROM credentials WHERE serial = ?", (serial,))
        return _credential(row) if row else None

    def list_credentials(self, access_point_id: str) -> list[Credential]:
        rows = self._db.conn().execute(
            f"SELECT {_CREDENTIAL} FROM credentials WHERE access_point_id = ? ORDER BY not_before, serial",
            (access_point_id,),
        ).fetchall()
        return [_credential(row) for row in rows]

    def revoke_credential(self, serial: str, now: float) -> Credential | None:
        def revoke(conn) -> Credential | None:
            conn.execute("UPDATE credentials SET revoked = 1, revoke_time = ? WHERE serial = ? AND revoked = 0", (now, serial))
            row = self._one(f"SELECT {_CREDENTIAL} FROM credentials WHERE serial = ?", (serial,), conn)
            return _credential(row) if row else None

        return self._db.write(revoke)

    def close(self) -> None:
        self._db.close()
