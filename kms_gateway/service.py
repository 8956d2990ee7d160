"""The gateway's work on each call, free of gRPC servicers: authorize, route, forward, mirror.

Every call runs inside `CallGuard.serve` (authentication, `access_policy.check_call`, the tenant's
rate limit, audit). Then:

- a request naming keys has each one resolved through the shared KMS's registry (`Registry`,
  cached), checked against the caller's key patterns, and is forwarded with the resolved key ids
  to the shared pool or to the dedicated instance that holds them, after the instance's own policy
  (`access_policy.check_route`): management only from its zones, cryptography only if it allows
  it through the gateway, else at its private endpoint;
- a batch is split by where its items' keys live, each item refused here getting its error in
  place; it may name at most `MAX_BATCH_KEYS` distinct keys, resolved a bounded number at a time;
- a key created on a dedicated instance is reserved in the registry first, created there, then
  committed, so no half-made key is left; every later change to it is mirrored to the registry;
- AdminService calls go to the shared KMS, which authorizes them against the calling access point.

KeyManagementService requests and responses pass through as the messages they are; the registry
and the control plane are seen only as the dataclasses of `kms_gateway.registry`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import grpc

from foundation import access_policy as policy
from foundation.batches import dispatch_batch
from foundation.call_guard import Call, CallGuard
from foundation.errors import (
    quote,
    AliasExistsError,
    InstanceNotFoundError,
    InvalidArgumentError,
    KeyExistsError,
    KeyrelayError,
    KeyStateConflictError,
    UnavailableError,
)
from foundation.key_refs import BATCH_METHODS, key_refs, with_key_ids
from foundation.upstream import ReplicaSet
from keyrelay.v1 import kms_pb2
from kms_gateway.registry import InstanceRoute, KeyRoute, Registry

log = logging.getLogger(__name__)

_KMS = "/keyrelay.v1.KeyManagementService/"
_ADMIN = "/keyrelay.v1.AdminService/"
# Calls safe to repeat on another replica when one fails mid-call: reads, cryptography, setters.
_IDEMPOTENT = frozenset(
    {
        "DescribeKey", "ListKeys", "EnableKey", "DisableKey", "CancelKeyDeletion", "UpdateKey",
        *policy.CRYPTO_METHODS,
        "DescribeInstance", "ListInstances", "DescribeAccessPoint", "ListAccessPoints", "ListCredentials",
        "RevokeCredential",
    }
)
#: AdminService calls after which cached credential checks may be wrong.
_FORGET_CREDENTIALS = frozenset({"DeleteAccessPoint", "RevokeCredential"})


def _where(route: KeyRoute) -> str:
    return f"dedicated instance {quote(route.instance_id)}" if route.instance_id else "the shared pool"


class GatewayService:
    """Everything the gateway's listeners share: the guard, the registry and the upstreams."""

    def __init__(
        self,
        *,
        guard: CallGuard,
        shared: ReplicaSet,
        registry: Registry,
        make_replica_set: Callable[[str, tuple[str, ...]], ReplicaSet],
        default_timeout: float,
    ) -> None:
        self.guard = guard
        self.shared = shared
        self.registry = registry
        self._make_replica_set = make_replica_set
        self._instances: dict[str, ReplicaSet] = {}
        self.default_timeout = default_timeout

    async def close(self) -> None:
        """Close the connections to every dedicated instance (the shared set is closed by its owner)."""
        await asyncio.gather(*(s.close() for s in self._instances.values()), return_exceptions=True)

    def instance_replicas(self, instance: InstanceRoute) -> ReplicaSet:
        """The replica set of a dedicated instance, made on first use and renewed if its endpoints change."""
        current = self._instances.get(instance.instance_id)
        if current is None or current.endpoints != instance.node_endpoints:
            if current is not None:
                asyncio.create_task(current.close())
            current = self._make_replica_set(f"instance:{instance.instance_id}", instance.node_endpoints)
            current.start()
            self._instances[instance.instance_id] = current
        return current

    # -- entry -------------------------------------------------------------------------------------

    async def kms(self, zone: str, method: str, request: Any, context, response_type: Any) -> Any:
        """Serve one KeyManagementService call."""
        handler = self._HANDLERS.get(method, GatewayService._keyed)
        return await self.guard.serve(
            zone, method, request, context, lambda call, req: handler(self, call, method, req, response_type)
        )

    async def admin(self, zone: str, method: str, request: Any, context, response_type: Any) -> Any:
        """Serve one AdminService call: authorized here as a call, there on its targets."""
        return await self.guard.serve(
            zone, method, request, context, lambda call, req: self._admin(call, method, req, response_type)
        )

    async def _admin(self, call: Call, method: str, request: Any, response_type: Any) -> Any:
        call.routes.append("shared")
        reply = await self.forward(call, self.shared, method, request, response_type, service=_ADMIN)
        if method in _FORGET_CREDENTIALS:
            self.guard.verifier.forget()
        return reply

    # -- resolving and routing ---------------------------------------------------------------------

    async def _resolve(self, call: Call, ref: str) -> KeyRoute:
        return await self.registry.resolve(call.tenant, ref, call.metadata())

    async def route(self, call: Call, method: str, key: KeyRoute) -> ReplicaSet:
        """Where requests on this key go, after its instance's policy."""
        if key.creating:
            raise KeyStateConflictError(f"key {key.key_id} is still being created; retry shortly")
        if not key.instance_id:
            call.routes.append("shared")
            return self.shared
        instance = await self.registry.instance(key.instance_id, call.metadata())
        call.enforce(policy.check_route(call.entry, method, instance.policy, key.key_id))
        call.routes.append(f"instance:{instance.instance_id}")
        return self.instance_replicas(instance)

    async def forward(
        self, call: Call, target: ReplicaSet, method: str, request: Any, response_type: Any, *, service: str = _KMS
    ) -> Any:
        """Send the request to a replica of `target` with the caller's tenant (and for AdminService
        its access point) and deadline."""
        return await target.call(
            service + method,
            request,
            response_type,
            metadata=call.admin_metadata() if service == _ADMIN else call.metadata(),
            timeout=call.remaining(self.default_timeout),
            idempotent=method in _IDEMPOTENT,
        )

    # -- key management and cryptography -----------------------------------------------------------

    async def _keyed(self, call: Call, method: str, request: Any, response_type: Any) -> Any:
        """A call on the keys its request names: resolve, check, route, forward with key ids."""
        refs = key_refs(method, request)
        self.guard.check_new_names(call, refs)
        resolved = await self.guard.resolve_refs(call, refs, self._resolve)
        keys = resolved.require(refs)
        homes = {key.instance_id for key in keys}
        if len(homes) > 1:
            source, other = keys[0], next(k for k in keys if k.instance_id != keys[0].instance_id)
            raise InvalidArgumentError(
                f"{method} works within one KMS: key {source.key_id} is on {_where(source)} and key {other.key_id} on "
                f"{_where(other)}; decrypt there and encrypt under the other key instead"
            )
        targets = [await self.route(call, method, key) for key in dict.fromkeys(keys)]
        target = targets[-1]
        response = await self.forward(call, target, method, with_key_ids(request, refs, resolved.key_ids), response_type)
        if policy.RULES[method].kind == policy.KEY_MANAGEMENT:
            await self._after_change(call, method, request, keys[0], target, response)
        call.note_version(response)
        return response

    async def _after_change(self, call: Call, method: str, request, key: KeyRoute, target: ReplicaSet, response) -> None:
        """Drop cached routes of a key this gateway changed (by id or alias); mirror a dedicated
        key's state and aliases to the registry."""
        self.registry.invalidate(key.key_id)
        if method == "CreateAlias":
            self.registry.created(call.tenant)
        if not key.instance_id:
            return
        if method == "DeleteAlias":  # its answer names the key, not its state
            described = await self.forward(
                call, target, "DescribeKey", kms_pb2.DescribeKeyRequest(key_id=key.key_id), kms_pb2.DescribeKeyResponse
            )
            metadata = described.key_metadata
        else:
            metadata = response.key_metadata
        try:
            await self._mirror(call, key, metadata)
        except AliasExistsError:
            # The registry refused the alias (a shared key of the tenant has it): undo it on the instance.
            if method == "CreateAlias":
                await self.forward(
                    call, target, "DeleteAlias", kms_pb2.DeleteAliasRequest(alias=request.alias),
                    kms_pb2.DeleteAliasResponse,
                )
            raise

    async def _mirror(self, call: Call, key: KeyRoute, metadata) -> None:
        await self.registry.update(
            key.key_id, metadata.state, list(metadata.aliases), call.metadata(), call.remaining(self.default_timeout)
        )
        self.registry.invalidate(key.key_id)

    async def _list_keys(self, call: Call, method: str, request: Any, response_type: Any) -> Any:
        call.routes.append("shared")
        response = await self.forward(call, self.shared, method, request, response_type)
        return response_type(
            keys=policy.visible_keys(call.principal, response.keys), next_page_token=response.next_page_token
        )

    async def _generate_random(self, call: Call, method: str, request: Any, response_type: Any) -> Any:
        call.routes.append("shared")
        return await self.forward(call, self.shared, method, request, response_type)

    async def _batch(self, call: Call, method: str, request: Any, response_type: Any) -> Any:
        """Split a batch by where each item's key lives, forward the parts, merge the results in order."""
        refs = key_refs(method, request)
        resolved = await self.guard.resolve_refs(call, refs, self._resolve)
        routed: dict[str, ReplicaSet | KeyrelayError] = {}
        for ref in refs:
            found = resolved.of(ref)
            if ref.ref in routed or isinstance(found, KeyrelayError):
                continue
            try:
                routed[ref.ref] = await self.route(call, method, found)
            except KeyrelayError as exc:
                routed[ref.ref] = exc
        targets = [
            found if isinstance(found := resolved.of(ref), KeyrelayError) else routed[ref.ref] for ref in refs
        ]

        async def send(target: ReplicaSet, part: Any) -> Any:
            return await self.forward(
                call, target, method, with_key_ids(part, key_refs(method, part), resolved.key_ids), response_type
            )

        return await dispatch_batch(method, request, targets, send, group=lambda target: target.name)

    # -- creating keys -----------------------------------------------------------------------------

    async def _create_key(self, call: Call, method: str, request: Any, response_type: Any) -> Any:
        if request.key_id:
            raise InvalidArgumentError("key_id is chosen by the KMS; leave it empty")
        self.guard.check_new_names(call, key_refs(method, request))
        if not request.instance_id:
            call.routes.append("shared")
            response = await self.forward(call, self.shared, method, request, response_type)
            call.key_ids.append(response.key_metadata.key_id)
            self.registry.created(call.tenant)
            return response
        try:
            instance = await self.registry.instance(request.instance_id, call.metadata())
        except InstanceNotFoundError:
            instance = None
        if instance is None or instance.tenant_id != call.tenant:
            raise InstanceNotFoundError(
                f"no dedicated instance {quote(request.instance_id)} is registered for tenant {quote(call.tenant)}"
            )
        call.enforce(policy.check_route(call.entry, method, instance.policy))
        call.routes.append(f"instance:{instance.instance_id}")
        response = await self._create_dedicated_key(call, request, instance)
        self.registry.created(call.tenant)
        return response

    async def _create_dedicated_key(self, call: Call, request, instance: InstanceRoute):
        """Reserve in the registry (CREATING), create on the instance, commit (ENABLED).

        A failure the instance certainly did not see aborts the reservation; one it may have seen
        leaves the reservation CREATING (unusable), and a retry with the same request id finishes
        the job, since the instance answers KEY_EXISTS for a key it already made."""
        timeout = lambda: call.remaining(self.default_timeout)  # noqa: E731
        reserved = await self.registry.reserve(
            call.tenant, instance.instance_id, request.alias, call.request_id, call.metadata(), timeout()
        )
        key_id = reserved.key_id
        call.key_ids.append(key_id)
        target = self.instance_replicas(instance)
        node_request = kms_pb2.CreateKeyRequest()
        node_request.CopyFrom(request)
        node_request.key_id = key_id
        try:
            created = await self.forward(call, target, "CreateKey", node_request, kms_pb2.CreateKeyResponse)
            metadata = created.key_metadata
        except KeyExistsError:
            described = await self.forward(
                call, target, "DescribeKey", kms_pb2.DescribeKeyRequest(key_id=key_id), kms_pb2.DescribeKeyResponse
            )
            metadata = described.key_metadata
        except KeyrelayError as exc:
            # An answer from the instance, or a call it never received, means nothing was made there;
            # a call lost in flight may have made the key, so its reservation waits for the retry.
            maybe_made = getattr(exc, "maybe_delivered", True) and (
                isinstance(exc, UnavailableError) or exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
            )
            if reserved.creating and not maybe_made:
                await self._abort(call, key_id)
            raise
        if reserved.creating:
            await self.registry.commit(key_id, call.metadata(), timeout())
        self.registry.invalidate(key_id)
        return kms_pb2.CreateKeyResponse(key_metadata=metadata)

    async def _abort(self, call: Call, key_id: str) -> None:
        try:
            await self.registry.abort(key_id, call.metadata(), call.remaining(self.default_timeout))
        except KeyrelayError:
            log.warning("could not abort the reservation of key %s; it stays CREATING and unusable", key_id)

    _HANDLERS: dict[str, Callable] = {
        "CreateKey": _create_key,
        "ListKeys": _list_keys,
        "GenerateRandom": _generate_random,
        **dict.fromkeys(BATCH_METHODS, _batch),
    }
