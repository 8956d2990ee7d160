"""`keyrelay.v1.AdminService` on the shared node: protobuf in, `AdminService` call, protobuf out.

The node serves it on its internal port to the gateway only. The gateway names the calling access
point in the metadata `keyrelay-access-point`; the service loads it from its own store and
authorizes the call against it. A call without one is refused.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import grpc

from foundation.access_policy import ADMIN, ALL_ROLES, ROLES, Principal, role_enum_name, sorted_roles
from foundation.errors import InvalidArgumentError, NodeNotReadyError, PermissionDeniedError
from foundation.proto_time import timestamp
from foundation.wire import ACCESS_POINT_METADATA_KEY
from keyrelay.v1 import admin_pb2, admin_pb2_grpc
from kms_node.admin import AdminService
from kms_node.store.admin_base import AccessPoint, Credential, Instance

ROLE_TO_PB = {role: admin_pb2.AccessPointRole.Value(role_enum_name(role)) for role in (*ROLES, ADMIN)}
ROLE_FROM_PB = {value: role for role, value in ROLE_TO_PB.items()}

S = TypeVar("S")


def instance_pb(instance: Instance) -> admin_pb2.Instance:
    """The protobuf form of an instance."""
    return admin_pb2.Instance(
        instance_id=instance.instance_id,
        tenant_id=instance.tenant_id,
        node_endpoints=list(instance.node_endpoints),
        private_endpoint=instance.private_endpoint,
        policy=admin_pb2.InstancePolicy(
            management_zones=list(instance.management_zones), allow_public_crypto=instance.allow_public_crypto
        ),
        create_time=timestamp(instance.create_time),
    )


def _single_role(roles: frozenset[str]) -> int:
    if roles == ALL_ROLES:
        return ROLE_TO_PB[ADMIN]
    if len(roles) == 1:
        return ROLE_TO_PB[next(iter(roles))]
    return admin_pb2.ACCESS_POINT_ROLE_UNSPECIFIED


def access_point_pb(access_point: AccessPoint) -> admin_pb2.AccessPoint:
    """The protobuf form of an access point."""
    return admin_pb2.AccessPoint(
        access_point_id=access_point.access_point_id,
        tenant_id=access_point.tenant_id,
        name=access_point.name,
        role=_single_role(access_point.roles),
        roles=[ROLE_TO_PB[role] for role in sorted_roles(access_point.roles)],
        operator=access_point.operator,
        key_patterns=list(access_point.key_patterns),
        allowed_zones=list(access_point.allowed_zones),
        allowed_cidrs=list(access_point.allowed_cidrs),
        create_time=timestamp(access_point.create_time),
    )


def requested_roles(request: admin_pb2.CreateAccessPointRequest) -> list[str]:
    """The role names a CreateAccessPoint request asks for (`roles`, else `role`)."""
    values = list(request.roles) or ([request.role] if request.role else [])
    names = []
    for value in values:
        if value not in ROLE_FROM_PB:
            raise InvalidArgumentError(f"role {value} is not a role: use one of {', '.join(ROLES)} or {ADMIN}")
        names.append(ROLE_FROM_PB[value])
    return names


def credential_pb(credential: Credential) -> admin_pb2.Credential:
    """The protobuf form of a credential record."""
    message = admin_pb2.Credential(
        serial=credential.serial,
        access_point_id=credential.access_point_id,
        not_before=timestamp(credential.not_before),
        not_after=timestamp(credential.not_after),
        revoked=credential.revoked,
        fingerprint_sha256=credential.fingerprint_sha256,
    )
    if credential.revoke_time is not None:
        message.revoke_time.CopyFrom(timestamp(credential.revoke_time))
    return message


def calling_access_point(context: grpc.aio.ServicerContext) -> str:
    """The calling access point's id from the gateway's metadata; PermissionDeniedError without one."""
    for key, value in context.invocation_metadata() or ():
        if key == ACCESS_POINT_METADATA_KEY and value:
            return value
    raise PermissionDeniedError(
        "administration reaches the shared KMS only through the gateway, which names the calling access point "
        f"({ACCESS_POINT_METADATA_KEY}); send the request to the gateway"
    )


class Attachable(Generic[S]):
    """A servicer whose domain service is attached once the node is ready; until then every call
    fails with UNAVAILABLE NODE_NOT_READY."""

    def __init__(self, service: S | None = None) -> None:
        self._service = service

    def attach(self, service: S) -> None:
        """Start answering calls with `service`."""
        self._service = service

    @property
    def service(self) -> S:
        if self._service is None:
            raise NodeNotReadyError("the node is starting and cannot answer yet; retry shortly")
        return self._service


class AdminServicer(Attachable[AdminService], admin_pb2_grpc.AdminServiceServicer):
    """Adapts gRPC calls to the node's `AdminService`."""

    async def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        return await self.service.principal(calling_access_point(context))

    async def RegisterInstance(self, request, context):
        instance = await self.service.register_instance(
            await self._principal(context),
            request.instance_id,
            request.tenant_id,
            list(request.node_endpoints),
            request.private_endpoint,
            management_zones=list(request.policy.management_zones),
            allow_public_crypto=request.policy.allow_public_crypto,
        )
        return admin_pb2.RegisterInstanceResponse(instance=instance_pb(instance))

    async def DescribeInstance(self, request, context):
        instance = await self.service.describe_instance(await self._principal(context), request.instance_id)
        return admin_pb2.DescribeInstanceResponse(instance=instance_pb(instance))

    async def ListInstances(self, request, context):
        instances, token = await self.service.list_instances(
            await self._principal(context), request.page_size, request.page_token
        )
        return admin_pb2.ListInstancesResponse(instances=[instance_pb(i) for i in instances], next_page_token=token)

    async def CreateAccessPoint(self, request, context):
        access_point = await self.service.create_access_point(
            await self._principal(context),
            request.tenant_id,
            request.name,
            requested_roles(request),
            list(request.key_patterns),
            list(request.allowed_zones),
            list(request.allowed_cidrs),
            operator=request.operator,
        )
        return admin_pb2.CreateAccessPointResponse(access_point=access_point_pb(access_point))

    async def DescribeAccessPoint(self, request, context):
        access_point = await self.service.describe_access_point(await self._principal(context), request.access_point_id)
        return admin_pb2.DescribeAccessPointResponse(access_point=access_point_pb(access_point))

    async def ListAccessPoints(self, request, context):
        points, token = await self.service.list_access_points(
            await self._principal(context), request.tenant_id, request.page_size, request.page_token
        )
        return admin_pb2.ListAccessPointsResponse(
            access_points=[access_point_pb(p) for p in points], next_page_token=token
        )

    async def DeleteAccessPoint(self, request, context):
        await self.service.delete_access_point(await self._principal(context), request.access_point_id)
        return admin_pb2.DeleteAccessPointResponse()

    async def IssueCredential(self, request, context):
        credential, cert_pem, ca_pem = await self.service.issue_credential(
            await self._principal(context),
            request.access_point_id,
            request.certificate_signing_request_pem.encode(),
            request.validity_days,
        )
        return admin_pb2.IssueCredentialResponse(
            credential=credential_pb(credential), certificate_pem=cert_pem.decode(), ca_certificate_pem=ca_pem.decode()
        )

    async def ListCredentials(self, request, context):
        credentials = await self.service.list_credentials(await self._principal(context), request.access_point_id)
        return admin_pb2.ListCredentialsResponse(credentials=[credential_pb(c) for c in credentials])

    async def RevokeCredential(self, request, context):
        credential = await self.service.revoke_credential(await self._principal(context), request.serial)
        return admin_pb2.RevokeCredentialResponse(credential=credential_pb(credential))
