"""The gateway's KeyManagementService and AdminService: authenticate, apply policy, route, audit.

Every call goes through `Gateway.serve`: the client certificate is turned into its access point
(`CredentialVerifier`), the network zone, role and tenant rate limit are checked, the call's
handler routes it, and one audit record is written whatever the outcome.

Routing (claims 1, 4 and 5): a request naming a key is resolved through the shared KMS's
registry (cached) and sent to the shared pool or to the dedicated instance the record names; a
request carrying only a ciphertext is routed by the key id inside the blob. Policy (claim 3):
management of a dedicated key is forwarded only from the zones its instance allows, and
cryptography on it is refused here, naming the instance's private endpoint, unless the instance
allows public crypto.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import grpc

from foundation import access_policy as policy
from foundation.audit import AuditLog
from foundation.blob_formats import peek_key_id
from foundation.credential_check import CredentialVerifier
from foundation.errors import (
    AliasExistsError,
    BatchTooLargeError,
    InstanceNotFoundError,
    InvalidArgumentError,
    KeyExistsError,
    KeyrelayError,
    KeyStateConflictError,
    NetworkNotAllowedError,
    PrivateEndpointRequiredError,
    ResourceExhaustedError,
    UnavailableError,
)
from foundation.logsetup import request_id_var
from foundation.metrics import route_var
from foundation.ratelimit import TokenBucketLimiter
from foundation.tls import peer_certificate, peer_ip
from foundation.upstream import ReplicaSet
from keyrelay.v1 import admin_pb2, admin_pb2_grpc, errors_pb2, kms_pb2, kms_pb2_grpc, registry_pb2
from kms_gateway.routing import ADMIN_SCOPE_METADATA_KEY, TENANT_METADATA_KEY, KeyDirectory

log = logging.getLogger(__name__)

_KMS = "/keyrelay.v1.KeyManagementService/"
_ADMIN = "/keyrelay.v1.AdminService/"
_REGISTRY = "/keyrelay.v1.KeyRegistryService/"
MAX_BATCH_ITEMS = 1000
_STATE_NAMES = {value: name.removeprefix("KEY_STATE_") for name, value in kms_pb2.KeyState.items()}
# Calls safe to repeat on another replica when one fails mid-call: reads, cryptography, setters.
_IDEMPOTENT = frozenset(
    {
        "DescribeKey", "ListKeys", "EnableKey", "DisableKey", "CancelKeyDeletion", "UpdateKey",
        *policy.CRYPTO_METHODS,
        "DescribeInstance", "ListInstances", "DescribeAccessPoint", "ListAccessPoints", "ListCredentials",
        "RevokeCredential",
    }
)


@dataclass
class Call:
    """One request as the gateway sees it: who, from where, and where it went."""

    method: str
    zone: str
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    request_id: str
    started: float
    deadline: float | None
    principal: policy.Principal | None = None
    key_ids: list[str] = field(default_factory=list)
    key_version: int = 0
    routes: list[str] = field(default_factory=list)

    @property
    def tenant(self) -> str:
        return self.principal.tenant_id if self.principal else ""

    def metadata(self, tenant: str | None = None) -> list[tuple[str, str]]:
        """Metadata for an upstream call made on behalf of this request."""
        metadata = [("x-request-id", self.request_id)]
        tenant = self.tenant if tenant is None else tenant
        if tenant:
            metadata.append((TENANT_METADATA_KEY, tenant))
        return metadata

    def remaining(self, default: float) -> float:
        """Seconds left of the caller's deadline (or `default` when it set none)."""
        if self.deadline is None:
            return default
        return max(0.0, self.deadline - time.monotonic())


class Gateway:
    """Everything the gateway's listeners share: upstreams, caches, policy, limits and audit."""

    def __init__(
        self,
        *,
        shared: ReplicaSet,
        directory: KeyDirectory,
        verifier: CredentialVerifier,
        limiter: TokenBucketLimiter,
        audit: AuditLog,
        make_replica_set: Callable[[str, tuple[str, ...]], ReplicaSet],
        zone_cidrs: dict[str, tuple[str, ...]],
        operator_tenant: str,
        default_timeout: float,
    ) -> None:
        self.shared = shared
        self.directory = directory
        self.verifier = verifier
        self.limiter = limiter
        self.audit = audit
        self._make_replica_set = make_replica_set
        self._instances: dict[str, ReplicaSet] = {}
        self._zone_cidrs = zone_cidrs
        self.operator_tenant = operator_tenant
        self.default_timeout = default_timeout

    async def close(self) -> None:
        """Close the connections to every dedicated instance (the shared set is closed by its owner)."""
        await asyncio.gather(*(s.close() for s in self._instances.values()), return_exceptions=True)

    def instance_replicas(self, instance_id: str, endpoints: tuple[str, ...]) -> ReplicaSet:
        """The replica set of a dedicated instance, made on first use and renewed if its endpoints change."""
        current = self._instances.get(instance_id)
        if current is None or current.endpoints != endpoints:
            if current is not None:
                asyncio.create_task(current.close())
            current = self._make_replica_set(f"instance:{instance_id}", endpoints)
            current.start()
            self._instances[instance_id] = current
        return current

    # -- the per-call envelope -------------------------------------------------------------------

    async def serve(
        self,
        zone: str,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handler: Callable[[Call, Any], Awaitable[Any]],
        *,
        admin: bool = False,
    ) -> Any:
        """Authenticate and check the caller, run `handler`, and audit the call."""
        remaining = context.time_remaining()
        address = peer_ip(context)
        call = Call(
            method=method,
            zone=policy.zone_for(zone, address, self._zone_cidrs),
            peer=address,
            request_id=request_id_var.get(),
            started=time.monotonic(),
            deadline=None if remaining is None else time.monotonic() + remaining,
        )
        status, reason = "OK", ""
        try:
            call.principal = await self.verifier.principal(peer_certificate(context), call.metadata(tenant=""))
            policy.check_network(call.principal, call.zone, address)
            policy.check_role(call.principal, method, admin_service=admin)
            wait = self.limiter.try_acquire(call.tenant)
            if wait > 0:
                raise ResourceExhaustedError(
                    f"tenant {call.tenant!r} is over its request rate limit; retry in {wait:.2f} s"
                )
            return await handler(call, request)
        except KeyrelayError as exc:
            status, reason = exc.code.name, exc.reason
            raise
        except asyncio.CancelledError:
            status, reason = "CANCELLED", ""
            raise
        except Exception:
            status, reason = "INTERNAL", "INTERNAL"
            raise
        finally:
            route = ",".join(dict.fromkeys(call.routes)) or "none"
            route_var.set(route)
            self._audit(call, route, status, reason)

    def _audit(self, call: Call, route: str, status: str, reason: str) -> None:
        principal = call.principal
        try:
            self.audit.append(
                {
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "request_id": call.request_id,
                    "tenant": principal.tenant_id if principal else "",
                    "access_point": principal.access_point_id if principal else "",
                    "credential_serial": principal.credential_serial if principal else "",
                    "zone": call.zone,
                    "peer": str(call.peer or ""),
                    "operation": call.method,
                    "key_id": ",".join(dict.fromkeys(call.key_ids))[:400],
                    "key_version": call.key_version,
                    "route": route,
                    "status": status,
                    "reason": reason,
                    "latency_ms": round((time.monotonic() - call.started) * 1000, 3),
                }
            )
        except Exception:  # noqa: BLE001 - a failing audit disk must be loud, but is reported, not hidden
            log.exception("writing the audit record of %s failed", call.method)
            raise

    # -- routing ----------------------------------------------------------------------------------

    async def resolve(self, call: Call, ref: str) -> registry_pb2.KeyRecord:
        """The registry record of a key the caller names, checked against its key patterns."""
        if not ref:
            raise InvalidArgumentError("key_id is required: give a key id (UUID) or an alias 'alias/NAME'")
        record = await self.directory.resolve(call.tenant, ref, call.metadata())
        policy.check_key(call.principal, record.key_id, record.aliases, shown_as=ref)
        call.key_ids.append(record.key_id)
        return record

    async def route(self, call: Call, record: registry_pb2.KeyRecord, *, management: bool) -> ReplicaSet:
        """Where requests on this key go, after the instance's network policy (claim 3)."""
        if record.state == kms_pb2.KEY_STATE_CREATING:
            raise KeyStateConflictError(f"key {record.key_id} is still being created; retry shortly")
        if not record.instance_id:
            call.routes.append("shared")
            return self.shared
        instance = await self.directory.instance(record.instance_id, call.metadata())
        self.check_instance_policy(call, instance, management=management, key_id=record.key_id)
        call.routes.append(f"instance:{instance.instance_id}")
        return self.instance_replicas(instance.instance_id, tuple(instance.node_endpoints))

    @staticmethod
    def check_instance_policy(call: Call, instance, *, management: bool, key_id: str = "") -> None:
        """Refuse management from zones the instance does not allow, and public crypto unless allowed."""
        if management:
            zones = tuple(instance.policy.management_zones)
            if zones and call.zone not in zones:
                raise NetworkNotAllowedError(
                    f"management requests for dedicated instance {instance.instance_id!r} are accepted only "
                    f"from zone(s) {', '.join(zones)}; this request came in on zone {call.zone!r}"
                )
        elif not instance.policy.allow_public_crypto:
            raise PrivateEndpointRequiredError(
                f"key {key_id} belongs to dedicated instance {instance.instance_id!r}: send cryptographic "
                f"requests to its private endpoint {instance.private_endpoint} with an access-point credential"
            )

    async def forward(self, call: Call, target: ReplicaSet, path: str, request: Any, response_type: Any) -> Any:
        """Send the request to a replica of `target` with the caller's tenant and deadline."""
        method = path.rsplit("/", 1)[-1]
        return await target.call(
            path,
            request,
            response_type,
            metadata=call.metadata(),
            timeout=call.remaining(self.default_timeout),
            idempotent=method in _IDEMPOTENT,
        )

    async def registry_call(self, call: Call, method: str, request: Any, response_type: Any, *, idempotent=True) -> Any:
        """A KeyRegistryService call on the shared KMS on behalf of this request."""
        return await self.shared.call(
            _REGISTRY + method,
            request,
            response_type,
            metadata=call.metadata(),
            timeout=call.remaining(self.default_timeout),
            idempotent=idempotent,
        )


def item_error(exc: KeyrelayError) -> errors_pb2.ItemError:
    """The per-item form of an error in a batch response."""
    return errors_pb2.ItemError(code=exc.code.value[0], reason=exc.reason, message=exc.message)


class GatewayKmsServicer(kms_pb2_grpc.KeyManagementServiceServicer):
    """KeyManagementService as served by one gateway listener (one network zone)."""

    def __init__(self, gateway: Gateway, zone: str) -> None:
        self._gw = gateway
        self._zone = zone

    def _serve(self, method: str, request, context, handler):
        return self._gw.serve(self._zone, method, request, context, handler)

    # -- helpers shared by the handlers -------------------------------------------------------

    async def _keyed(self, call: Call, method: str, request, response_type, *, management: bool):
        gw = self._gw
        record = await gw.resolve(call, request.key_id)
        target = await gw.route(call, record, management=management)
        response = await gw.forward(call, target, _KMS + method, request, response_type)
        if management and method != "DescribeKey":
            try:
                await self._after_change(call, record, response.key_metadata)
            except AliasExistsError:
                # The registry refused the alias (a shared key of the tenant has it): undo it on the instance.
                if method == "CreateAlias":
                    await gw.forward(
                        call, target, _KMS + "DeleteAlias", kms_pb2.DeleteAliasRequest(alias=request.alias),
                        kms_pb2.DeleteAliasResponse,
                    )
                raise
        self._note_version(call, response)
        return response

    @staticmethod
    def _note_version(call: Call, response) -> None:
        version = getattr(response, "key_version", 0) or getattr(response, "new_version", 0)
        if version:
            call.key_version = version

    async def _after_change(self, call: Call, record, metadata: kms_pb2.KeyMetadata) -> None:
        """Drop cached routes of a key this gateway changed; mirror a dedicated key's state to the registry."""
        gw = self._gw
        gw.directory.invalidate(record.key_id)
        if record.instance_id:
            await gw.registry_call(
                call,
                "UpdateKeyRecord",
                registry_pb2.UpdateKeyRecordRequest(
                    key_id=record.key_id, state=metadata.state, aliases=list(metadata.aliases)
                ),
                registry_pb2.UpdateKeyRecordResponse,
            )
            gw.directory.invalidate(record.key_id)

    # -- lifecycle ---------------------------------------------------------------------------------

    def CreateKey(self, request, context):
        return self._serve("CreateKey", request, context, self._create_key)

    async def _create_key(self, call: Call, request):
        gw = self._gw
        if request.key_id:
            raise InvalidArgumentError("key_id is chosen by the KMS; leave it empty")
        policy.check_key(
            call.principal, "", [request.alias] if request.alias else [], shown_as=request.alias or "a new key without alias"
        )
        if not request.instance_id:
            call.routes.append("shared")
            response = await gw.forward(call, gw.shared, _KMS + "CreateKey", request, kms_pb2.CreateKeyResponse)
            call.key_ids.append(response.key_metadata.key_id)
            return response
        try:
            instance = await gw.directory.instance(request.instance_id, call.metadata())
        except InstanceNotFoundError:
            instance = None
        if instance is None or instance.tenant_id != call.tenant:
            raise InstanceNotFoundError(
                f"no dedicated instance {request.instance_id!r} is registered for tenant {call.tenant!r}"
            )
        gw.check_instance_policy(call, instance, management=True)
        call.routes.append(f"instance:{instance.instance_id}")
        return await self._create_dedicated_key(call, request, instance)

    async def _create_dedicated_key(self, call: Call, request, instance):
        """Reserve in the registry (CREATING), create on the instance, commit (ENABLED).

        A failure the instance certainly did not see aborts the reservation; one it may have seen
        leaves the reservation CREATING (unusable), and a retry with the same request id finishes
        the job, since the instance answers KEY_EXISTS for a key it already made."""
        gw = self._gw
        reserved = (
            await gw.registry_call(
                call,
                "ReserveKey",
                registry_pb2.ReserveKeyRequest(
                    tenant_id=call.tenant, instance_id=instance.instance_id, alias=request.alias, request_id=call.request_id
                ),
                registry_pb2.ReserveKeyResponse,
            )
        ).record
        key_id = reserved.key_id
        call.key_ids.append(key_id)
        target = gw.instance_replicas(instance.instance_id, tuple(instance.node_endpoints))
        node_request = kms_pb2.CreateKeyRequest()
        node_request.CopyFrom(request)
        node_request.key_id = key_id
        try:
            created = await gw.forward(call, target, _KMS + "CreateKey", node_request, kms_pb2.CreateKeyResponse)
            metadata = created.key_metadata
        except KeyExistsError:
            described = await gw.forward(
                call, target, _KMS + "DescribeKey", kms_pb2.DescribeKeyRequest(key_id=key_id), kms_pb2.DescribeKeyResponse
            )
            metadata = described.key_metadata
        except KeyrelayError as exc:
            # An answer from the instance, or a call it never received, means nothing was made there;
            # a call lost in flight may have made the key, so its reservation waits for the retry.
            maybe_made = getattr(exc, "maybe_delivered", True) and (
                isinstance(exc, UnavailableError) or exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
            )
            if reserved.state == kms_pb2.KEY_STATE_CREATING and not maybe_made:
                await self._abort(call, key_id)
            raise
        if reserved.state == kms_pb2.KEY_STATE_CREATING:
            await gw.registry_call(
                call, "CommitKey", registry_pb2.CommitKeyRequest(key_id=key_id), registry_pb2.CommitKeyResponse
            )
        gw.directory.invalidate(key_id)
        return kms_pb2.CreateKeyResponse(key_metadata=metadata)

    async def _abort(self, call: Call, key_id: str) -> None:
        try:
            await self._gw.registry_call(
                call, "AbortKey", registry_pb2.AbortKeyRequest(key_id=key_id), registry_pb2.AbortKeyResponse
            )
        except KeyrelayError:
            log.warning("could not abort the reservation of key %s; it stays CREATING and unusable", key_id)

    def _keyed_method(name: str, response_type, *, management: bool):  # noqa: N805 - used in the class body
        def method(self, request, context):
            return self._serve(
                name, request, context,
                lambda call, req: self._keyed(call, name, req, response_type, management=management),
            )

        method.__name__ = name
        return method

    DescribeKey = _keyed_method("DescribeKey", kms_pb2.DescribeKeyResponse, management=True)

    def ListKeys(self, request, context):
        return self._serve("ListKeys", request, context, self._list_keys)

    async def _list_keys(self, call: Call, request):
        gw = self._gw
        call.routes.append("shared")
        response = await gw.forward(call, gw.shared, _KMS + "ListKeys", request, kms_pb2.ListKeysResponse)
        visible = [
            key for key in response.keys if policy.key_matches(call.principal.key_patterns, key.key_id, key.aliases)
        ]
        return kms_pb2.ListKeysResponse(keys=visible, next_page_token=response.next_page_token)

    EnableKey = _keyed_method("EnableKey", kms_pb2.EnableKeyResponse, management=True)
    DisableKey = _keyed_method("DisableKey", kms_pb2.DisableKeyResponse, management=True)
    ScheduleKeyDeletion = _keyed_method("ScheduleKeyDeletion", kms_pb2.ScheduleKeyDeletionResponse, management=True)
    CancelKeyDeletion = _keyed_method("CancelKeyDeletion", kms_pb2.CancelKeyDeletionResponse, management=True)
    RotateKey = _keyed_method("RotateKey", kms_pb2.RotateKeyResponse, management=True)
    UpdateKey = _keyed_method("UpdateKey", kms_pb2.UpdateKeyResponse, management=True)
    CreateAlias = _keyed_method("CreateAlias", kms_pb2.CreateAliasResponse, management=True)

    def DeleteAlias(self, request, context):
        return self._serve("DeleteAlias", request, context, self._delete_alias)

    async def _delete_alias(self, call: Call, request):
        gw = self._gw
        record = await gw.resolve(call, request.alias)
        target = await gw.route(call, record, management=True)
        response = await gw.forward(call, target, _KMS + "DeleteAlias", request, kms_pb2.DeleteAliasResponse)
        gw.directory.invalidate(record.key_id)  # also drops the cached alias, which names this key
        if record.instance_id:
            described = await gw.forward(
                call, target, _KMS + "DescribeKey", kms_pb2.DescribeKeyRequest(key_id=record.key_id),
                kms_pb2.DescribeKeyResponse,
            )
            await self._after_change(call, record, described.key_metadata)
        return response

    # -- cryptography ------------------------------------------------------------------------------

    Encrypt = _keyed_method("Encrypt", kms_pb2.EncryptResponse, management=False)
    GenerateDataKey = _keyed_method("GenerateDataKey", kms_pb2.GenerateDataKeyResponse, management=False)
    GenerateDataKeyWithoutPlaintext = _keyed_method(
        "GenerateDataKeyWithoutPlaintext", kms_pb2.GenerateDataKeyWithoutPlaintextResponse, management=False
    )
    SealPublicKey = _keyed_method("SealPublicKey", kms_pb2.SealPublicKeyResponse, management=False)

    async def _by_blob(self, call: Call, method: str, request, blob: bytes, response_type):
        gw = self._gw
        record = await gw.resolve(call, peek_key_id(blob))
        target = await gw.route(call, record, management=False)
        response = await gw.forward(call, target, _KMS + method, request, response_type)
        self._note_version(call, response)
        return response

    def Decrypt(self, request, context):
        return self._serve(
            "Decrypt", request, context,
            lambda call, req: self._by_blob(call, "Decrypt", req, req.ciphertext_blob, kms_pb2.DecryptResponse),
        )

    def OpenPublicKey(self, request, context):
        return self._serve(
            "OpenPublicKey", request, context,
            lambda call, req: self._by_blob(
                call, "OpenPublicKey", req, req.sealed.wrapped_dek, kms_pb2.OpenPublicKeyResponse
            ),
        )

    def ReEncrypt(self, request, context):
        return self._serve("ReEncrypt", request, context, self._re_encrypt)

    async def _re_encrypt(self, call: Call, request):
        gw = self._gw
        source = await gw.resolve(call, peek_key_id(request.ciphertext_blob))
        destination = await gw.resolve(call, request.destination_key_id)
        if source.instance_id != destination.instance_id:
            where = lambda r: f"dedicated instance {r.instance_id!r}" if r.instance_id else "the shared pool"  # noqa: E731
            raise InvalidArgumentError(
                f"ReEncrypt works within one KMS: the ciphertext's key is on {where(source)} and the destination "
                f"key on {where(destination)}; decrypt there and encrypt under the destination key instead"
            )
        await gw.route(call, source, management=False)
        target = await gw.route(call, destination, management=False)
        response = await gw.forward(call, target, _KMS + "ReEncrypt", request, kms_pb2.ReEncryptResponse)
        call.key_version = response.key_version
        return response

    def GenerateRandom(self, request, context):
        return self._serve("GenerateRandom", request, context, self._generate_random)

    async def _generate_random(self, call: Call, request):
        gw = self._gw
        call.routes.append("shared")
        return await gw.forward(call, gw.shared, _KMS + "GenerateRandom", request, kms_pb2.GenerateRandomResponse)

    def BatchDecrypt(self, request, context):
        return self._serve(
            "BatchDecrypt", request, context,
            lambda call, req: self._batch(
                call, "BatchDecrypt", req, lambda item: peek_key_id(item.ciphertext_blob),
                kms_pb2.BatchDecryptRequest, kms_pb2.BatchDecryptResponse, kms_pb2.BatchDecryptResult,
            ),
        )

    def BatchGenerateDataKey(self, request, context):
        return self._serve(
            "BatchGenerateDataKey", request, context,
            lambda call, req: self._batch(
                call, "BatchGenerateDataKey", req, lambda item: item.key_id,
                kms_pb2.BatchGenerateDataKeyRequest, kms_pb2.BatchGenerateDataKeyResponse,
                kms_pb2.BatchGenerateDataKeyResult,
            ),
        )

    async def _batch(self, call: Call, method: str, request, key_of, request_type, response_type, result_type):
        """Split a batch by where each item's key lives, forward the parts, and merge the results in order.

        Items the gateway itself refuses (unknown key, key not covered, private endpoint required)
        get their error in place, as a node would report them."""
        gw = self._gw
        items = list(request.items)
        if not items:
            raise InvalidArgumentError("the batch is empty; send 1 to 1000 items")
        if len(items) > MAX_BATCH_ITEMS:
            raise BatchTooLargeError(f"the batch has {len(items)} items; at most {MAX_BATCH_ITEMS} are allowed per call: split it")
        results: list[Any] = [None] * len(items)
        groups: dict[str, tuple[ReplicaSet, list[int]]] = {}
        routed: dict[str, ReplicaSet | KeyrelayError] = {}
        for index, item in enumerate(items):
            try:
                ref = key_of(item)
                if ref not in routed:
                    try:
                        record = await gw.resolve(call, ref)
                        routed[ref] = await gw.route(call, record, management=False)
                    except KeyrelayError as exc:
                        routed[ref] = exc
                target = routed[ref]
                if isinstance(target, KeyrelayError):
                    raise target
                groups.setdefault(target.name, (target, []))[1].append(index)
            except KeyrelayError as exc:
                results[index] = result_type(error=item_error(exc))

        async def send(target: ReplicaSet, indexes: list[int]) -> None:
            part = request if len(indexes) == len(items) else request_type(items=[items[i] for i in indexes])
            reply = await gw.forward(call, target, _KMS + method, part, response_type)
            for index, result in zip(indexes, reply.results):
                results[index] = result

        await asyncio.gather(*(send(target, indexes) for target, indexes in groups.values()))
        return response_type(results=results)


class GatewayAdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """AdminService as served by one gateway listener: admin role, forwarded to the shared KMS."""

    def __init__(self, gateway: Gateway, zone: str) -> None:
        self._gw = gateway
        self._zone = zone

    def _forward(name: str, response_type, *, forget_credentials: bool = False):  # noqa: N805
        def method(self, request, context):
            async def handler(call: Call, req):
                gw = self._gw
                metadata = call.metadata()
                if call.tenant == gw.operator_tenant:
                    metadata.append((ADMIN_SCOPE_METADATA_KEY, "all"))
                call.routes.append("shared")
                reply = await gw.shared.call(
                    _ADMIN + name,
                    req,
                    response_type,
                    metadata=metadata,
                    timeout=call.remaining(gw.default_timeout),
                    idempotent=name in _IDEMPOTENT,
                )
                if forget_credentials:
                    gw.verifier.forget()
                return reply

            return self._gw.serve(self._zone, name, request, context, handler, admin=True)

        method.__name__ = name
        return method

    RegisterInstance = _forward("RegisterInstance", admin_pb2.RegisterInstanceResponse)
    DescribeInstance = _forward("DescribeInstance", admin_pb2.DescribeInstanceResponse)
    ListInstances = _forward("ListInstances", admin_pb2.ListInstancesResponse)
    CreateAccessPoint = _forward("CreateAccessPoint", admin_pb2.CreateAccessPointResponse)
    DescribeAccessPoint = _forward("DescribeAccessPoint", admin_pb2.DescribeAccessPointResponse)
    ListAccessPoints = _forward("ListAccessPoints", admin_pb2.ListAccessPointsResponse)
    DeleteAccessPoint = _forward("DeleteAccessPoint", admin_pb2.DeleteAccessPointResponse, forget_credentials=True)
    IssueCredential = _forward("IssueCredential", admin_pb2.IssueCredentialResponse)
    ListCredentials = _forward("ListCredentials", admin_pb2.ListCredentialsResponse)
    RevokeCredential = _forward("RevokeCredential", admin_pb2.RevokeCredentialResponse, forget_credentials=True)
