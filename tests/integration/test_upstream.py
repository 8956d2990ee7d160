"""`ReplicaSet` against real grpc.aio servers on loopback: balancing, failover, deadlines, health."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from foundation.errors import KeyNotFoundError, UnavailableError
from foundation.grpc_server import Health, new_server
from foundation.upstream import ReplicaSet
from kms_node.devsetup import free_port

# The health request and reply stand in for any unary message here.
PATH = "/test.Echo/Deadline"


class Replica:
    """A server answering PATH with its own name and the deadline it was given."""

    def __init__(self, name: str, *, fail_with: Exception | None = None) -> None:
        self.name = name
        self.fail_with = fail_with
        self.calls = 0
        self.deadlines: list[float | None] = []
        self.server = None
        self.port = free_port()

    async def handle(self, request, context):
        self.calls += 1
        self.deadlines.append(context.time_remaining())
        if self.fail_with is not None:
            raise self.fail_with
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def start(self) -> "Replica":
        self.server = new_server()
        handler = grpc.unary_unary_rpc_method_handler(
            self.handle,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Deadline": handler}),))
        Health(self.server, [])
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop(0)


async def _call(replicas: ReplicaSet, *, timeout: float = 5.0, idempotent: bool = True):
    return await replicas.call(
        PATH, health_pb2.HealthCheckRequest(), health_pb2.HealthCheckResponse,
        metadata=[("x-request-id", "t")], timeout=timeout, idempotent=idempotent,
    )


async def test_calls_are_balanced_and_carry_the_callers_deadline():
    a, b = await Replica("a").start(), await Replica("b").start()
    replicas = ReplicaSet("shared", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], None)
    try:
        for _ in range(10):
            await _call(replicas, timeout=4.0)
        assert a.calls == 5 and b.calls == 5
        # grpc rounds deadlines on the wire up to a few tens of milliseconds.
        assert all(d is not None and 0 < d <= 4.1 for d in a.deadlines + b.deadlines), a.deadlines
    finally:
        await replicas.close()
        await a.stop()
        await b.stop()


async def test_a_dead_replica_is_skipped_and_marked_down():
    a = await Replica("a").start()
    dead = free_port()  # nothing listens here
    retries: list[str] = []
    replicas = ReplicaSet("shared", [f"127.0.0.1:{dead}", f"127.0.0.1:{a.port}"], None, on_retry=retries.append)
    try:
        for _ in range(6):
            await _call(replicas, idempotent=False)  # refused connections are safe to retry even so
        assert a.calls == 6
        assert not replicas.replicas[0].healthy and replicas.replicas[1].healthy
        assert retries == ["shared"]  # once marked down, the dead replica is tried last, not first
    finally:
        await replicas.close()
        await a.stop()


async def test_application_errors_are_not_retried_and_keep_their_class():
    a = await Replica("a", fail_with=KeyNotFoundError("no key k in tenant t")).start()
    b = await Replica("b", fail_with=KeyNotFoundError("no key k in tenant t")).start()
    replicas = ReplicaSet("shared", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], None)
    try:
        with pytest.raises(KeyNotFoundError, match="no key k"):
            await _call(replicas)
        assert a.calls + b.calls == 1
    finally:
        await replicas.close()
        await a.stop()
        await b.stop()


async def test_no_replica_left_is_unavailable_and_says_which():
    replicas = ReplicaSet("instance:hr", [f"127.0.0.1:{free_port()}"], None)
    try:
        with pytest.raises(UnavailableError, match="instance:hr") as failed:
            await _call(replicas, timeout=3.0)
        assert failed.value.maybe_delivered is False
    finally:
        await replicas.close()


async def test_health_checks_bring_a_replica_back():
    a = await Replica("a").start()
    replicas = ReplicaSet("shared", [f"127.0.0.1:{a.port}"], None, health_interval=0.2)
    try:
        replicas.replicas[0].healthy = False
        replicas.start()
        for _ in range(100):
            if replicas.replicas[0].healthy:
                break
            await asyncio.sleep(0.1)
        assert replicas.replicas[0].healthy
    finally:
        await replicas.close()
        await a.stop()


async def test_a_restarted_replica_is_used_at_once_even_while_its_channel_backs_off():
    """The only replica restarts: its channel is still waiting out a reconnect backoff from the
    outage, so a call made right away would be refused. The call waits for the reconnection
    instead (nothing was delivered, so even CreateKey may), and the answer is UNAVAILABLE only
    when no replica comes back in time."""
    a = await Replica("a").start()
    replicas = ReplicaSet("instance:hr", [f"127.0.0.1:{a.port}"], None)
    try:
        await _call(replicas)
        await a.stop()
        for _ in range(4):  # refused connections grow the channel's backoff
            with pytest.raises(UnavailableError):
                await _call(replicas, timeout=1.0)
        await a.start()
        reply = await _call(replicas, timeout=10.0, idempotent=False)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING and a.calls == 2
    finally:
        await replicas.close()
        await a.stop()
