"""Two relays in process (loopback, port 0) on one PostgreSQL schema: a message sent through one
reaches a subscriber of the other exactly once and promptly (woken by LISTEN/NOTIFY, not by the
30 s re-check), also after the LISTEN connection was terminated."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid

import grpc
import psycopg

from keyrelay.v1 import relay_pb2, relay_pb2_grpc
from relay.config import RateLimitConfig, RelayConfig, StoreConfig
from relay.server import RelayServer
from relay.service import IDLE_RECHECK_SECONDS

log = logging.getLogger(__name__)

MESSAGES = 200
#: Sends in flight at once through relay A (its group commit batches them).
IN_FLIGHT = 8
#: Well below IDLE_RECHECK_SECONDS, generous for a loaded 2-core machine.
PROMPT_P99_SECONDS = 1.0


class Replica:
    """A running relay and a stub on a channel to it."""

    def __init__(self, server: RelayServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.channel = channel
        self.stub = relay_pb2_grpc.RelayServiceStub(channel)

    @classmethod
    async def start(cls, dsn: str) -> "Replica":
        config = RelayConfig(
            listen="127.0.0.1:0",
            shutdown_grace_seconds=1,
            store=StoreConfig(path="", dsn=dsn),
            rate_limit=RateLimitConfig(requests_per_second=0, account_creations_per_minute=0),
        )
        server = RelayServer(config)
        port = await server.start()
        return cls(server, grpc.aio.insecure_channel(f"127.0.0.1:{port}"))

    async def account(self, user_id: str) -> str:
        return (await self.stub.CreateAccount(relay_pb2.CreateAccountRequest(user_id=user_id))).device_token

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(0)


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Inbox:
    """A Subscribe stream read in the background: when each client message id arrived."""

    def __init__(self, stub: relay_pb2_grpc.RelayServiceStub, token: str) -> None:
        self.call = stub.Subscribe(relay_pb2.SubscribeRequest(), metadata=auth(token))
        self.arrivals: list[tuple[str, float]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for item in self.call:
            self.arrivals.append((item.message.client_message_id, time.monotonic()))
            self._changed.set()

    async def wait_for(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.arrivals) < count:
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def send_all(stub, token: str, ids: list[str]) -> dict[str, float]:
    """Send one message per client id through `stub`, IN_FLIGHT at a time; when each send began."""
    started: dict[str, float] = {}
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def send(client_id: str) -> None:
        async with gate:
            started[client_id] = time.monotonic()
            await stub.Send(
                relay_pb2.SendRequest(recipient_user_id="bob", envelope=b"sealed:" + client_id.encode(),
                                      client_message_id=client_id),
                metadata=auth(token),
            )

    await asyncio.gather(*(send(i) for i in ids))
    return started


async def subscribed(replica: Replica, count: int = 1) -> None:
    async with asyncio.timeout(10):
        while replica.server.service.signals.subscriber_count < count:
            await asyncio.sleep(0.01)


def listener_pids(dsn: str, application_name: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s "
            "AND query ILIKE 'LISTEN%%'",
            (application_name,),
        ).fetchall()
    return [pid for (pid,) in rows]


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]


def latency_summary(latencies: list[float]) -> str:
    return (
        f"{len(latencies)} messages: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {p99(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )


async def test_messages_sent_through_one_relay_reach_a_subscriber_of_another(postgres_dsn):
    assert PROMPT_P99_SECONDS * 10 < IDLE_RECHECK_SECONDS
    name_b = f"relay-b-{uuid.uuid4().hex[:8]}"
    relay_a = await Replica.start(postgres_dsn)
    relay_b = await Replica.start(f"{postgres_dsn}&application_name={name_b}")
    inbox = None
    try:
        alice = await relay_a.account("alice")
        bob = await relay_b.account("bob")  # accounts are shared: created on B, known on A
        inbox = Inbox(relay_b.stub, bob)
        await subscribed(relay_b)

        # 1. N messages through A, concurrently: each arrives on B exactly once, promptly.
        ids = [f"m-{i}" for i in range(MESSAGES)]
        started = await send_all(relay_a.stub, alice, ids)
        await inbox.wait_for(MESSAGES, timeout=20)
        received = [client_id for client_id, _ in inbox.arrivals]
        assert sorted(received) == sorted(ids)  # every one, none twice
        latencies = [at - started[client_id] for client_id, at in inbox.arrivals]
        log.warning("across relays: %s", latency_summary(latencies))
        assert p99(latencies) < PROMPT_P99_SECONDS, latency_summary(latencies)

        # 2. B's LISTEN connection is terminated; a message sent right away (while it is down, so
        # its notification may be lost) arrives through the reconnect's wake-up, and later
        # messages through notifications again.
        (old_pid,) = listener_pids(postgres_dsn, name_b)
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,)).fetchone() == (True,)
        lost = await send_all(relay_a.stub, alice, ["while-down"])
        await inbox.wait_for(MESSAGES + 1, timeout=10)
        assert inbox.arrivals[-1][0] == "while-down"
        assert inbox.arrivals[-1][1] - lost["while-down"] < 5
        async with asyncio.timeout(10):
            while not (pids := listener_pids(postgres_dsn, name_b)) or pids == [old_pid]:
                await asyncio.sleep(0.05)

        more = [f"after-{i}" for i in range(20)]
        started = await send_all(relay_a.stub, alice, more)
        await inbox.wait_for(MESSAGES + 1 + len(more), timeout=10)
        after = inbox.arrivals[MESSAGES + 1 :]
        assert sorted(client_id for client_id, _ in after) == sorted(more)
        latencies = [at - started[client_id] for client_id, at in after]
        log.warning("after reconnecting: %s", latency_summary(latencies))
        assert max(latencies) < PROMPT_P99_SECONDS * 2, latency_summary(latencies)
        assert len(inbox.arrivals) == MESSAGES + 1 + len(more)  # nothing delivered twice
    finally:
        if inbox is not None:
            await inbox.close()
        await relay_b.stop()
        await relay_a.stop()


async def test_a_subscriber_on_the_sending_relay_is_woken_too(postgres_dsn):
    """Subscribers of one mailbox on both relays each get a message sent through either."""
    relay_a = await Replica.start(postgres_dsn)
    relay_b = await Replica.start(postgres_dsn)
    inboxes = []
    try:
        alice = await relay_a.account("alice")
        bob = await relay_a.account("bob")
        inboxes = [Inbox(relay_a.stub, bob), Inbox(relay_b.stub, bob)]
        await subscribed(relay_a)
        await subscribed(relay_b)
        await send_all(relay_a.stub, alice, ["via-a"])
        await send_all(relay_b.stub, alice, ["via-b"])
        for inbox in inboxes:
            await inbox.wait_for(2, timeout=5)
            assert sorted(client_id for client_id, _ in inbox.arrivals) == ["via-a", "via-b"]
    finally:
        for inbox in inboxes:
            await inbox.close()
        await relay_b.stop()
        await relay_a.stop()
