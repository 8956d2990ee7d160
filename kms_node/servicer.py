"""`keyrelay.v1.KeyManagementService` on a node: protobuf in, `KeyService` call, protobuf out.

The only module of the node that imports the generated `*_pb2` code. The calling tenant comes
from the `keyrelay-tenant` metadata (set by the gateway from the caller's credential, and trusted
because the internal port admits only the gateway), or, at a dedicated node's private endpoint,
from the access point the client authenticated as.
"""

from __future__ import annotations

import contextvars

import grpc

from foundation.access_policy import TENANT_ID
from foundation.batches import item_error
from foundation.errors import InvalidArgumentError, NodeNotReadyError, quote
from foundation.proto_time import timestamp
from foundation.wire import TENANT_METADATA_KEY
from keyrelay.v1 import kms_pb2, kms_pb2_grpc
from kms_node.service import Caller, CryptoResult, KeyService, SealedRecord
from kms_node.store.base import KeyRecord

#: Set by the private endpoint to the tenant of the authenticated access point; it wins over metadata.
caller_tenant_var: contextvars.ContextVar[str] = contextvars.ContextVar("caller_tenant", default="")
DEFAULT_TENANT = "default"
_STATE = {
    "CREATING": kms_pb2.KEY_STATE_CREATING,
    "ENABLED": kms_pb2.KEY_STATE_ENABLED,
    "DISABLED": kms_pb2.KEY_STATE_DISABLED,
    "PENDING_DELETION": kms_pb2.KEY_STATE_PENDING_DELETION,
}


def key_metadata(record: KeyRecord) -> kms_pb2.KeyMetadata:
    """The protobuf form of a key record (never its wrapped blobs)."""
    meta = kms_pb2.KeyMetadata(
        key_id=record.key_id,
        tenant_id=record.tenant_id,
        description=record.description,
        tags=record.tags,
        state=_STATE[record.state],
        instance_id=record.instance_id,
        key_spec=kms_pb2.KEY_SPEC_AES_256,
        primary_version=record.primary_version,
        min_decryption_version=record.min_decryption_version,
        create_time=timestamp(record.create_time),
        aliases=list(record.aliases),
        versions=[kms_pb2.KeyVersion(version=v.version, create_time=timestamp(v.create_time)) for v in record.versions],
    )
    if record.deletion_time is not None:
        meta.deletion_time.CopyFrom(timestamp(record.deletion_time))
    return meta


class KeyManagementServicer(kms_pb2_grpc.KeyManagementServiceServicer):
    """Adapts gRPC calls to the node's `KeyService`."""

    def __init__(self) -> None:
        self._service: KeyService | None = None

    def attach(self, service: KeyService) -> None:
        """Start answering calls with `service` (until then: UNAVAILABLE, node not ready)."""
        self._service = service

    @property
    def service(self) -> KeyService:
        if self._service is None:
            raise NodeNotReadyError("the node is starting: it has not logged in to its HSM yet; retry shortly")
        return self._service

    @staticmethod
    def _caller(context: grpc.aio.ServicerContext) -> Caller:
        authenticated = caller_tenant_var.get()
        if authenticated:
            return Caller(authenticated)
        for key, value in context.invocation_metadata() or ():
            if key == TENANT_METADATA_KEY:
                if not TENANT_ID.fullmatch(value):
                    raise InvalidArgumentError(f"tenant {quote(value)} must be 1-64 of a-z 0-9 . _ - (starting alnum)")
                return Caller(value)
        return Caller(DEFAULT_TENANT)

    # -- lifecycle --------------------------------------------------------------------------

    async def CreateKey(self, request, context):
        record = await self.service.create_key(
            self._caller(context),
            description=request.description,
            tags=dict(request.tags),
            alias=request.alias,
            instance_id=request.instance_id,
            key_id=request.key_id,
        )
        return kms_pb2.CreateKeyResponse(key_metadata=key_metadata(record))

    async def DescribeKey(self, request, context):
        record = await self.service.describe_key(self._caller(context), request.key_id)
        return kms_pb2.DescribeKeyResponse(key_metadata=key_metadata(record))

    async def ListKeys(self, request, context):
        records, token = await self.service.list_keys(self._caller(context), request.page_size, request.page_token)
        return kms_pb2.ListKeysResponse(keys=[key_metadata(r) for r in records], next_page_token=token)

    async def EnableKey(self, request, context):
        record = await self.service.enable_key(self._caller(context), request.key_id)
        return kms_pb2.EnableKeyResponse(key_metadata=key_metadata(record))

    async def DisableKey(self, request, context):
        record = await self.service.disable_key(self._caller(context), request.key_id)
        return kms_pb2.DisableKeyResponse(key_metadata=key_metadata(record))

    async def ScheduleKeyDeletion(self, request, context):
        record = await self.service.schedule_key_deletion(
            self._caller(context), request.key_id, request.pending_window_days
        )
        return kms_pb2.ScheduleKeyDeletionResponse(key_metadata=key_metadata(record))

    async def CancelKeyDeletion(self, request, context):
        record = await self.service.cancel_key_deletion(self._caller(context), request.key_id)
        return kms_pb2.CancelKeyDeletionResponse(key_metadata=key_metadata(record))

    async def RotateKey(self, request, context):
        record = await self.service.rotate_key(self._caller(context), request.key_id)
        return kms_pb2.RotateKeyResponse(key_metadata=key_metadata(record), new_version=record.primary_version)

    async def UpdateKey(self, request, context):
        record = await self.service.update_key(
            self._caller(context),
            request.key_id,
            description=request.description if request.HasField("description") else None,
            min_decryption_version=(
                request.min_decryption_version if request.HasField("min_decryption_version") else None
            ),
        )
        return kms_pb2.UpdateKeyResponse(key_metadata=key_metadata(record))

    async def CreateAlias(self, request, context):
        record = await self.service.create_alias(self._caller(context), request.alias, request.key_id)
        return kms_pb2.CreateAliasResponse(key_metadata=key_metadata(record))

    async def DeleteAlias(self, request, context):
        key_id = await self.service.delete_alias(self._caller(context), request.alias)
        return kms_pb2.DeleteAliasResponse(key_id=key_id)

    # -- cryptography -----------------------------------------------------------------------

    async def Encrypt(self, request, context):
        result = await self.service.encrypt(
            self._caller(context), request.key_id, request.plaintext, dict(request.encryption_context)
        )
        return kms_pb2.EncryptResponse(
            ciphertext_blob=result.ciphertext, key_id=result.key_id, key_version=result.key_version
        )

    async def Decrypt(self, request, context):
        result = await self.service.decrypt(
            self._caller(context), request.ciphertext_blob, dict(request.encryption_context), request.key_id
        )
        return kms_pb2.DecryptResponse(plaintext=result.plaintext, key_id=result.key_id, key_version=result.key_version)

    async def ReEncrypt(self, request, context):
        source, destination = await self.service.re_encrypt(
            self._caller(context),
            request.ciphertext_blob,
            dict(request.source_encryption_context),
            request.destination_key_id,
            dict(request.destination_encryption_context),
        )
        return kms_pb2.ReEncryptResponse(
            ciphertext_blob=destination.ciphertext,
            source_key_id=source.key_id,
            source_key_version=source.key_version,
            key_id=destination.key_id,
            key_version=destination.key_version,
        )

    async def GenerateDataKey(self, request, context):
        result = await self.service.generate_data_key(
            self._caller(context), request.key_id, request.number_of_bytes, dict(request.encryption_context)
        )
        return kms_pb2.GenerateDataKeyResponse(
            plaintext=result.plaintext,
            ciphertext_blob=result.ciphertext,
            key_id=result.key_id,
            key_version=result.key_version,
        )

    async def GenerateDataKeyWithoutPlaintext(self, request, context):
        result = await self.service.generate_data_key(
            self._caller(context),
            request.key_id,
            request.number_of_bytes,
            dict(request.encryption_context),
            with_plaintext=False,
        )
        return kms_pb2.GenerateDataKeyWithoutPlaintextResponse(
            ciphertext_blob=result.ciphertext, key_id=result.key_id, key_version=result.key_version
        )

    async def BatchDecrypt(self, request, context):
        outcomes = await self.service.batch_decrypt(
            self._caller(context), [(item.ciphertext_blob, dict(item.encryption_context)) for item in request.items]
        )
        results = []
        for outcome in outcomes:
            if isinstance(outcome, CryptoResult):
                results.append(
                    kms_pb2.BatchDecryptResult(
                        plaintext=outcome.plaintext, key_id=outcome.key_id, key_version=outcome.key_version
                    )
                )
            else:
                results.append(kms_pb2.BatchDecryptResult(error=item_error(outcome)))
        return kms_pb2.BatchDecryptResponse(results=results)

    async def BatchGenerateDataKey(self, request, context):
        outcomes = await self.service.batch_generate_data_key(
            self._caller(context),
            [(item.key_id, item.number_of_bytes, dict(item.encryption_context)) for item in request.items],
        )
        results = []
        for outcome in outcomes:
            if isinstance(outcome, CryptoResult):
                results.append(
                    kms_pb2.BatchGenerateDataKeyResult(
                        plaintext=outcome.plaintext,
                        ciphertext_blob=outcome.ciphertext,
                        key_id=outcome.key_id,
                        key_version=outcome.key_version,
                    )
                )
            else:
                results.append(kms_pb2.BatchGenerateDataKeyResult(error=item_error(outcome)))
        return kms_pb2.BatchGenerateDataKeyResponse(results=results)

    async def GenerateRandom(self, request, context):
        return kms_pb2.GenerateRandomResponse(random=await self.service.generate_random(request.number_of_bytes))

    async def SealPublicKey(self, request, context):
        sealed, result = await self.service.seal_public_key(
            self._caller(context), request.key_id, request.user_id, request.public_key_bundle, request.bundle_version
        )
        return kms_pb2.SealPublicKeyResponse(
            sealed=kms_pb2.SealedPublicKey(
                user_id=sealed.user_id,
                bundle_version=sealed.bundle_version,
                sealed_bundle=sealed.sealed_bundle,
                wrapped_dek=sealed.wrapped_dek,
            ),
            key_id=result.key_id,
            key_version=result.key_version,
        )

    async def OpenPublicKey(self, request, context):
        sealed = request.sealed
        result = await self.service.open_public_key(
            self._caller(context),
            SealedRecord(sealed.user_id, sealed.bundle_version, sealed.sealed_bundle, sealed.wrapped_dek),
        )
        return kms_pb2.OpenPublicKeyResponse(
            public_key_bundle=result.plaintext, key_id=result.key_id, key_version=result.key_version
        )
