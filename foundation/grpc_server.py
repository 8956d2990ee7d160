"""The grpc.aio server skeleton every keyrelay daemon uses.

- `ErrorMappingInterceptor` turns `KeyrelayError` into its status code, message and
  `keyrelay-error-reason` trailer, answers anything else `INTERNAL` without details (logging it
  with the request id), and gives every call a request id (the client's `x-request-id`, or a new
  one) that is echoed in the trailers and tagged on every log line of the call. Given a
  `foundation.metrics.Metrics`, it also counts and times every unary and server-streaming call by
  method name, route (`route_var`, reset to "local" per call) and final status code.
- `Health` wraps the standard `grpc.health.v1` servicer.
- `add_reflection` serves server reflection for the given services.
- `wait_for_termination_signal` resolves on SIGTERM or SIGINT so `__main__` can drain and exit 0;
  `serve_until_terminated` is the whole life of a daemon's server around it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from typing import Any, Awaitable, Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from foundation.errors import REASON_METADATA_KEY, REQUEST_ID_METADATA_KEY, KeyrelayError
from foundation.logsetup import request_id_var
from foundation.metrics import Metrics, operation_var, route_var

log = logging.getLogger(__name__)

_MAX_REQUEST_ID = 128


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            if value.isprintable():
                return value
    return uuid.uuid4().hex


async def _answer_error(
    context: grpc.aio.ServicerContext, exc: BaseException, method: str, request_id: str
) -> None:
    if isinstance(exc, KeyrelayError):
        context.set_trailing_metadata(
            ((REASON_METADATA_KEY, exc.reason), (REQUEST_ID_METADATA_KEY, request_id))
        )
        await context.abort(exc.code, exc.message)
    log.error("unexpected error in %s", method, exc_info=exc)
    context.set_trailing_metadata(
        ((REASON_METADATA_KEY, "INTERNAL"), (REQUEST_ID_METADATA_KEY, request_id))
    )
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error; the server log has details under request id {request_id}"
    )


def _needs_answer(exc: BaseException | None) -> bool:
    """True for an error the interceptor must turn into a status: not an abort, not a cancellation."""
    return isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError)


class _Call:
    """What every intercepted call shares: its request id (tagged on log lines), its route (reset to
    "local"), the mapping of errors to statuses, and one request metric when it ends."""

    __slots__ = ("_context", "_method", "_metrics", "_request_id", "_tokens", "_started")

    def __init__(self, context: grpc.aio.ServicerContext, method: str, metrics: Metrics | None) -> None:
        self._context = context
        self._method = method
        self._metrics = metrics

    async def __aenter__(self) -> None:
        self._request_id = _request_id(self._context)
        self._tokens = (
            request_id_var.set(self._request_id),
            route_var.set("local"),
            operation_var.set(self._method.rpartition("/")[2]),
        )
        self._started = time.perf_counter()

    def _final_code(self, exc: BaseException | None) -> str:
        if isinstance(exc, KeyrelayError):
            return exc.code.name
        if _needs_answer(exc):
            return "INTERNAL"
        # A handler's own set_code or abort, else how the call ended.
        code = self._context.code()
        if isinstance(code, grpc.StatusCode):
            return code.name
        if exc is None:
            return "OK"
        return "UNKNOWN" if isinstance(exc, grpc.aio.AbortError) else "CANCELLED"

    async def __aexit__(self, exc_type, exc: BaseException | None, tb) -> None:
        code = self._final_code(exc) if self._metrics is not None else ""
        try:
            if _needs_answer(exc):
                await _answer_error(self._context, exc, self._method, self._request_id)  # raises AbortError
        finally:
            if self._metrics is not None:
                operation = self._method.rpartition("/")[2]
                self._metrics.observe_request(operation, route_var.get(), code, time.perf_counter() - self._started)
            operation_var.reset(self._tokens[2])
            route_var.reset(self._tokens[1])
            request_id_var.reset(self._tokens[0])


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str, metrics: Metrics | None):
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _Call(context, method, metrics):
            return await behavior(request, context)

    return wrapped


def _wrap_stream(behavior: Callable[..., Any], method: str, metrics: Metrics | None):
    async def wrapped(request: Any, context: grpc.aio.ServicerContext):
        async with _Call(context, method, metrics):
            async for item in behavior(request, context):
                yield item

    return wrapped


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps the keyrelay exception hierarchy to gRPC statuses and tags calls with request ids;
    with `metrics`, also counts and times every unary and server-streaming call."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, self._metrics),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, self._metrics),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class Health:
    """The standard health service; every named service and the overall status move together."""

    def __init__(self, server: grpc.aio.Server, services: Iterable[str]) -> None:
        self._servicer = HealthServicer()
        self._services = ["", *services]
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def set_serving(self, serving: bool) -> None:
        """Mark every service SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._services:
            await self._servicer.set(name, status)

    async def shutdown(self) -> None:
        """Answer NOT_SERVING from now on, so balancers stop sending work."""
        await self._servicer.enter_graceful_shutdown()


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve server reflection for the named services, health and reflection itself."""
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)


def bind_port(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None, what: str) -> int:
    """Bind `listen` (TLS with `credentials`, else plain text) and return the port; raise OSError
    naming the address and `what` it is for (e.g. "zone public") when it cannot be bound."""
    try:
        port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    except RuntimeError:  # grpc's way of saying the bind failed
        port = 0
    if port == 0:
        raise OSError(
            f"cannot listen on {listen} ({what}): the port is in use or the address is not this host's; "
            "stop the other process or choose another address"
        )
    return port


def new_server(
    max_message_bytes: int = 8 * 1024 * 1024,
    *,
    metrics: Metrics | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """A grpc.aio server with the error-mapping interceptor (recording into `metrics` when given)
    and the given message size limit. `interceptors` run inside it, so the keyrelay errors they
    raise are answered as statuses."""
    return grpc.aio.server(
        interceptors=[ErrorMappingInterceptor(metrics), *interceptors],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )


async def wait_for_termination_signal() -> signal.Signals:
    """Resolve with the signal when SIGTERM or SIGINT arrives."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: received.done() or received.set_result(s))
    try:
        return await received
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve_until_terminated(
    server: Any, name: str, logger: logging.Logger, startup_errors: tuple[type[BaseException], ...]
) -> int:
    """Start `server` (anything with async `start()` and `stop()`), serve until SIGTERM or SIGINT,
    then drain and stop it. Returns the daemon's exit status: 0, or 2 when start-up failed with one
    of `startup_errors` (logged as one line on `logger`, naming the daemon)."""
    try:
        await server.start()
    except startup_errors as exc:
        logger.error("%s cannot start: %s", name, exc)
        return 2
    signum = await wait_for_termination_signal()
    logger.info("received %s: draining in-flight calls", signum.name)
    await server.stop()
    return 0
