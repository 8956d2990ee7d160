"""Who may call a node's internal port: only the gateway, and dedicated nodes for credential checks.

The internal port runs mutual TLS under the internal CA, so every caller presents a certificate
the internal CA issued; this interceptor then admits the gateway (its certificate's common name
is `gateway_cn`) to every service, and the other nodes (common names starting `keyrelay-node`) to
`AccessRegistryService` only, which private endpoints use to check access-point credentials. The
tenant metadata the node acts on is trusted because only the gateway can send it.
"""

from __future__ import annotations

from typing import Any

import grpc

from foundation.errors import PermissionDeniedError
from foundation.tls import peer_certificate, peer_common_name

NODE_CN_PREFIX = "keyrelay-node"
_OPEN_TO_NODES = "/keyrelay.v1.AccessRegistryService/"
_OPEN_TO_ALL = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class InternalPeerInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls on the internal port from anyone but the gateway (PERMISSION_DENIED)."""

    def __init__(self, gateway_cn: str) -> None:
        self._gateway_cn = gateway_cn

    def _check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        if method.startswith(_OPEN_TO_ALL):
            return
        name = peer_common_name(peer_certificate(context))
        if name == self._gateway_cn:
            return
        if method.startswith(_OPEN_TO_NODES) and name.startswith(NODE_CN_PREFIX):
            return
        raise PermissionDeniedError(
            f"this is a KMS node's internal port: it serves only the gateway ({self._gateway_cn}), and the "
            f"certificate presented is {name or 'none'}; send requests through the gateway"
        )

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._check(method, context)
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
