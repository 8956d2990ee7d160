"""The control plane of the shared KMS: dedicated instances, access points and the client
certificates issued to them. No gRPC here.

Every administrative call is made by a `Principal`: the calling access point, as this store holds
it. What it may do is decided by `foundation.access_policy`: its roles; its tenant only (another
tenant's objects are "not found", and acting for another tenant is refused) unless it is an
operator; and only on access points within its own powers (`check_grant`, the non-escalation
rule). `authenticate` and `resolve_instance` are not administrative: the gateway and the private
endpoints ask them which access point a client certificate belongs to and who owns an instance.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from foundation import access_policy as policy
from foundation import page_tokens, pki
from foundation.access_policy import ALL_ROLES, INSTANCE_ID, TENANT_ID, Principal, valid_zone
from foundation.errors import (
    quote,
    AccessPointNotFoundError,
    CredentialExpiredError,
    CredentialLimitReachedError,
    CredentialNotFoundError,
    CredentialRevokedError,
    FailedPreconditionError,
    InstanceExistsError,
    InstanceNotFoundError,
    InternalError,
    InvalidArgumentError,
    UnauthenticatedError,
)
from foundation.page_tokens import Listing
from foundation.store_workers import StoreWorkers
from kms_node.service import clamp_page_size, is_uuid
from kms_node.store.admin_base import (
    AccessPoint,
    AccessPointMissing,
    AdminStore,
    Credential,
    CredentialLimit,
    Instance,
    InstanceIdTaken,
    SerialTaken,
)

log = logging.getLogger(__name__)

MAX_LIVE_CREDENTIALS = 3
DEFAULT_VALIDITY_DAYS, MAX_VALIDITY_DAYS = 90, 365
BOOTSTRAP_NAME = "bootstrap-admin"
BOOTSTRAP_VALIDITY_DAYS = 365
MAX_NAME = 128
#: Credentials start this much before they are issued, so peers whose clocks run behind accept them.
CLOCK_SKEW_SECONDS = 300
MAX_LIST_ITEMS = 100
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_ALIAS_PATTERN = re.compile(r"^alias/[A-Za-z0-9/_*-]{1,250}$")
_KEY_ID_PATTERN = re.compile(r"^[0-9a-f*-]{1,36}$")


def principal_of(access_point: AccessPoint, serial: str = "") -> Principal:
    """The `Principal` an access point is when one of its credentials (`serial`) calls."""
    return Principal(
        tenant_id=access_point.tenant_id,
        access_point_id=access_point.access_point_id,
        name=access_point.name,
        roles=frozenset(access_point.roles),
        key_patterns=access_point.key_patterns,
        allowed_zones=access_point.allowed_zones,
        allowed_cidrs=access_point.allowed_cidrs,
        operator=access_point.operator,
        credential_serial=serial,
    )


# -- validation --------------------------------------------------------------------------------


def check_tenant(tenant_id: str) -> None:
    """InvalidArgumentError unless `tenant_id` is 1-64 of a-z 0-9 . _ - starting alphanumeric."""
    if not tenant_id:
        raise InvalidArgumentError("tenant_id is required")
    if not TENANT_ID.fullmatch(tenant_id):
        raise InvalidArgumentError(f"tenant_id {quote(tenant_id)} must be 1-64 of a-z 0-9 . _ - (starting a-z or 0-9)")


def _check_endpoint(endpoint: str, field: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    ok = bool(sep) and port.isdigit() and 1 <= int(port) <= 65535
    if ok and host.startswith("[") and host.endswith("]"):
        try:
            ok = ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            ok = False
    elif ok:
        ok = bool(_HOST.fullmatch(host))
    if not ok:
        raise InvalidArgumentError(
            f"{field} {quote(endpoint)} must be host:port (a DNS name, IPv4 address or [IPv6] address, "
            "and a port 1-65535)"
        )


def _unique(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _check_list(values: Sequence[str], field: str) -> tuple[str, ...]:
    if len(values) > MAX_LIST_ITEMS:
        raise InvalidArgumentError(f"{field} takes at most {MAX_LIST_ITEMS} entries (got {len(values)})")
    return _unique(values)


def _check_zones(zones: Sequence[str], field: str) -> tuple[str, ...]:
    for zone in zones:
        if not valid_zone(zone):
            raise InvalidArgumentError(
                f"{field}: zone {quote(zone)} must be 1-32 of a-z 0-9 and '-', starting with a letter or digit"
            )
    return _check_list(zones, field)


def _check_key_pattern(pattern: str) -> None:
    if pattern == "*" or _ALIAS_PATTERN.fullmatch(pattern) or is_uuid(pattern):
        return
    if "*" in pattern and _KEY_ID_PATTERN.fullmatch(pattern):
        return
    raise InvalidArgumentError(
        f"key pattern {quote(pattern)} must be a key id (lower-case UUID), an alias 'alias/NAME', or '*'; "
        "'*' inside a pattern matches any run of characters"
    )


def _check_cidrs(cidrs: Sequence[str]) -> tuple[str, ...]:
    normalized = []
    for cidr in cidrs:
        try:
            normalized.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
        except ValueError:
            raise InvalidArgumentError(
                f"allowed_cidrs: {quote(cidr)} is not a CIDR (IPv4 or IPv6 network, e.g. 10.0.0.0/8)"
            ) from None
    return _check_list(normalized, "allowed_cidrs")


def _validity_days(requested: int) -> int:
    days = requested or DEFAULT_VALIDITY_DAYS
    if not 1 <= days <= MAX_VALIDITY_DAYS:
        raise InvalidArgumentError(f"validity_days must be 1-{MAX_VALIDITY_DAYS}, or 0 for {DEFAULT_VALIDITY_DAYS} (got {requested})")
    return days


def _pem(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


class AdminService:
    """Instances, access points and credentials over an `AdminStore`.

    `ca` signs credentials; without it `issue_credential` fails (FAILED_PRECONDITION).
    `operator_tenant` is the tenant of the bootstrap operator credential.
    """

    def __init__(
        self,
        store: AdminStore,
        ca: pki.CertificateAuthority | None,
        *,
        operator_tenant: str = "operator",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ca = ca
        self.operator_tenant = operator_tenant
        self._clock = clock
        self._db = StoreWorkers(name="admin")

    def close(self) -> None:
        """Stop the worker threads (the store is closed by its owner)."""
        self._db.close()

    async def principal(self, access_point_id: str) -> Principal:
        """The calling access point as this store holds it (CredentialRevokedError once deleted)."""
        access_point = await self._db(self._store.get_access_point, access_point_id)
        if access_point is None:
            raise CredentialRevokedError(
                f"access point {quote(access_point_id)} was deleted and its credentials revoked; use another credential"
            )
        return principal_of(access_point)

    @staticmethod
    def _authorize(principal: Principal, method: str) -> None:
        # The gateway made this check with the network ones; repeated here, where the call lands.
        policy.enforce(policy.check_role(principal, method))

    # -- instances --------------------------------------------------------------------------

    async def register_instance(
        self,
        principal: Principal,
        instance_id: str,
        tenant_id: str,
        node_endpoints: Sequence[str],
        private_endpoint: str = "",
        *,
        management_zones: Sequence[str] = (),
        allow_public_crypto: bool = False,
    ) -> Instance:
        """Register a dedicated instance of a tenant, its node replicas and network policy
        (operators only: instance ids are global)."""
        self._authorize(principal, "RegisterInstance")
        if not INSTANCE_ID.fullmatch(instance_id):
            raise InvalidArgumentError(
                f"instance_id {quote(instance_id)} must be 1-63 of a-z 0-9 and '-', not starting or ending with '-'"
            )
        check_tenant(tenant_id)
        if not node_endpoints:
            raise InvalidArgumentError("node_endpoints is empty: give the host:port of at least one node replica")
        for endpoint in node_endpoints:
            _check_endpoint(endpoint, "node_endpoints")
        if private_endpoint:
            _check_endpoint(private_endpoint, "private_endpoint")
        instance = Instance(
            instance_id=instance_id,
            tenant_id=tenant_id,
            node_endpoints=_check_list(node_endpoints, "node_endpoints"),
            private_endpoint=private_endpoint,
            management_zones=_check_zones(management_zones, "management_zones"),
            allow_public_crypto=allow_public_crypto,
            create_time=self._clock(),
        )
        try:
            await self._db(self._store.add_instance, instance)
        except InstanceIdTaken:
            raise InstanceExistsError(f"instance {quote(instance_id)} is registered already") from None
        log.info("registered instance %s of tenant %s", instance_id, tenant_id)
        return instance

    async def resolve_instance(self, instance_id: str) -> Instance:
        """Any registered instance, for the entry points (not an administrative call)."""
        instance = await self._db(self._store.get_instance, instance_id)
        if instance is None:
            raise InstanceNotFoundError(f"no instance {quote(instance_id)} is registered")
        return instance

    async def describe_instance(self, principal: Principal, instance_id: str) -> Instance:
        """One instance of a tenant the caller administers."""
        self._authorize(principal, "DescribeInstance")
        instance = await self._db(self._store.get_instance, instance_id)
        if instance is None or not policy.sees(principal, instance.tenant_id):
            raise InstanceNotFoundError(f"no instance {quote(instance_id)} is registered for your tenant")
        return instance

    async def list_instances(
        self, principal: Principal, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Instance], str]:
        """One page of the instances the caller administers, by id, and the next page's token."""
        self._authorize(principal, "ListInstances")
        size = clamp_page_size(page_size)
        after = None
        if page_token:
            (after,) = page_tokens.decode(Listing.INSTANCES, page_token)
        tenant = None if principal.operator else principal.tenant_id
        instances = await self._db(self._store.list_instances, tenant, after, size + 1)
        if len(instances) <= size:
            return instances, ""
        instances = instances[:size]
        return instances, page_tokens.encode(Listing.INSTANCES, (instances[-1].instance_id,))

    # -- access points ----------------------------------------------------------------------

    async def create_access_point(
        self,
        principal: Principal,
        tenant_id: str,
        name: str,
        roles: Sequence[str],
        key_patterns: Sequence[str] = (),
        allowed_zones: Sequence[str] = (),
        allowed_cidrs: Sequence[str] = (),
        *,
        operator: bool = False,
    ) -> AccessPoint:
        """Create an access point with `roles` (of `foundation.access_policy.ROLES`, or `admin`
        for all), if the caller covers it (`access_policy.check_grant`)."""
        self._authorize(principal, "CreateAccessPoint")
        access_point = self._new_access_point(
            tenant_id, name, roles, key_patterns, allowed_zones, allowed_cidrs, operator=operator
        )
        policy.enforce(policy.check_grant(principal, access_point, action="create"))
        await self._db(self._store.add_access_point, access_point)
        log.info(
            "created access point %s (%s, %s%s) of tenant %s for access point %s", access_point.access_point_id, name,
            ",".join(policy.sorted_roles(access_point.roles)), ", operator" if operator else "", tenant_id,
            principal.access_point_id,
        )
        return access_point

    def _new_access_point(
        self,
        tenant_id: str,
        name: str,
        roles: Sequence[str],
        key_patterns: Sequence[str],
        allowed_zones: Sequence[str],
        allowed_cidrs: Sequence[str],
        *,
        operator: bool,
    ) -> AccessPoint:
        check_tenant(tenant_id)
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise InvalidArgumentError(f"name is required: 1-{MAX_NAME} printable characters")
        role_set = policy.parse_roles(roles)
        for pattern in key_patterns:
            _check_key_pattern(pattern)
        return AccessPoint(
            access_point_id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            name=name,
            roles=role_set,
            key_patterns=_check_list(key_patterns, "key_patterns"),
            allowed_zones=_check_zones(allowed_zones, "allowed_zones"),
            allowed_cidrs=_check_cidrs(allowed_cidrs),
            create_time=self._clock(),
            operator=operator,
        )

    def _visible_access_point(self, principal: Principal, access_point_id: str) -> AccessPoint:
        access_point = self._store.get_access_point(access_point_id)
        if access_point is None or not policy.sees(principal, access_point.tenant_id):
            raise AccessPointNotFoundError(f"no access point {quote(access_point_id)} exists in your tenant")
        return access_point

    def _governed_access_point(self, principal: Principal, access_point_id: str, action: str) -> AccessPoint:
        """An access point the caller sees and covers, for an action that changes it."""
        access_point = self._visible_access_point(principal, access_point_id)
        policy.enforce(policy.check_grant(principal, access_point, action=action))
        return access_point

    async def describe_access_point(self, principal: Principal, access_point_id: str) -> AccessPoint:
        """One access point the caller administers."""
        self._authorize(principal, "DescribeAccessPoint")
        return await self._db(self._visible_access_point, principal, access_point_id)

    async def list_access_points(
        self, principal: Principal, tenant_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[AccessPoint], str]:
        """One page of a tenant's access points, oldest first, and the next page's token."""
        self._authorize(principal, "ListAccessPoints")
        check_tenant(tenant_id)
        policy.enforce(policy.check_tenant(principal, tenant_id))
        size = clamp_page_size(page_size)
        after = None
        if page_token:
            after = page_tokens.decode(Listing.ACCESS_POINTS, page_token)
        points = await self._db(self._store.list_access_points, tenant_id, after, size + 1)
        if len(points) <= size:
            return points, ""
        points = points[:size]
        return points, page_tokens.encode(Listing.ACCESS_POINTS, (points[-1].create_time, points[-1].access_point_id))

    async def delete_access_point(self, principal: Principal, access_point_id: str) -> None:
        """Delete an access point the caller covers and revoke all its credentials at once."""
        self._authorize(principal, "DeleteAccessPoint")

        def delete() -> bool:
            self._governed_access_point(principal, access_point_id, "delete")
            return self._store.delete_access_point(access_point_id, self._clock())

        if not await self._db(delete):
            raise AccessPointNotFoundError(f"no access point {quote(access_point_id)} exists in your tenant")
        log.info("deleted access point %s and revoked its credentials", access_point_id)

    # -- credentials ------------------------------------------------------------------------

    async def issue_credential(
        self, principal: Principal, access_point_id: str, csr_pem: bytes | str, validity_days: int = 0
    ) -> tuple[Credential, bytes, bytes]:
        """Sign a client's CSR as a credential of an access point the caller covers.

        Returns (credential record, certificate PEM, CA certificate PEM).
        """
        self._authorize(principal, "IssueCredential")
        days = _validity_days(validity_days)
        if self._ca is None:
            raise FailedPreconditionError("this KMS has no CA configured (ca.cert, ca.key)")
        access_point = await self._db(self._governed_access_point, principal, access_point_id, "issue a credential to")
        return await self._issue(access_point, csr_pem, days)

    async def _issue(self, access_point: AccessPoint, csr_pem: bytes | str, days: int) -> tuple[Credential, bytes, bytes]:
        access_point_id = access_point.access_point_id
        now = self._clock()
        certificate = await self._db(
            lambda: self._ca.sign_csr(
                _pem(csr_pem),
                common_name=f"ap:{access_point_id}",
                organization=access_point.tenant_id,
                validity_days=days,
                not_before=datetime.fromtimestamp(now - CLOCK_SKEW_SECONDS, timezone.utc),
            )
        )
        credential = Credential(
            serial=pki.serial_hex(certificate),
            access_point_id=access_point_id,
            fingerprint_sha256=pki.fingerprint_sha256(certificate),
            not_before=certificate.not_valid_before_utc.timestamp(),
            not_after=certificate.not_valid_after_utc.timestamp(),
        )
        try:
            await self._db(self._store.add_credential, credential, MAX_LIVE_CREDENTIALS, now)
        except AccessPointMissing:
            raise AccessPointNotFoundError(f"access point {quote(access_point_id)} was deleted meanwhile") from None
        except CredentialLimit:
            raise CredentialLimitReachedError(
                f"access point {quote(access_point.name)} has {MAX_LIVE_CREDENTIALS} unrevoked, unexpired credentials "
                "already; revoke one (RevokeCredential) before issuing another"
            ) from None
        except SerialTaken:  # random 159-bit serials: practically never
            raise InternalError("the CA issued a serial number twice; retry") from None
        log.info("issued credential %s to access point %s", credential.serial, access_point_id)
        return credential, pki.certificate_pem(certificate), self._ca.certificate_pem

    async def list_credentials(self, principal: Principal, access_point_id: str) -> list[Credential]:
        """Every credential of an access point, revoked and expired ones too."""
        self._authorize(principal, "ListCredentials")

        def read() -> list[Credential]:
            self._visible_access_point(principal, access_point_id)
            return self._store.list_credentials(access_point_id)

        return await self._db(read)

    async def revoke_credential(self, principal: Principal, serial: str) -> Credential:
        """Revoke a credential of an access point the caller covers; revoking it again keeps the
        first revoke_time."""
        self._authorize(principal, "RevokeCredential")
        serial = serial.lower()

        def revoke() -> Credential | None:
            credential = self._store.get_credential(serial)
            if credential is None:
                return None
            try:
                self._governed_access_point(principal, credential.access_point_id, "revoke a credential of")
            except AccessPointNotFoundError:
                return None
            return self._store.revoke_credential(serial, self._clock())

        credential = await self._db(revoke)
        if credential is None:
            raise CredentialNotFoundError(f"no credential with serial {quote(serial)} exists in your tenant")
        log.info("revoked credential %s", serial)
        return credential

    # -- authentication ---------------------------------------------------------------------

    def _authenticate_blocking(self, serial: str, fingerprint: str) -> tuple[Credential, AccessPoint]:
        unknown = UnauthenticatedError(
            "the client certificate is not a credential this KMS issued; issue one (IssueCredential)"
        )
        credential = self._store.get_credential(serial) if serial else None
        if credential is None or not hmac.compare_digest(credential.fingerprint_sha256.encode(), fingerprint.encode()):
            raise unknown
        if credential.revoked:
            raise CredentialRevokedError(
                f"credential {serial} was revoked (or its access point deleted); use another credential"
            )
        now = self._clock()
        if now >= credential.not_after:
            raise CredentialExpiredError(
                f"credential {serial} expired on {datetime.fromtimestamp(credential.not_after, timezone.utc):%Y-%m-%d %H:%M} UTC; "
                "issue a new one"
            )
        if now < credential.not_before:
            raise UnauthenticatedError(f"credential {serial} is not valid yet; check the clocks")
        access_point = self._store.get_access_point(credential.access_point_id)
        if access_point is None:
            raise unknown
        return credential, access_point

    async def authenticate(self, serial: str, fingerprint_sha256: str) -> tuple[Credential, AccessPoint]:
        """The credential with this serial and its access point, if the presented certificate's
        fingerprint is the one issued and the credential is unrevoked and unexpired."""
        return await self._db(self._authenticate_blocking, serial.lower(), fingerprint_sha256.lower())

    # -- first start ------------------------------------------------------------------------

    async def bootstrap_admin(self, directory: str | Path) -> Path | None:
        """At first start, create the operator's `bootstrap-admin` access point (every role, an
        operator, every key, any network) and write a credential for it to `directory`
        (bootstrap-admin.crt, bootstrap-admin.key (0600), ca.crt). Returns `directory`, or None
        when the access point already has a credential (nothing is written then)."""
        access_point = await self._db(self._store.find_access_point, self.operator_tenant, BOOTSTRAP_NAME)
        if access_point is not None and await self._db(self._store.list_credentials, access_point.access_point_id):
            return None
        if self._ca is None:
            raise FailedPreconditionError("this KMS has no CA configured (ca.cert, ca.key)")
        if access_point is None:
            # The key ceremony: the one access point no other creates, so no policy check applies.
            access_point = self._new_access_point(
                self.operator_tenant, BOOTSTRAP_NAME, sorted(ALL_ROLES), ["*"], (), (), operator=True
            )
            await self._db(self._store.add_access_point, access_point)
        key_pem, csr_pem = pki.make_key_and_csr(common_name=f"ap:{access_point.access_point_id}")
        _, cert_pem, ca_pem = await self._issue(access_point, csr_pem, BOOTSTRAP_VALIDITY_DAYS)
        await self._db(pki.write_credential, directory, BOOTSTRAP_NAME, cert_pem, key_pem, ca_pem)
        log.info("wrote the bootstrap administrator credential to %s", directory)
        return Path(directory)
