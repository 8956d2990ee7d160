"""A dedicated instance's private endpoint: the tenant's cryptography, served by the node itself.

Clients connect over TLS with an access-point credential issued by the KMS CA. Every request goes
through the same `CallGuard` as at the gateway: the certificate is checked with the shared KMS
(cached for a few seconds), `foundation.access_policy` decides (the caller's networks, that its
tenant owns this instance, that the method is one served here, its roles), the tenant's rate limit
is charged, each key the request names is resolved here and checked against the caller's key
patterns, and one hash-chained audit record is written to the endpoint's own audit log. The call
then runs on the keys as resolved, as the access point's tenant. Key management belongs to the
gateway, which keeps the shared registry in step; here it is refused.
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from foundation import access_policy as policy
from foundation.audit import AuditLog
from foundation.batches import dispatch_batch
from foundation.call_guard import Call, CallGuard
from foundation.credential_check import CredentialVerifier
from foundation.errors import KeyrelayError, NodeNotReadyError
from foundation.ratelimit import TokenBucketLimiter
from foundation.key_refs import BATCH_METHODS, key_refs, with_key_ids
from foundation.upstream import ReplicaSet
from foundation.wire import REQUEST_ID_METADATA_KEY
from keyrelay.v1 import kms_pb2, kms_pb2_grpc, registry_pb2
from kms_node.service import Caller
from kms_node.servicer import KeyManagementServicer, caller_tenant_var

_RESOLVE_INSTANCE = "/keyrelay.v1.AccessRegistryService/ResolveInstance"
#: How long the instance's owner, once learned from the shared KMS, is trusted.
OWNER_CACHE_SECONDS = 300.0


class PrivateEndpointServicer(kms_pb2_grpc.KeyManagementServiceServicer):
    """KeyManagementService for the tenant's clients, authorised per request by access point."""

    def __init__(self, inner: KeyManagementServicer, *, zone: str, instance_id: str) -> None:
        self._inner = inner
        self._guard: CallGuard | None = None
        self._registry: ReplicaSet | None = None
        self._zone = zone
        self._instance_id = instance_id
        self._owner: tuple[str, float] | None = None

    def attach(
        self, *, registry: ReplicaSet, verifier: CredentialVerifier, limiter: TokenBucketLimiter, audit: AuditLog
    ) -> None:
        """Start answering calls (until then: node not ready): credentials checked by `verifier`,
        the instance's owner asked of `registry` (the shared KMS), rates counted by `limiter`,
        every call recorded in `audit`."""
        self._registry = registry
        self._guard = CallGuard(
            verifier=verifier, limiter=limiter, audit=audit,
            instance_id=self._instance_id, instance_tenant=self._instance_tenant, route="local",
        )

    async def _instance_tenant(self, call: Call) -> str:
        """The tenant that owns this instance, as the shared KMS registered it (cached)."""
        cached = self._owner
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        reply = await self._registry.call(
            _RESOLVE_INSTANCE,
            registry_pb2.ResolveInstanceRequest(instance_id=self._instance_id),
            registry_pb2.ResolveInstanceResponse,
            metadata=[(REQUEST_ID_METADATA_KEY, call.request_id)],
            timeout=call.remaining(5.0),
            idempotent=True,
        )
        self._owner = (reply.instance.tenant_id, time.monotonic() + OWNER_CACHE_SECONDS)
        return reply.instance.tenant_id

    async def _serve(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self._guard is None:
            raise NodeNotReadyError("the node is starting; retry shortly")
        return await self._guard.serve(
            self._zone, method, request, context, lambda call, req: self._handle(call, method, req, context)
        )

    async def refuse(self, context: grpc.aio.ServicerContext, operation: str, error: KeyrelayError) -> None:
        """Answer a request refused before it was decoded (the server skeleton's `refuse`): the
        caller authenticated and the call audited like any other."""
        if self._guard is None:
            raise NodeNotReadyError("the node is starting; retry shortly")
        await self._guard.refuse(self._zone, operation, context, error)

    async def _resolve(self, call: Call, ref: str):
        return await self._inner.service.describe_key(Caller(call.tenant), ref)

    async def _handle(self, call: Call, method: str, request: Any, context) -> Any:
        refs = key_refs(method, request)
        resolved = await self._guard.resolve_refs(call, refs, self._resolve)
        key_ids = resolved.key_ids
        inner = getattr(self._inner, method)
        token = caller_tenant_var.set(call.tenant)
        try:
            if method in BATCH_METHODS:
                # Items refused here get their error; the rest run on this node.
                targets = [_error_or(resolved.of(ref), "local") for ref in refs]
                return await dispatch_batch(
                    method, request, targets, lambda _, part: inner(with_key_ids(part, key_refs(method, part), key_ids), context)
                )
            resolved.require(refs)
            response = await inner(with_key_ids(request, refs, key_ids), context)
        finally:
            caller_tenant_var.reset(token)
        call.note_version(response)
        if method == "ListKeys":
            response = kms_pb2.ListKeysResponse(
                keys=policy.visible_keys(call.principal, response.keys), next_page_token=response.next_page_token
            )
        return response


def _error_or(found, target: str):
    return found if isinstance(found, KeyrelayError) else target


def _delegate(name: str):
    async def method(self: PrivateEndpointServicer, request, context):
        return await self._serve(name, request, context)

    method.__name__ = name
    return method


for _name in kms_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].methods_by_name:
    setattr(PrivateEndpointServicer, _name, _delegate(_name))
