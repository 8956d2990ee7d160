"""`keyrelay.v1.RelayService` and `keyrelay.v1.DirectoryService`: protobuf in, `RelayService` call,
protobuf out. The only module of the relay that imports the generated `*_pb2` code.

Every call but CreateAccount is authenticated by the device token in the `authorization: Bearer`
metadata; the account it belongs to is the caller.
"""

from __future__ import annotations

import grpc

from foundation.errors import InvalidArgumentError, UnauthenticatedError, quote
from foundation.proto_time import timestamp
from foundation.tls import peer_ip
from keyrelay.v1 import directory_pb2, directory_pb2_grpc, kms_pb2, relay_pb2, relay_pb2_grpc
from relay.service import RelayService
from relay.store.base import PublishedRecord, StoredMessage

AUTHORIZATION_METADATA_KEY = "authorization"
_BEARER = "bearer "


def device_token(context: grpc.aio.ServicerContext) -> str | None:
    """The bearer token of the call's `authorization` metadata, or None."""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_METADATA_KEY:
            if not isinstance(value, str) or not value.lower().startswith(_BEARER):
                raise UnauthenticatedError("the authorization metadata must read `Bearer <device token>`")
            return value[len(_BEARER):].strip()
    return None


def record_pb(record: PublishedRecord) -> directory_pb2.DirectoryRecord:
    """The protobuf form of a directory record."""
    return directory_pb2.DirectoryRecord(
        user_id=record.user_id,
        record_version=record.record_version,
        sealed=kms_pb2.SealedPublicKey(
            user_id=record.user_id,
            bundle_version=record.record_version,
            sealed_bundle=record.sealed_bundle,
            wrapped_dek=record.wrapped_dek,
        ),
        kms_key_id=record.kms_key_id,
        publish_time=timestamp(record.publish_time),
    )


def message_pb(message: StoredMessage) -> relay_pb2.RelayMessage:
    """The protobuf form of a stored message."""
    pb = relay_pb2.RelayMessage(
        message_id=message.message_id,
        sender_user_id=message.sender,
        recipient_user_id=message.recipient,
        envelope=message.envelope,
        client_message_id=message.client_message_id,
        store_time=timestamp(message.store_time),
    )
    if message.expire_time is not None:
        pb.expire_time.CopyFrom(timestamp(message.expire_time))
    return pb


class RelayServicer(relay_pb2_grpc.RelayServiceServicer):
    """Accounts and mailboxes."""

    def __init__(self, service: RelayService) -> None:
        self._service = service

    async def CreateAccount(self, request, context):
        address = peer_ip(context)
        issued = await self._service.create_account(
            request.user_id, str(address) if address is not None else context.peer()
        )
        response = relay_pb2.CreateAccountResponse(user_id=issued.user_id, device_token=issued.device_token)
        if issued.expire_time is not None:
            response.device_token_expire_time.CopyFrom(timestamp(issued.expire_time))
        return response

    async def RotateDeviceToken(self, request, context):
        issued = await self._service.rotate_token(device_token(context), revoke_previous=request.revoke_previous)
        response = relay_pb2.RotateDeviceTokenResponse(
            device_token=issued.device_token, previous_token_expire_time=timestamp(issued.previous_expire_time)
        )
        if issued.expire_time is not None:
            response.device_token_expire_time.CopyFrom(timestamp(issued.expire_time))
        return response

    async def RevokeDeviceToken(self, request, context):
        count = await self._service.revoke_tokens(device_token(context), all_tokens=request.all)
        return relay_pb2.RevokeDeviceTokenResponse(revoked_count=count)

    async def Send(self, request, context):
        sender = await self._service.authenticate(device_token(context))
        receipt = await self._service.send(
            sender, request.recipient_user_id, request.envelope, request.client_message_id
        )
        return relay_pb2.SendResponse(
            message_id=receipt.message_id, store_time=timestamp(receipt.store_time), duplicate=receipt.duplicate
        )

    async def Subscribe(self, request, context):
        user_id = await self._service.authenticate(device_token(context))
        async for message in self._service.subscribe(user_id):
            yield relay_pb2.SubscribeResponse(message=message_pb(message))

    async def Ack(self, request, context):
        user_id = await self._service.authenticate(device_token(context))
        deleted = await self._service.ack(user_id, list(request.message_ids))
        return relay_pb2.AckResponse(deleted_count=deleted)


class DirectoryServicer(directory_pb2_grpc.DirectoryServiceServicer):
    """The directory of sealed public-key records."""

    def __init__(self, service: RelayService) -> None:
        self._service = service

    async def PublishRecord(self, request, context):
        caller = await self._service.authenticate(device_token(context))
        if not request.HasField("record") or not request.record.HasField("sealed"):
            raise InvalidArgumentError("record and record.sealed are required: publish what SealPublicKey returned")
        record, sealed = request.record, request.record.sealed
        if sealed.user_id != record.user_id or sealed.bundle_version != record.record_version:
            raise InvalidArgumentError(
                f"the sealed record is for user {quote(sealed.user_id)} version {sealed.bundle_version}, but the record "
                f"names user {quote(record.user_id)} version {record.record_version}: they must be equal"
            )
        stored = await self._service.publish_record(
            caller,
            PublishedRecord(
                user_id=record.user_id,
                record_version=record.record_version,
                sealed_bundle=sealed.sealed_bundle,
                wrapped_dek=sealed.wrapped_dek,
                kms_key_id=record.kms_key_id,
                publish_time=0.0,
            ),
        )
        return directory_pb2.PublishRecordResponse(record=record_pb(stored))

    async def GetRecord(self, request, context):
        await self._service.authenticate(device_token(context))
        record = await self._service.get_record(request.user_id, request.record_version)
        return directory_pb2.GetRecordResponse(record=record_pb(record))
