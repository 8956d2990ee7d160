"""The node's key store interface and the records it holds.

A store holds key metadata, the domain-wrapped blob of every CMK version and the aliases. It
never sees a plaintext key. Changes to a key are compare-and-set on its `revision`, so replicas
sharing one store never lose an update; a lost race raises `RevisionConflict` and the service
retries on fresh data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence


class KeyState:
    """Key states as stored (the names of `keyrelay.v1.KeyState` without prefix)."""

    CREATING = "CREATING"
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    PENDING_DELETION = "PENDING_DELETION"


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One CMK version: its number, creation time and domain-wrapped blob."""

    version: int
    create_time: float
    wrapped: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key's metadata as stored. Times are Unix seconds.

    On a shared node the same table is the key registry: a key of a dedicated instance is a row
    with `instance_id` set and no versions (`primary_version` 0). The store sets `revision` and
    `update_time` whenever it saves a change.
    """

    key_id: str
    tenant_id: str
    description: str
    tags: dict[str, str]
    state: str
    instance_id: str
    key_spec: str
    primary_version: int
    min_decryption_version: int
    create_time: float
    deletion_time: float | None = None
    revision: int = 1
    aliases: tuple[str, ...] = ()
    versions: tuple[VersionRecord, ...] = ()
    update_time: float = 0.0

    def version(self, number: int) -> VersionRecord | None:
        """The version record with that number, if the key has it."""
        for record in self.versions:
            if record.version == number:
                return record
        return None

    def evolve(self, **changes) -> "KeyRecord":
        """A copy with changes (the store bumps the revision when it saves it)."""
        return replace(self, **changes)


class RevisionConflict(Exception):
    """The key changed since it was read; re-read and try again."""


class AliasTaken(Exception):
    """The alias exists in this tenant already."""


class KeyIdTaken(Exception):
    """A key with this id exists already."""


class RequestIdTaken(Exception):
    """The tenant used this request id for a reservation on another instance or alias (the
    `Reservation` is the argument)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """A registry reservation: the request id a gateway chose (unique within the tenant), the
    key it reserved, and the instance and alias ('' for none) it was made for."""

    request_id: str
    tenant_id: str
    key_id: str
    instance_id: str = ""
    alias: str = ""


class KeyStore(Protocol):
    """Persistent key metadata. Implementations are synchronous and thread-safe; the service
    calls them from a worker thread."""

    def create_key(self, record: KeyRecord, alias: str | None) -> KeyRecord:
        """Insert a new key with its versions (and alias). Raises AliasTaken or KeyIdTaken."""

    def get_key(self, key_id: str) -> KeyRecord | None:
        """The key with its versions and aliases, or None."""

    def resolve_alias(self, tenant_id: str, alias: str) -> str | None:
        """The key id an alias points to in a tenant, or None."""

    def list_keys(self, tenant_id: str, after: tuple[float, str] | None, limit: int) -> list[KeyRecord]:
        """A tenant's keys, except those still CREATING, ordered by (create_time, key_id) and
        starting after the given position."""

    def update_key(self, record: KeyRecord, new_version: VersionRecord | None = None) -> KeyRecord:
        """Save metadata changes (and optionally a new version) if `record.revision` is current.

        Returns the saved record with its new revision; raises RevisionConflict otherwise.
        """

    def create_alias(self, tenant_id: str, alias: str, key_id: str) -> None:
        """Point a new alias at a key. Raises AliasTaken."""

    def delete_alias(self, tenant_id: str, alias: str) -> str | None:
        """Remove an alias; return the key id it pointed to, or None if it did not exist."""

    def keys_due_for_deletion(self, now: float) -> list[str]:
        """Ids of keys pending deletion whose deletion time has passed."""

    def delete_key(self, key_id: str, expected_revision: int) -> bool:
        """Delete a key, its versions and aliases if unchanged; return whether it did."""

    def replace_aliases(self, record: KeyRecord, aliases: Sequence[str]) -> KeyRecord:
        """Save `record`'s metadata like `update_key` and make `aliases` its complete alias set,
        in one transaction, if `record.revision` is current.

        Raises RevisionConflict, or AliasTaken when an alias belongs to another key of the tenant.
        """

    def reserve_key(self, record: KeyRecord, alias: str | None, request_id: str) -> KeyRecord:
        """Insert a registry record (and alias) under the tenant's request id, idempotently: if the
        request id already reserved a key of the tenant on the same instance with the same alias
        that still exists, return that key instead.

        Raises AliasTaken, KeyIdTaken, or RequestIdTaken (the tenant used the request id for
        another instance or alias).
        """

    def find_reservation(self, tenant_id: str, request_id: str) -> Reservation | None:
        """The reservation a tenant made under a request id, or None."""

    def close(self) -> None:
        """Release connections."""
