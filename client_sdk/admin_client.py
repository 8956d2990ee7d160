"""`AdminClient`: every `AdminService` call (gateway administration) as a typed method.

    from client_sdk import AdminClient

    with AdminClient() as admin:                       # the default profile's gateway and credential
        ap = admin.create_access_point("acme", "orders-app", ["crypto-user"], key_patterns=["alias/orders-*"])
        issued = admin.issue_credential(ap.access_point_id, out_dir="orders-app")
        # orders-app/ now holds the certificate, its key (0600), the CA and a profile.toml

The constructor is `KmsClient`'s (target, tenant, timeout, channel, credentials, profile). Every
method takes `timeout` (seconds; default the client's) and raises the keyrelay exception the
server raised (`client_sdk.AccessPointNotFoundError`, ...), never a bare `grpc.RpcError`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator, Sequence

from client_sdk._channel import ServiceClient, iterate_pages, optional_datetime, to_datetime
from client_sdk.credentials import write_profile
from client_sdk.types import AccessPoint, AccessPointPage, Credential, Instance, InstancePage, IssuedCredential
from foundation import access_policy
from foundation.access_policy import ADMIN, role_enum_name
from foundation.errors import InvalidArgumentError
from foundation.pki import make_key_and_csr, write_credential
from keyrelay.v1 import admin_pb2, admin_pb2_grpc

#: Role names as the SDK spells them ("key-admin", "access-admin", "crypto-user", "messaging-user",
#: and "admin" for all four) -> enum value.
ROLES = {role: admin_pb2.AccessPointRole.Value(role_enum_name(role)) for role in (*access_policy.ROLES, ADMIN)}
_ROLE_NAMES = {value: name for name, value in ROLES.items()}


def _instance(m: admin_pb2.Instance) -> Instance:
    return Instance(
        instance_id=m.instance_id,
        tenant_id=m.tenant_id,
        node_endpoints=tuple(m.node_endpoints),
        private_endpoint=m.private_endpoint,
        management_zones=tuple(m.policy.management_zones),
        allow_public_crypto=m.policy.allow_public_crypto,
        create_time=to_datetime(m.create_time),
    )


def _access_point(m: admin_pb2.AccessPoint) -> AccessPoint:
    return AccessPoint(
        access_point_id=m.access_point_id,
        tenant_id=m.tenant_id,
        name=m.name,
        roles=tuple(_ROLE_NAMES.get(r, "unspecified") for r in m.roles),
        key_patterns=tuple(m.key_patterns),
        allowed_zones=tuple(m.allowed_zones),
        allowed_cidrs=tuple(m.allowed_cidrs),
        create_time=to_datetime(m.create_time),
        operator=m.operator,
    )


def _credential(m: admin_pb2.Credential) -> Credential:
    return Credential(
        serial=m.serial,
        access_point_id=m.access_point_id,
        not_before=to_datetime(m.not_before),
        not_after=to_datetime(m.not_after),
        revoked=m.revoked,
        revoke_time=optional_datetime(m, "revoke_time"),
        fingerprint_sha256=m.fingerprint_sha256,
    )


def _roles(roles: str | Sequence[str]) -> list[int]:
    names = [roles] if isinstance(roles, str) else list(roles)
    if not names:
        raise InvalidArgumentError(f"give at least one role of {', '.join(ROLES)}")
    try:
        return [ROLES[name] for name in names]
    except KeyError as exc:
        raise InvalidArgumentError(f"role must be one of {', '.join(ROLES)}, not {exc.args[0]!r}") from None


class AdminClient(ServiceClient):
    """A synchronous client of `keyrelay.v1.AdminService` (the gateway): instances need a credential
    with role `key-admin`, access points and credentials one with `access-admin`.

    Args: as `KmsClient`: `target`, `tenant`, `timeout`, `channel`, `credentials`, `profile`;
    with none of target, channel and profile it reads the default profile.
    """

    _stub_class = admin_pb2_grpc.AdminServiceStub

    # -- instances --------------------------------------------------------------------------

    def register_instance(
        self,
        instance_id: str,
        tenant_id: str,
        node_endpoints: Sequence[str],
        private_endpoint: str,
        management_zones: Sequence[str] = (),
        allow_public_crypto: bool = False,
        *,
        timeout: float | None = None,
    ) -> Instance:
        """Register a tenant's dedicated KMS instance: its nodes' internal host:port, its private
        endpoint, the gateway zones management requests may come from, and whether the public
        gateway may serve crypto on its keys."""
        request = admin_pb2.RegisterInstanceRequest(
            instance_id=instance_id,
            tenant_id=tenant_id,
            node_endpoints=list(node_endpoints),
            private_endpoint=private_endpoint,
            policy=admin_pb2.InstancePolicy(
                management_zones=list(management_zones), allow_public_crypto=allow_public_crypto
            ),
        )
        return _instance(self._call("RegisterInstance", request, timeout).instance)

    def describe_instance(self, instance_id: str, *, timeout: float | None = None) -> Instance:
        """One registered instance."""
        request = admin_pb2.DescribeInstanceRequest(instance_id=instance_id)
        return _instance(self._call("DescribeInstance", request, timeout).instance)

    def list_instances(self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None) -> InstancePage:
        """One page of the instances of the tenants this credential administers."""
        request = admin_pb2.ListInstancesRequest(page_size=page_size, page_token=page_token)
        response = self._call("ListInstances", request, timeout)
        return InstancePage([_instance(m) for m in response.instances], response.next_page_token)

    def iter_instances(self, *, page_size: int = 0, timeout: float | None = None) -> Iterator[Instance]:
        """Every instance, page by page."""
        return iterate_pages(self.list_instances, "instances", page_size=page_size, timeout=timeout)

    # -- access points ----------------------------------------------------------------------

    def create_access_point(
        self,
        tenant_id: str,
        name: str,
        roles: str | Sequence[str],
        key_patterns: Sequence[str] = (),
        allowed_zones: Sequence[str] = (),
        allowed_cidrs: Sequence[str] = (),
        *,
        operator: bool = False,
        timeout: float | None = None,
    ) -> AccessPoint:
        """Create an access point with one or more roles (`key-admin`, `access-admin`,
        `crypto-user`, `messaging-user`; `admin` for all four), the keys it may use (ids or
        aliases, `*` a wildcard; none: no key) and the zones and CIDRs it may come from (none:
        any). The caller's own access point must cover it: every role, key pattern, zone and CIDR
        of the new one within its own (`operator` only from an operator)."""
        request = admin_pb2.CreateAccessPointRequest(
            tenant_id=tenant_id,
            name=name,
            roles=_roles(roles),
            key_patterns=list(key_patterns),
            allowed_zones=list(allowed_zones),
            allowed_cidrs=list(allowed_cidrs),
            operator=operator,
        )
        return _access_point(self._call("CreateAccessPoint", request, timeout).access_point)

    def describe_access_point(self, access_point_id: str, *, timeout: float | None = None) -> AccessPoint:
        """One access point."""
        request = admin_pb2.DescribeAccessPointRequest(access_point_id=access_point_id)
        return _access_point(self._call("DescribeAccessPoint", request, timeout).access_point)

    def list_access_points(
        self, tenant_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> AccessPointPage:
        """One page of a tenant's access points."""
        request = admin_pb2.ListAccessPointsRequest(tenant_id=tenant_id, page_size=page_size, page_token=page_token)
        response = self._call("ListAccessPoints", request, timeout)
        return AccessPointPage([_access_point(m) for m in response.access_points], response.next_page_token)

    def iter_access_points(
        self, tenant_id: str, *, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[AccessPoint]:
        """Every access point of a tenant, page by page."""
        return iterate_pages(
            self.list_access_points, "access_points", tenant_id=tenant_id, page_size=page_size, timeout=timeout
        )

    def delete_access_point(self, access_point_id: str, *, timeout: float | None = None) -> None:
        """Delete an access point; all its credentials are revoked at once."""
        self._call("DeleteAccessPoint", admin_pb2.DeleteAccessPointRequest(access_point_id=access_point_id), timeout)

    # -- credentials ------------------------------------------------------------------------

    def issue_credential(
        self,
        access_point_id: str,
        *,
        validity_days: int = 0,
        out_dir: str | os.PathLike | None = None,
        timeout: float | None = None,
    ) -> IssuedCredential:
        """Issue a client certificate to an access point (valid 1-365 days; 0 means 90).

        The key pair and CSR are made here; only the CSR is sent. With `out_dir`, writes
        ACCESS_POINT_ID.crt, ACCESS_POINT_ID.key (0600) and ca.crt there (replacing earlier
        files of the same names), and a profile.toml (0600) that points at this client's
        endpoint and carries over its profile's private endpoints; `files` says where.
        """
        if out_dir is not None:
            if not self.endpoint:
                raise InvalidArgumentError("cannot write a profile: this client was given a channel, not an endpoint")
            # Fail before the server issues anything if the folder cannot be made.
            Path(out_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        key_pem, csr_pem = make_key_and_csr()
        request = admin_pb2.IssueCredentialRequest(
            access_point_id=access_point_id,
            certificate_signing_request_pem=csr_pem.decode(),
            validity_days=validity_days,
        )
        response = self._call("IssueCredential", request, timeout)
        issued = IssuedCredential(
            credential=_credential(response.credential),
            certificate_pem=response.certificate_pem.encode(),
            ca_certificate_pem=response.ca_certificate_pem.encode(),
            private_key_pem=key_pem,
        )
        if out_dir is not None:
            files = write_credential(
                out_dir, access_point_id, issued.certificate_pem, issued.private_key_pem, issued.ca_certificate_pem
            )
            files["profile"] = write_profile(
                Path(out_dir) / "profile.toml",
                self.endpoint,
                files["ca"],
                files["cert"],
                files["key"],
                private_endpoints=self.profile.private_endpoints if self.profile else None,
            )
            issued = dataclasses.replace(issued, files=files)
        return issued

    def list_credentials(self, access_point_id: str, *, timeout: float | None = None) -> list[Credential]:
        """Every credential of an access point, revoked and expired ones included."""
        request = admin_pb2.ListCredentialsRequest(access_point_id=access_point_id)
        return [_credential(m) for m in self._call("ListCredentials", request, timeout).credentials]

    def revoke_credential(self, serial: str, *, timeout: float | None = None) -> Credential:
        """Revoke a credential by serial (hex); revoking it again keeps the first revoke time."""
        request = admin_pb2.RevokeCredentialRequest(serial=serial)
        return _credential(self._call("RevokeCredential", request, timeout).credential)
