"""Build and run the gateway: one TLS grpc.aio server per network zone, sharing one `Gateway`.

Each listener is its own server so that a request's zone is known from the port it arrived on
(grpc does not tell a handler which port it came in on). Start-up: connect to the shared KMS and
open the audit log, then bind every listener and answer health SERVING. Stop: health
NOT_SERVING, drain in-flight calls, close upstream channels and the audit log.
"""

from __future__ import annotations

import asyncio
import logging

from foundation.audit import AuditLog
from foundation.call_guard import CallGuard
from foundation.credential_check import CredentialVerifier
from foundation.grpc_server import Health, add_reflection, bind_port, new_server
from foundation.metrics import Metrics
from foundation.ratelimit import TokenBucketLimiter
from foundation.tls import channel_credentials, server_credentials
from foundation.upstream import ReplicaSet
from foundation.wire import MAX_KMS_REQUEST_BYTES
from keyrelay.v1 import admin_pb2, admin_pb2_grpc, kms_pb2, kms_pb2_grpc
from kms_gateway.config import GatewayConfig
from kms_gateway.registry import Registry
from kms_gateway.service import GatewayService
from kms_gateway.servicer import GatewayAdminServicer, GatewayKmsServicer

log = logging.getLogger(__name__)
SERVICE_NAMES = [
    kms_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
]


class GatewayServer:
    """One running gateway with all its listeners."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics("gateway")
        self.ports: dict[str, int] = {}
        self.metrics_port: int | None = None
        self._servers: list = []
        self._healths: list[Health] = []
        self.gateway: GatewayService | None = None
        self._shared: ReplicaSet | None = None
        self._audit: AuditLog | None = None

    def _replica_set(self, name: str, endpoints) -> ReplicaSet:
        internal = self.config.internal
        return ReplicaSet(
            name,
            endpoints,
            channel_credentials(internal.ca, internal.cert, internal.key),
            health_interval=self.config.health_check_seconds,
            on_retry=self.metrics.upstream_retry,
        )

    async def start(self) -> dict[str, int]:
        """Bind every listener and serve; returns the bound port of each zone."""
        config = self.config
        credentials = server_credentials(config.tls.cert, config.tls.key, config.tls.client_ca, require_client_cert=True)
        self._shared = self._replica_set("shared", config.shared_nodes)
        self._shared.start()
        self._audit = AuditLog(config.audit.path)
        self.gateway = GatewayService(
            guard=CallGuard(
                verifier=CredentialVerifier(self._shared, ttl=config.credential_cache_seconds),
                limiter=TokenBucketLimiter(config.rate_limit.requests_per_second, config.rate_limit.burst),
                audit=self._audit,
                zone_cidrs=dict(config.zone_cidrs),
            ),
            shared=self._shared,
            registry=Registry(
                self._shared,
                ttl=config.registry_cache_seconds,
                negative_ttl=config.registry_negative_cache_seconds,
                on_lookup=lambda hit: self.metrics.cache_hit() if hit else self.metrics.cache_miss(),
            ),
            make_replica_set=self._replica_set,
            default_timeout=config.default_timeout_seconds,
        )
        try:
            for zone, listen in config.listeners.items():
                server = new_server(
                    MAX_KMS_REQUEST_BYTES,
                    metrics=self.metrics,
                    refuse=lambda context, operation, error, zone=zone: self.gateway.guard.refuse(
                        zone, operation, context, error
                    ),
                )
                kms_pb2_grpc.add_KeyManagementServiceServicer_to_server(GatewayKmsServicer(self.gateway, zone), server)
                admin_pb2_grpc.add_AdminServiceServicer_to_server(GatewayAdminServicer(self.gateway, zone), server)
                health = Health(server, SERVICE_NAMES)
                add_reflection(server, SERVICE_NAMES)
                port = bind_port(server, listen, credentials, f"zone {zone}, `listeners.{zone}`")
                await server.start()
                self._servers.append(server)
                self._healths.append(health)
                self.ports[zone] = port
            if config.metrics_listen:
                self.metrics_port = await self.metrics.start_http(config.metrics_listen)
        except BaseException:
            await self._release(0)
            raise
        log.info(
            "gateway serving %s; shared KMS at %s",
            ", ".join(f"{zone} on port {port}" for zone, port in self.ports.items()),
            ", ".join(config.shared_nodes),
        )
        return self.ports

    async def stop(self, grace: float | None = None) -> None:
        """Drain in-flight calls, then close upstream channels and the audit log."""
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        await self._release(grace)
        log.info("gateway stopped")

    async def _release(self, grace: float) -> None:
        for health in self._healths:
            await health.shutdown()
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        await self.metrics.stop_http()
        if self.gateway is not None:
            await self.gateway.close()
        if self._shared is not None:
            await self._shared.close()
        if self._audit is not None:
            self._audit.close()
