"""A dedicated instance's private endpoint (claim 2): the tenant's cryptography, served by the node itself.

Clients connect over TLS with an access-point credential issued by the KMS CA. Each request's
certificate is checked with the shared KMS (`CredentialVerifier`, cached for a few seconds), then
the access point's networks, role and key patterns are applied as at the gateway, and the call
runs as the access point's tenant. Key management belongs to the gateway, which keeps the shared
registry in step; here it is refused.
"""

from __future__ import annotations

from typing import Any

import grpc

from foundation import access_policy as policy
from foundation import blob_formats as blobs
from foundation.credential_check import CredentialVerifier
from foundation.errors import NodeNotReadyError, PermissionDeniedError
from foundation.logsetup import request_id_var
from foundation.tls import peer_certificate, peer_ip
from keyrelay.v1 import kms_pb2, kms_pb2_grpc
from kms_node.service import Caller
from kms_node.servicer import KeyManagementServicer, caller_tenant_var

_SERVED_READS = frozenset({"DescribeKey", "ListKeys"})


def _key_refs(method: str, request: Any) -> list[str]:
    """The key references a request names (ids, aliases, or the key ids inside its ciphertexts)."""
    if method in ("Decrypt",):
        return [blobs.peek_key_id(request.ciphertext_blob), *([request.key_id] if request.key_id else [])]
    if method == "ReEncrypt":
        return [blobs.peek_key_id(request.ciphertext_blob), request.destination_key_id]
    if method == "OpenPublicKey":
        return [blobs.peek_key_id(request.sealed.wrapped_dek)]
    if method == "BatchDecrypt":
        return [blobs.peek_key_id(item.ciphertext_blob) for item in request.items]
    if method == "BatchGenerateDataKey":
        return [item.key_id for item in request.items]
    if method in ("GenerateRandom", "ListKeys"):
        return []
    return [request.key_id]


class PrivateEndpointServicer(kms_pb2_grpc.KeyManagementServiceServicer):
    """KeyManagementService for the tenant's clients, authorised per request by access point."""

    def __init__(self, inner: KeyManagementServicer, *, zone: str, instance_id: str) -> None:
        self._inner = inner
        self._verifier: CredentialVerifier | None = None
        self._zone = zone
        self._instance_id = instance_id

    def attach(self, verifier: CredentialVerifier) -> None:
        """Start answering calls, checking credentials with `verifier` (until then: node not ready)."""
        self._verifier = verifier

    async def _serve(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self._verifier is None:
            raise NodeNotReadyError("the node is starting; retry shortly")
        principal = await self._verifier.principal(peer_certificate(context), [("x-request-id", request_id_var.get())])
        policy.check_network(principal, self._zone, peer_ip(context))
        if method in policy.MANAGEMENT_METHODS - _SERVED_READS:
            raise PermissionDeniedError(
                f"{method} is key management: send it through the gateway. The private endpoint of instance "
                f"{self._instance_id!r} serves cryptography and key reads"
            )
        policy.check_role(principal, method)
        caller = Caller(principal.tenant_id)
        seen: set[str] = set()
        for ref in _key_refs(method, request):
            if ref in seen or not ref:
                continue
            seen.add(ref)
            record = await self._inner.service.describe_key(caller, ref)
            policy.check_key(principal, record.key_id, record.aliases, shown_as=ref)
        token = caller_tenant_var.set(principal.tenant_id)
        try:
            response = await getattr(self._inner, method)(request, context)
        finally:
            caller_tenant_var.reset(token)
        if method == "ListKeys":
            visible = [k for k in response.keys if policy.key_matches(principal.key_patterns, k.key_id, k.aliases)]
            response = kms_pb2.ListKeysResponse(keys=visible, next_page_token=response.next_page_token)
        return response


def _delegate(name: str):
    async def method(self: PrivateEndpointServicer, request, context):
        return await self._serve(name, request, context)

    method.__name__ = name
    return method


for _name in kms_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].methods_by_name:
    setattr(PrivateEndpointServicer, _name, _delegate(_name))
