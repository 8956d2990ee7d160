"""Build and run the relay's grpc.aio server: relay and directory services, health, reflection,
metrics, the expiry sweep, graceful stop.

Start-up: bind the port (health NOT_SERVING), open and migrate the store, then answer SERVING.
Stop: health NOT_SERVING, end Subscribe streams (clients resubscribe; unacknowledged messages
stay stored), drain in-flight calls for the grace period, store any queued sends, close the store.
"""

from __future__ import annotations

import asyncio
import logging

from foundation.grpc_server import Health, add_reflection, bind_port, new_server
from foundation.metrics import Metrics
from foundation.ratelimit import TokenBucketLimiter
from foundation.tls import server_credentials
from foundation.wire import MAX_RELAY_REQUEST_BYTES
from keyrelay.v1 import directory_pb2, directory_pb2_grpc, relay_pb2, relay_pb2_grpc
from relay.config import RelayConfig
from relay.service import RelayService
from relay.servicer import DirectoryServicer, RelayServicer
from relay.store.base import MailboxLimits, RelayStore
from relay.store.sql import SqlRelayStore

log = logging.getLogger(__name__)
SERVICE_NAMES = [
    relay_pb2.DESCRIPTOR.services_by_name["RelayService"].full_name,
    directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name,
]


class RelayServer:
    """One running relay."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.metrics = Metrics("relay")
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.store: RelayStore | None = None
        self.service: RelayService | None = None
        self._server = None
        self._health: Health | None = None
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> int:
        """Bind, open the store and serve; returns the bound port."""
        config = self.config
        loop = asyncio.get_running_loop()
        self.store = await loop.run_in_executor(None, SqlRelayStore, config.store.location)
        limit = config.rate_limit
        self.service = RelayService(
            self.store,
            limits=MailboxLimits(config.mailbox.max_messages, config.mailbox.max_bytes),
            ttl_seconds=config.mailbox.message_ttl_seconds,
            dedupe_seconds=config.mailbox.dedupe_seconds,
            limiter=TokenBucketLimiter(limit.requests_per_second, limit.burst),
            account_limiter=TokenBucketLimiter(limit.account_creations_per_minute / 60, limit.account_creation_burst),
            account_total_limiter=TokenBucketLimiter(
                limit.account_creations_per_minute_total / 60, max(1, int(limit.account_creations_per_minute_total))
            ),
            sender_quota=config.sender_quota,
            max_streams=limit.subscribe_streams_per_account,
            tokens=config.tokens,
            store_threads=config.store_threads,
            on_event=self.metrics.relay_event,
        )
        self.metrics.track_subscribers(lambda: self.service.signals.subscriber_count)
        try:
            await self.service.set_missing_token_expiry()
            await self.service.watch_store()  # before serving: no send of another relay goes unheard
        except BaseException:
            await self._release()
            raise
        server = new_server(MAX_RELAY_REQUEST_BYTES, metrics=self.metrics)
        relay_pb2_grpc.add_RelayServiceServicer_to_server(RelayServicer(self.service), server)
        directory_pb2_grpc.add_DirectoryServiceServicer_to_server(DirectoryServicer(self.service), server)
        self._health = Health(server, SERVICE_NAMES)
        add_reflection(server, SERVICE_NAMES)
        credentials = (
            server_credentials(config.tls.cert, config.tls.key, require_client_cert=False) if config.tls.cert else None
        )
        try:
            port = bind_port(server, config.listen, credentials, "`listen`")
            await server.start()
            self._server = server
            if config.metrics_listen:
                self.metrics_port = await self.metrics.start_http(config.metrics_listen)
        except BaseException:
            await server.stop(0)
            await self._release()
            raise
        self.port = port
        self._sweeper = asyncio.create_task(self._sweep_expired())
        await self._health.set_serving(True)
        log.info(
            "relay serving on port %d (%s); store: %s", port, "TLS" if credentials else "plain text, loopback only",
            config.store.shown,
        )
        return port

    async def _sweep_expired(self) -> None:
        while True:
            try:
                await self.service.delete_expired()
            except Exception:  # noqa: BLE001 - the sweep must outlive a failed round
                log.exception("deleting expired messages failed; will retry")
            await asyncio.sleep(self.config.mailbox.expiry_sweep_seconds)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, end subscriptions, drain, and close the store."""
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        if self._health is not None:
            await self._health.shutdown()
        if self._server is not None:
            stopping = asyncio.ensure_future(self._server.stop(grace))
            # Subscribe streams never end by themselves: end them now so the grace period
            # drains only the unary calls.
            if self.service is not None:
                self.service.end_subscriptions()
            await stopping
        await self._release()
        log.info("relay stopped")

    async def _release(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.metrics.stop_http()
        if self.service is not None:
            await self.service.close()
        if self.store is not None:
            self.store.close()
