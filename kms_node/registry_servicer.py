"""`keyrelay.v1.KeyRegistryService` and `keyrelay.v1.AccessRegistryService` on the shared node:
protobuf in, `KeyRegistry` / `AdminService` call, protobuf out. Internal services: the node
serves them on its internal port to the gateway (and, for credential checks and instance owners,
to dedicated nodes).
"""

from __future__ import annotations

from foundation.proto_time import timestamp
from keyrelay.v1 import kms_pb2, registry_pb2, registry_pb2_grpc
from kms_node.admin import AdminService
from kms_node.admin_servicer import Attachable, access_point_pb, credential_pb, instance_pb
from kms_node.registry import KeyRegistry
from kms_node.store.base import KeyRecord

_STATE_PREFIX = "KEY_STATE_"


def record_pb(record: KeyRecord) -> registry_pb2.KeyRecord:
    """The protobuf form of a registry record."""
    return registry_pb2.KeyRecord(
        key_id=record.key_id,
        tenant_id=record.tenant_id,
        instance_id=record.instance_id,
        state=kms_pb2.KeyState.Value(_STATE_PREFIX + record.state),
        aliases=list(record.aliases),
        revision=record.revision,
        update_time=timestamp(record.update_time),
        create_time=timestamp(record.create_time),
    )


def _state_name(state: int) -> str:
    try:
        return kms_pb2.KeyState.Name(state).removeprefix(_STATE_PREFIX)
    except ValueError:
        return str(state)


class KeyRegistryServicer(Attachable[KeyRegistry], registry_pb2_grpc.KeyRegistryServiceServicer):
    """Adapts gRPC calls to the node's `KeyRegistry`."""

    async def ResolveKey(self, request, context):
        record = await self.service.resolve(request.tenant_id, request.key_ref)
        return registry_pb2.ResolveKeyResponse(record=record_pb(record))

    async def ReserveKey(self, request, context):
        record = await self.service.reserve(request.tenant_id, request.instance_id, request.alias, request.request_id)
        return registry_pb2.ReserveKeyResponse(record=record_pb(record))

    async def CommitKey(self, request, context):
        record = await self.service.commit(request.key_id)
        return registry_pb2.CommitKeyResponse(record=record_pb(record))

    async def AbortKey(self, request, context):
        await self.service.abort(request.key_id)
        return registry_pb2.AbortKeyResponse()

    async def UpdateKeyRecord(self, request, context):
        record = await self.service.update_record(
            request.key_id, _state_name(request.state), list(request.aliases), request.expected_revision
        )
        return registry_pb2.UpdateKeyRecordResponse(record=record_pb(record))


class AccessRegistryServicer(Attachable[AdminService], registry_pb2_grpc.AccessRegistryServiceServicer):
    """Adapts the entry points' lookups to `AdminService.authenticate` and `resolve_instance`."""

    async def ResolveInstance(self, request, context):
        instance = await self.service.resolve_instance(request.instance_id)
        return registry_pb2.ResolveInstanceResponse(instance=instance_pb(instance))

    async def AuthenticateCredential(self, request, context):
        credential, access_point = await self.service.authenticate(request.serial, request.fingerprint_sha256)
        return registry_pb2.AuthenticateCredentialResponse(
            credential=credential_pb(credential), access_point=access_point_pb(access_point)
        )
