"""Prometheus metrics of one keyrelay server, on a registry of its own.

Several servers may run in one process (the tests do), so nothing here touches prometheus_client's
global registry. `Metrics.start_http` serves `GET /metrics` with a few lines of asyncio, on the
server's own event loop, at an address that may use port 0.

The series::

    keyrelay_requests_total{component, operation, route, code}     counter
    keyrelay_request_seconds{component, operation, route}          histogram, 0.5 ms .. 10 s
    keyrelay_registry_cache_total{result}                          counter, result = hit | miss
    keyrelay_hsm_operation_seconds{operation}                      histogram
    keyrelay_upstream_retries_total{route}                         counter
    keyrelay_relay_messages_total{event}                           counter, event = stored | duplicate |
                                                                   delivered | acked | expired
    keyrelay_relay_subscribers                                     gauge, open Subscribe streams

`route` is "shared", "instance:<id>", "local" or "none": handlers set `route_var` and the server
interceptor (`foundation.grpc_server`) reads it when the call ends. Labels carry names and codes
only, never request data.
"""

from __future__ import annotations

import asyncio
import contextvars

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Where the call being served was routed; set by handlers, reset to "local" for every call.
route_var: contextvars.ContextVar[str] = contextvars.ContextVar("route", default="local")
#: The RPC being served (e.g. "Decrypt"), set by the server interceptor; labels HSM timings.
operation_var: contextvars.ContextVar[str] = contextvars.ContextVar("operation", default="other")

#: The text exposition format `render` produces.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REQUEST_TIMEOUT_SECONDS = 10
_MAX_HEADER_LINES = 100


class Metrics:
    """The metrics of one server (`component` is e.g. "gateway" or "node") and their endpoint."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "keyrelay_requests_total", "RPCs served, by final status code.",
            ["component", "operation", "route", "code"], registry=self.registry,
        )
        self._request_seconds = Histogram(
            "keyrelay_request_seconds", "Time to serve an RPC.",
            ["component", "operation", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self._cache = Counter(
            "keyrelay_registry_cache_total", "Key registry cache lookups.", ["result"], registry=self.registry,
        )
        self._hsm_seconds = Histogram(
            "keyrelay_hsm_operation_seconds", "Time of one HSM operation.",
            ["operation"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self._retries = Counter(
            "keyrelay_upstream_retries_total", "Calls retried on another upstream node.",
            ["route"], registry=self.registry,
        )
        self._relay_messages = Counter(
            "keyrelay_relay_messages_total", "Relay messages by what happened to them.",
            ["event"], registry=self.registry,
        )
        self._subscribers = Gauge(
            "keyrelay_relay_subscribers", "Open Subscribe streams.", registry=self.registry,
        )
        self._refused = Counter(
            "keyrelay_refused_requests_total",
            "Requests refused before a handler ran (a body that does not parse, an unknown method), by reason.",
            ["component", "reason"], registry=self.registry,
        )
        self._cache_hit = self._cache.labels("hit")
        self._cache_miss = self._cache.labels("miss")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    def observe_request(self, operation: str, route: str, code: str, seconds: float) -> None:
        """Count one finished RPC and its duration."""
        self._requests.labels(self.component, operation, route, code).inc()
        self._request_seconds.labels(self.component, operation, route).observe(seconds)

    def refused_request(self, reason: str) -> None:
        """Count one request refused before its handler ran (reason e.g. "MALFORMED_REQUEST")."""
        self._refused.labels(self.component, reason).inc()

    def cache_hit(self) -> None:
        self._cache_hit.inc()

    def cache_miss(self) -> None:
        self._cache_miss.inc()

    def observe_hsm(self, operation: str, seconds: float) -> None:
        """Record the duration of one HSM operation (e.g. "encrypt", "unwrap")."""
        self._hsm_seconds.labels(operation).observe(seconds)

    def upstream_retry(self, route: str) -> None:
        self._retries.labels(route).inc()

    def relay_event(self, event: str, count: int = 1) -> None:
        """Count relay messages that were stored, found duplicate, delivered, acked or expired."""
        if count:
            self._relay_messages.labels(event).inc(count)

    def track_subscribers(self, count: Callable[[], int]) -> None:
        """Report `count()` as the number of open Subscribe streams whenever metrics are read."""
        self._subscribers.set_function(count)

    def render(self) -> bytes:
        """All series in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    async def start_http(self, listen: str) -> int:
        """Serve `GET /metrics` on `host:port` (port 0 picks a free one); return the bound port."""
        if self._server is not None:
            raise RuntimeError("the metrics endpoint is already running")
        host, _, port = listen.rpartition(":")
        self._server = await asyncio.start_server(self._serve, host.strip("[]") or None, int(port))
        return self._server.sockets[0].getsockname()[1]

    async def stop_http(self) -> None:
        """Stop serving and close open connections; harmless when not started."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._connections):
            writer.close()
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            status, body = await asyncio.wait_for(self._answer(reader), _REQUEST_TIMEOUT_SECONDS)
            content_type = CONTENT_TYPE if status.startswith("200") else "text/plain; charset=utf-8"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError):
            pass  # a client that sends nothing useful gets nothing
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, bytes]:
        request_line = (await reader.readline()).decode("latin-1").split()
        for _ in range(_MAX_HEADER_LINES):
            if (await reader.readline()).strip() == b"":
                break
        if len(request_line) != 3:
            return "400 Bad Request", b"bad request\n"
        method, target, _ = request_line
        if method != "GET":
            return "405 Method Not Allowed", b"only GET is served\n"
        if target.partition("?")[0] != "/metrics":
            return "404 Not Found", b"not found; metrics are at /metrics\n"
        return "200 OK", self.render()
