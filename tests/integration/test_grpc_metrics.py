"""A grpc.aio server built by `new_server(metrics=...)` counts every call by method, route and
final status code, and a `Metrics` object serves them over HTTP (loopback, port 0)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from foundation.errors import KeyNotFoundError
from foundation.grpc_server import new_server
from foundation.metrics import Metrics, route_var

SERVICE = "keyrelay.test.Probe"


async def _ok(request: bytes, context) -> bytes:
    return request


async def _routed(request: bytes, context) -> bytes:
    route_var.set("instance:dev-dedicated")
    return request


async def _missing(request: bytes, context) -> bytes:
    raise KeyNotFoundError("no key 'k-1' in tenant acme")


async def _broken(request: bytes, context) -> bytes:
    raise RuntimeError("a bug")


async def _denied(request: bytes, context) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")


async def _stream(request: bytes, context):
    route_var.set("shared")
    for _ in range(3):
        yield request


HANDLERS = {
    "Ok": grpc.unary_unary_rpc_method_handler(_ok),
    "Routed": grpc.unary_unary_rpc_method_handler(_routed),
    "Missing": grpc.unary_unary_rpc_method_handler(_missing),
    "Broken": grpc.unary_unary_rpc_method_handler(_broken),
    "Denied": grpc.unary_unary_rpc_method_handler(_denied),
    "Stream": grpc.unary_stream_rpc_method_handler(_stream),
}


@pytest.fixture
async def served():
    metrics = Metrics("node")
    server = new_server(metrics=metrics)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield metrics, channel
    await channel.close()
    await server.stop(None)


def _requests(metrics: Metrics) -> dict[tuple[str, str, str], float]:
    """keyrelay_requests_total as {(operation, route, code): count}."""
    families = text_string_to_metric_families(metrics.render().decode())
    return {
        (s.labels["operation"], s.labels["route"], s.labels["code"]): s.value
        for family in families if family.name == "keyrelay_requests"
        for s in family.samples if s.name == "keyrelay_requests_total"
    }


async def _call(channel, method: str) -> grpc.StatusCode:
    try:
        await channel.unary_unary(f"/{SERVICE}/{method}")(b"ping", timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_calls_are_counted_with_their_status_and_route(served):
    metrics, channel = served
    assert await _call(channel, "Ok") == grpc.StatusCode.OK
    assert await _call(channel, "Ok") == grpc.StatusCode.OK
    assert await _call(channel, "Missing") == grpc.StatusCode.NOT_FOUND
    assert await _call(channel, "Broken") == grpc.StatusCode.INTERNAL
    assert await _call(channel, "Denied") == grpc.StatusCode.PERMISSION_DENIED
    assert await _call(channel, "Routed") == grpc.StatusCode.OK
    assert await _call(channel, "Ok") == grpc.StatusCode.OK  # the route does not leak into the next call
    replies = [r async for r in channel.unary_stream(f"/{SERVICE}/Stream")(b"ping", timeout=30)]
    assert replies == [b"ping"] * 3

    assert _requests(metrics) == {
        ("Ok", "local", "OK"): 3,
        ("Missing", "local", "NOT_FOUND"): 1,
        ("Broken", "local", "INTERNAL"): 1,
        ("Denied", "local", "PERMISSION_DENIED"): 1,
        ("Routed", "instance:dev-dedicated", "OK"): 1,
        ("Stream", "shared", "OK"): 1,
    }
    rendered = metrics.render().decode()
    assert 'keyrelay_request_seconds_count{component="node",operation="Missing",route="local"} 1.0' in rendered


async def _http_get(port: int, path: str, method: str = "GET") -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return status, headers, body


async def test_http_endpoint_serves_metrics_and_404s_the_rest():
    metrics = Metrics("gateway")
    metrics.cache_miss()
    port = await metrics.start_http("127.0.0.1:0")
    try:
        assert port > 0
        status, headers, body = await _http_get(port, "/metrics")
        assert status == "HTTP/1.1 200 OK"
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert int(headers["Content-Length"]) == len(body)
        assert b'keyrelay_registry_cache_total{result="miss"} 1.0' in body
        status, _, _ = await _http_get(port, "/")
        assert status == "HTTP/1.1 404 Not Found"
        status, _, _ = await _http_get(port, "/metrics", method="POST")
        assert status.startswith("HTTP/1.1 405")
    finally:
        await metrics.stop_http()
    with pytest.raises(OSError):
        await _http_get(port, "/metrics")


async def test_two_endpoints_serve_their_own_metrics():
    gateway, node = Metrics("gateway"), Metrics("node")
    gateway.observe_request("Encrypt", "shared", "OK", 0.001)
    ports = [await gateway.start_http("127.0.0.1:0"), await node.start_http("127.0.0.1:0")]
    try:
        assert ports[0] != ports[1]
        assert b'component="gateway"' in (await _http_get(ports[0], "/metrics"))[2]
        assert b"keyrelay_requests_total{" not in (await _http_get(ports[1], "/metrics"))[2]
    finally:
        await gateway.stop_http()
        await node.stop_http()


async def test_stop_closes_an_idle_connection():
    metrics = Metrics("node")
    port = await metrics.start_http("127.0.0.1:0")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.wait_for(metrics.stop_http(), 30)
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()
