"""Build and run a node's grpc.aio server: KMS service, health, reflection, graceful stop.

Start-up order: bind the port and answer health NOT_SERVING, open the key store, log in to every
HSM slot, then attach the key service and answer SERVING. Stop: health NOT_SERVING, drain
in-flight calls for the grace period, close the HSM sessions and the store.
"""

from __future__ import annotations

import asyncio
import logging

from foundation.config import Secret
from foundation.grpc_server import Health, add_reflection, new_server
from keyrelay.v1 import kms_pb2, kms_pb2_grpc
from kms_node.config import NodeConfig
from kms_node.hsm.pkcs11_pool import Pkcs11Pool
from kms_node.service import KeyService
from kms_node.servicer import KeyManagementServicer
from kms_node.store.sqlite import SqliteKeyStore

log = logging.getLogger(__name__)
KMS_SERVICE_NAME = kms_pb2.DESCRIPTOR.services_by_name["KeyManagementService"].full_name


class NodeServer:
    """One running KMS node."""

    def __init__(self, config: NodeConfig, *, pin: Secret) -> None:
        self.config = config
        self._pin = pin
        self._server = new_server()
        self._servicer = KeyManagementServicer()
        kms_pb2_grpc.add_KeyManagementServiceServicer_to_server(self._servicer, self._server)
        self._health = Health(self._server, [KMS_SERVICE_NAME])
        add_reflection(self._server, [KMS_SERVICE_NAME])
        self.pool: Pkcs11Pool | None = None
        self.store: SqliteKeyStore | None = None
        self.service: KeyService | None = None
        self.port: int | None = None
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> int:
        """Bind, log in to the HSM, and serve; returns the bound port.

        Raises HsmUnavailableError (after releasing the port) if no HSM slot can be opened.
        """
        try:
            self.port = self._server.add_insecure_port(self.config.listen)
        except RuntimeError:  # grpc's way of saying the bind failed
            self.port = 0
        if self.port == 0:
            raise OSError(
                f"cannot listen on {self.config.listen}: the port is in use or the address is not this host's; "
                "stop the other process or choose another `listen`"
            )
        # The health servicer starts out SERVING; say NOT_SERVING before the first call can ask.
        await self._health.set_serving(False)
        await self._server.start()
        log.info("node (%s%s) listening on port %d; logging in to the HSM",
                 self.config.mode, f" {self.config.instance_id}" if self.config.instance_id else "", self.port)
        try:
            loop = asyncio.get_running_loop()
            self.store = await loop.run_in_executor(None, SqliteKeyStore, self.config.store.path)
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
            await self.pool.start()
        except BaseException:
            await self._server.stop(0)
            await self._release()
            raise
        self.service = KeyService(self.store, self.pool, mode=self.config.mode, instance_id=self.config.instance_id)
        self._servicer.attach(self.service)
        self._sweeper = asyncio.create_task(self._sweep_deletions())
        await self._health.set_serving(True)
        up = [s.label for s in self.pool.status() if s.up]
        log.info("node ready: HSM slots up: %s", ", ".join(up))
        return self.port

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
        await self._server.stop(grace)
        await self._release()
        log.info("node stopped")

    async def _release(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.service is not None:
            self.service.close()
        if self.pool is not None:
            await self.pool.close()
        if self.store is not None:
            self.store.close()
