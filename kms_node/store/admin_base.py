"""The control-plane store of the shared KMS: dedicated instances, access points and their
credentials (seed 001, claims 1, 3 and 6). Interface and records; no gRPC.

A credential is what the KMS keeps of a client certificate it issued: serial, SHA-256
fingerprint, validity and revocation. Never the certificate's private key, which only the client
holds. Times are Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Instance:
    """A registered dedicated KMS instance and its network policy."""

    instance_id: str
    tenant_id: str
    node_endpoints: tuple[str, ...]
    private_endpoint: str
    management_zones: tuple[str, ...]
    allow_public_crypto: bool
    create_time: float


@dataclass(frozen=True, slots=True)
class AccessPoint:
    """An identity of a tenant's application: roles (of `foundation.access_policy.ROLES`), keys,
    networks, and whether it is an operator (acts on every tenant)."""

    access_point_id: str
    tenant_id: str
    name: str
    roles: frozenset[str]
    key_patterns: tuple[str, ...]
    allowed_zones: tuple[str, ...]
    allowed_cidrs: tuple[str, ...]
    create_time: float
    operator: bool = False


@dataclass(frozen=True, slots=True)
class Credential:
    """A client certificate issued to an access point."""

    serial: str
    access_point_id: str
    fingerprint_sha256: str
    not_before: float
    not_after: float
    revoked: bool = False
    revoke_time: float | None = None

    def live(self, now: float) -> bool:
        """Unrevoked and unexpired at `now` (what counts against the per-access-point limit)."""
        return not self.revoked and now < self.not_after


class InstanceIdTaken(Exception):
    """An instance with this id is registered already."""


class AccessPointMissing(Exception):
    """The access point does not exist (any more)."""


class CredentialLimit(Exception):
    """The access point already has the maximum number of live credentials."""


class SerialTaken(Exception):
    """A credential with this serial exists already."""


class AdminStore(Protocol):
    """Persistent control-plane records. Synchronous and thread-safe; services call it from a
    worker thread."""

    def add_instance(self, instance: Instance) -> Instance:
        """Record a new instance. Raises InstanceIdTaken."""

    def get_instance(self, instance_id: str) -> Instance | None:
        """The instance, or None."""

    def list_instances(self, tenant_id: str | None, after: str | None, limit: int) -> list[Instance]:
        """Instances of one tenant (every tenant's with None), ordered by id, after the given id."""

    def add_access_point(self, access_point: AccessPoint) -> AccessPoint:
        """Record a new access point."""

    def get_access_point(self, access_point_id: str) -> AccessPoint | None:
        """The access point, or None."""

    def find_access_point(self, tenant_id: str, name: str) -> AccessPoint | None:
        """The oldest access point of a tenant with this name, or None."""

    def list_access_points(self, tenant_id: str, after: tuple[float, str] | None, limit: int) -> list[AccessPoint]:
        """A tenant's access points ordered by (create_time, access_point_id), after a position."""

    def delete_access_point(self, access_point_id: str, now: float) -> bool:
        """Revoke the access point's unrevoked credentials (revoke_time `now`) and delete it, in
        one transaction; return whether it existed."""

    def add_credential(self, credential: Credential, max_live: int, now: float) -> Credential:
        """Record a credential if its access point has fewer than `max_live` live credentials at
        `now`, checked and inserted in one transaction. Raises AccessPointMissing,
        CredentialLimit or SerialTaken."""

    def get_credential(self, serial: str) -> Credential | None:
        """The credential with this serial, or None."""

    def list_credentials(self, access_point_id: str) -> list[Credential]:
        """Every credential of an access point (revoked and expired too), oldest first."""

    def revoke_credential(self, serial: str, now: float) -> Credential | None:
        """Mark a credential revoked at `now` (keeping an earlier revoke_time); None if unknown."""

    def close(self) -> None:
        """Release connections."""
