"""Build and run a node's grpc.aio servers: KMS service, health, reflection, graceful stop.

The internal port (mutual TLS under the internal CA when `tls` is set) serves the gateway: the
KMS service, and on a shared node also the key registry, the admin service and credential checks
(the "shared KMS"). A dedicated node with `private_endpoint` also serves its tenant's clients
there, with access-point credentials.

Start-up order: bind the ports and answer health NOT_SERVING, open the key store (SQLite, or
PostgreSQL shared with the node's other replicas), log in to every HSM slot, then attach the
services and answer SERVING. Stop: health NOT_SERVING, drain in-flight calls for the grace
period, close the HSM sessions and the store.
"""

from __future__ import annotations

import asyncio
import logging

from foundation.audit import AuditLog
from foundation.config import Secret
from foundation.credential_check import CredentialVerifier
from foundation.grpc_server import Health, add_reflection, bind_port, new_server
from foundation.metrics import Metrics
from foundation.pki import CertificateAuthority
from foundation.ratelimit import TokenBucketLimiter
from foundation.tls import channel_credentials, server_credentials
from foundation.upstream import ReplicaSet
from foundation.wire import MAX_INTERNAL_REQUEST_BYTES, MAX_KMS_REQUEST_BYTES
from keyrelay.v1 import admin_pb2, admin_pb2_grpc, kms_pb2, kms_pb2_grpc, registry_pb2, registry_pb2_grpc
from kms_node.admin import AdminService
from kms_node.admin_servicer import AdminServicer
from kms_node.config import NodeConfig
from kms_node.hsm.pkcs11_pool import Pkcs11Pool
from kms_node.internal_auth import InternalPeerInterceptor
from kms_node.private_endpoint import PrivateEndpointServicer
from kms_node.registry import KeyRegistry
from kms_node.registry_servicer import AccessRegistryServicer, KeyRegistryServicer
from kms_node.service import KeyService
from kms_node.servicer import KeyManagementServicer
from kms_node.store.admin_sql import SqlAdminStore
from kms_node.store.sql import SqlKeyStore

log = logging.getLogger(__name__)
KMS_SERVICE_NAME = kms_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].full_name
SHARED_SERVICE_NAMES = [
    registry_pb2.DESCRIPTOR.services_by_name["KeyRegistryService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["AccessRegistryService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
]


class NodeServer:
    """One running KMS node."""

    def __init__(self, config: NodeConfig, *, pin: Secret) -> None:
        self.config = config
        self._pin = pin
        self.metrics = Metrics("node")
        interceptors = [InternalPeerInterceptor(config.tls.gateway_cn)] if config.tls.cert else []
        self._server = new_server(MAX_INTERNAL_REQUEST_BYTES, metrics=self.metrics, interceptors=interceptors)
        self._servicer = KeyManagementServicer()
        kms_pb2_grpc.add_KeyManagementServiceServicer_to_server(self._servicer, self._server)
        services = [KMS_SERVICE_NAME]
        self._registry_servicer: KeyRegistryServicer | None = None
        if config.mode == "shared":
            self._registry_servicer = KeyRegistryServicer()
            self._access_servicer = AccessRegistryServicer()
            self._admin_servicer = AdminServicer()
            registry_pb2_grpc.add_KeyRegistryServiceServicer_to_server(self._registry_servicer, self._server)
            registry_pb2_grpc.add_AccessRegistryServiceServicer_to_server(self._access_servicer, self._server)
            admin_pb2_grpc.add_AdminServiceServicer_to_server(self._admin_servicer, self._server)
            services += SHARED_SERVICE_NAMES
        self._health = Health(self._server, services)
        add_reflection(self._server, services)
        self._private_server = None
        self._private_health: Health | None = None
        self._registry_nodes: ReplicaSet | None = None
        if config.private_endpoint.listen:
            self._private_servicer = PrivateEndpointServicer(
                self._servicer, zone=config.private_endpoint.zone, instance_id=config.instance_id
            )
            self._private_server = new_server(
                MAX_KMS_REQUEST_BYTES, metrics=self.metrics, refuse=self._private_servicer.refuse
            )
            kms_pb2_grpc.add_KeyManagementServiceServicer_to_server(self._private_servicer, self._private_server)
            self._private_health = Health(self._private_server, [KMS_SERVICE_NAME])
            add_reflection(self._private_server, [KMS_SERVICE_NAME])
        self.pool: Pkcs11Pool | None = None
        self.store: SqlKeyStore | None = None
        self.admin_store: SqlAdminStore | None = None
        self.service: KeyService | None = None
        self.port: int | None = None
        self.private_port: int | None = None
        self.metrics_port: int | None = None
        self._sweeper: asyncio.Task | None = None
        self._registry: KeyRegistry | None = None
        self._admin: AdminService | None = None
        self._private_audit: AuditLog | None = None

    async def start(self) -> int:
        """Bind, log in to the HSM, and serve; returns the bound port.

        Raises HsmUnavailableError (after releasing the port) if no HSM slot can be opened.
        """
        tls = self.config.tls
        internal = server_credentials(tls.cert, tls.key, tls.client_ca, require_client_cert=True) if tls.cert else None
        self.port = bind_port(self._server, self.config.listen, internal, "the internal port, `listen`")
        if self._private_server is not None:
            private = self.config.private_endpoint
            self.private_port = bind_port(
                self._private_server,
                private.listen,
                server_credentials(private.cert, private.key, private.client_ca, require_client_cert=True,
                                   section="private_endpoint"),
                "the private endpoint, `private_endpoint.listen`",
            )
        # The health servicer starts out SERVING; say NOT_SERVING before the first call can ask.
        await self._health.set_serving(False)
        await self._server.start()
        if self._private_server is not None:
            await self._private_health.set_serving(False)
            await self._private_server.start()
        log.info("node (%s%s) listening on port %d; logging in to the HSM",
                 self.config.mode, f" {self.config.instance_id}" if self.config.instance_id else "", self.port)
        try:
            loop = asyncio.get_running_loop()
            log.info("opening the key store: %s", self.config.store.shown)
            self.store = await loop.run_in_executor(None, SqlKeyStore, self.config.store.location)
            hsm = self.config.hsm
            self.pool = Pkcs11Pool(
                hsm.module,
                hsm.tokens,
                self._pin,
                domain_key_label=hsm.domain_key_label,
                sessions_per_slot=hsm.sessions_per_slot,
                threads=hsm.threads,
                retry_seconds=hsm.slot_retry_seconds,
                checkout_timeout=hsm.checkout_timeout_seconds,
            )
            self.pool.observer = self.metrics.observe_hsm
            await self.pool.start()
            if self.config.metrics_listen:
                self.metrics_port = await self.metrics.start_http(self.config.metrics_listen)
            self.service = KeyService(self.store, self.pool, mode=self.config.mode, instance_id=self.config.instance_id)
            if self.config.mode == "shared":
                await self._attach_shared_kms(loop)
            if self._private_server is not None:
                self._attach_private_endpoint()
        except BaseException:
            await self._server.stop(0)
            if self._private_server is not None:
                await self._private_server.stop(0)
            await self._release()
            raise
        self._servicer.attach(self.service)
        self._sweeper = asyncio.create_task(self._sweep_deletions())
        await self._health.set_serving(True)
        if self._private_health is not None:
            await self._private_health.set_serving(True)
        up = [s.label for s in self.pool.status() if s.up]
        log.info("node ready: HSM slots up: %s", ", ".join(up))
        return self.port

    async def _attach_shared_kms(self, loop) -> None:
        """The shared KMS's registry, admin service and credential checks (and the bootstrap admin)."""
        ca_config = self.config.ca
        ca = CertificateAuthority.load(ca_config.cert, ca_config.key) if ca_config.cert else None
        self.admin_store = await loop.run_in_executor(
            None, lambda: SqlAdminStore(self.config.store.location, operator_tenant=ca_config.operator_tenant)
        )
        self._admin = AdminService(self.admin_store, ca, operator_tenant=ca_config.operator_tenant)
        if ca_config.bootstrap_dir:
            await self._admin.bootstrap_admin(ca_config.bootstrap_dir)
        self._registry = KeyRegistry(self.store, self.admin_store)
        self._registry_servicer.attach(self._registry)
        self._access_servicer.attach(self._admin)
        self._admin_servicer.attach(self._admin)

    def _attach_private_endpoint(self) -> None:
        private, tls = self.config.private_endpoint, self.config.tls
        self._registry_nodes = ReplicaSet(
            "shared", private.registry_nodes, channel_credentials(tls.client_ca, tls.cert, tls.key)
        )
        self._registry_nodes.start()
        self._private_audit = AuditLog(private.audit_path)
        self._private_servicer.attach(
            registry=self._registry_nodes,
            verifier=CredentialVerifier(self._registry_nodes, ttl=private.credential_cache_seconds),
            limiter=TokenBucketLimiter(private.requests_per_second, private.burst),
            audit=self._private_audit,
        )

    async def _sweep_deletions(self) -> None:
        while True:
            await asyncio.sleep(self.config.deletion_sweep_seconds)
            try:
                await self.service.purge_due_keys()
            except Exception:  # noqa: BLE001 - the sweep must outlive a failed round
                log.exception("deleting keys past their deletion window failed; will retry")

    async def stop(self, grace: float | None = None) -> None:
        """Drain in-flight calls, then close HSM sessions and the store."""
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        await self._health.shutdown()
        if self._private_health is not None:
            await self._private_health.shutdown()
        await asyncio.gather(
            self._server.stop(grace), *([self._private_server.stop(grace)] if self._private_server else [])
        )
        await self._release()
        log.info("node stopped")

    async def _release(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.metrics.stop_http()
        if self._registry_nodes is not None:
            await self._registry_nodes.close()
        if self._private_audit is not None:
            self._private_audit.close()
        if self.service is not None:
            self.service.close()
        if self.pool is not None:
            await self.pool.close()
        for worker in (self._registry, self._admin):
            if worker is not None:
                worker.close()
        if self.admin_store is not None:
            self.admin_store.close()
        if self.store is not None:
            self.store.close()
