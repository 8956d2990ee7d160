"""Calling a role's replicas: balanced, health-checked, retried elsewhere on UNAVAILABLE.

A `ReplicaSet` holds one channel per replica of a role (the shared KMS pool, a dedicated
instance). Calls go round-robin over the replicas that passed their last health check. A call
that meets UNAVAILABLE marks its replica down and, when it is safe, is tried on the next replica
within the caller's deadline:

- idempotent calls (reads, cryptography, state setters) are always retried;
- other calls are retried only when the replica refused the connection, so the request was
  never delivered.

A background task asks every replica for `grpc.health.v1` status every few seconds and brings
recovered replicas back. The deadline each call is given is what remains of the caller's, so it
propagates to the node.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from foundation.errors import REASON_METADATA_KEY, REQUEST_ID_METADATA_KEY, KeyrelayError, UnavailableError, from_status

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = (
    # Come back quickly after a replica restarts instead of grpc's default backoff of up to 2 min.
    ("grpc.initial_reconnect_backoff_ms", 300),
    ("grpc.min_reconnect_backoff_ms", 300),
    ("grpc.max_reconnect_backoff_ms", 3000),
    ("grpc.keepalive_time_ms", 30000),
)
_NOT_DELIVERED = ("failed to connect", "connection refused", "connect failed", "no route to host")
# How long a call waits for a replica to reconnect when every one refused it: the longest
# reconnect backoff above, and a little; and how long before the caller's deadline it answers.
RECONNECT_WAIT = 3.5
ANSWER_MARGIN = 0.5


def _not_delivered(exc: grpc.aio.AioRpcError) -> bool:
    """The call failed before reaching the replica (the connection was refused or not made)."""
    return any(marker in (exc.details() or "").lower() for marker in _NOT_DELIVERED)


def error_from_upstream(exc: grpc.aio.AioRpcError) -> KeyrelayError:
    """The keyrelay error an upstream's failed call stands for, with its message and reason."""
    trailers = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}
    return from_status(
        exc.code(), exc.details() or exc.code().name, trailers.get(REASON_METADATA_KEY), trailers.get(REQUEST_ID_METADATA_KEY)
    )


@dataclass
class Replica:
    """One replica: its endpoint, channel and last known health."""

    endpoint: str
    channel: grpc.aio.Channel
    healthy: bool = True
    _callables: dict[str, Any] = field(default_factory=dict)

    def method(self, path: str, response_type: Any):
        """The cached unary-unary callable for `path`."""
        callable_ = self._callables.get(path)
        if callable_ is None:
            callable_ = self.channel.unary_unary(
                path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_type.FromString
            )
            self._callables[path] = callable_
        return callable_


class ReplicaSet:
    """Replicas of one role, called with balancing, health checks and safe retries.

    Args:
        name: the role, as it appears in logs, metrics and errors (e.g. ``shared``, ``instance:hr``).
        endpoints: host:port of each replica.
        credentials: channel credentials (mutual TLS), or None for plain text (development).
        health_interval: seconds between health checks.
        on_retry: called with the role name whenever a call is retried on another replica.
    """

    def __init__(
        self,
        name: str,
        endpoints: Sequence[str],
        credentials: grpc.ChannelCredentials | None,
        *,
        health_interval: float = 2.0,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError(f"{name}: no replica endpoints")
        self.name = name
        self.endpoints = tuple(endpoints)
        self.replicas = [
            Replica(
                endpoint,
                grpc.aio.secure_channel(endpoint, credentials, options=_CHANNEL_OPTIONS)
                if credentials is not None
                else grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS),
            )
            for endpoint in endpoints
        ]
        self._next = itertools.count()
        self._health_interval = health_interval
        self._on_retry = on_retry
        self._health_task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the background health checks."""
        if self._health_task is None:
            self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        """Stop health checks and close every channel."""
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        await asyncio.gather(*(r.channel.close() for r in self.replicas), return_exceptions=True)

    async def check_health(self) -> None:
        """Ask every replica for its health now."""
        await asyncio.gather(*(self._check(r) for r in self.replicas))

    async def _check(self, replica: Replica) -> None:
        stub = health_pb2_grpc.HealthStub(replica.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=max(0.5, min(self._health_interval, 3.0)))
            healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            healthy = False
        if healthy != replica.healthy:
            log.warning("%s replica %s is %s", self.name, replica.endpoint, "back in service" if healthy else "down")
        replica.healthy = healthy

    async def _health_loop(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self._health_interval)

    def _order(self) -> list[Replica]:
        start = next(self._next) % len(self.replicas)
        rotated = self.replicas[start:] + self.replicas[:start]
        # Healthy replicas first; the others still get a chance when every healthy one fails.
        return [r for r in rotated if r.healthy] + [r for r in rotated if not r.healthy]

    async def call(
        self,
        path: str,
        request: Any,
        response_type: Any,
        *,
        metadata: Sequence[tuple[str, str]],
        timeout: float,
        idempotent: bool,
    ) -> Any:
        """Call `path` on a replica; raise the upstream's own KeyrelayError, or UnavailableError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: grpc.aio.AioRpcError | None = None
        for pass_ in range(2):
            for attempt, replica in enumerate(self._order()):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if (attempt or pass_) and self._on_retry is not None:
                    self._on_retry(self.name)
                try:
                    return await replica.method(path, response_type)(request, metadata=metadata, timeout=remaining)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise error_from_upstream(exc) from None
                    last = exc
                    replica.healthy = False
                    if not idempotent and not _not_delivered(exc):
                        error = UnavailableError(
                            f"the {self.name} KMS replica {replica.endpoint} failed during the call, which is not "
                            "safe to repeat automatically; check the outcome (e.g. DescribeKey) before retrying"
                        )
                        error.maybe_delivered = True
                        raise error from None
                    log.warning(
                        "%s replica %s unavailable (%s); trying another", self.name, replica.endpoint, exc.details()
                    )
            # Every replica refused the connection: one may be restarting, its channel waiting out a
            # reconnect backoff. Give them that long to come back (nothing was delivered, so trying
            # again is safe for any call), but answer before the caller's deadline.
            wait = min(RECONNECT_WAIT, deadline - loop.time() - ANSWER_MARGIN)
            if pass_ or last is None or not _not_delivered(last) or not await self._any_ready(wait):
                break
        if last is not None and dict(last.trailing_metadata() or ()).get(REASON_METADATA_KEY):
            raise error_from_upstream(last)
        error = UnavailableError(
            f"no replica of the {self.name} KMS ({', '.join(self.endpoints)}) answered in time; retry shortly"
        )
        # True when some replica may have received the request before failing.
        error.maybe_delivered = last is None or not _not_delivered(last)
        raise error

    async def _any_ready(self, timeout: float) -> bool:
        """Whether some replica's channel connects within `timeout` seconds."""
        if timeout <= 0:
            return False
        waits = [asyncio.ensure_future(r.channel.channel_ready()) for r in self.replicas]
        done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for wait in pending:
            wait.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return bool(done)
