"""The grpc.aio server skeleton every keyrelay daemon uses.

- `ErrorMappingInterceptor` decodes every request body itself (`foundation.request_decoding`),
  so one that does not parse is answered INVALID_ARGUMENT `MALFORMED_REQUEST` like any bad
  request, and a method the server lacks UNIMPLEMENTED `UNKNOWN_METHOD`; both are logged as one
  rate-limited WARNING line (`RefusalLog`) and handed to the daemon's `refuse` hook, which audits
  them where the daemon audits. It holds large bodies against the server's `RequestBudget`,
  turns `KeyrelayError` into its status code, message (cut to `MAX_STATUS_MESSAGE`) and
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
import collections
import contextlib
import logging
import signal
import time
import traceback
import uuid
from typing import Any, Awaitable, Callable, Iterable, Sequence

import grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from foundation.errors import (
    REASON_METADATA_KEY,
    REQUEST_ID_METADATA_KEY,
    KeyrelayError,
    MalformedRequestError,
    UnknownMethodError,
    quote,
)
from foundation.logsetup import request_id_var
from foundation.metrics import Metrics, operation_var, route_var
from foundation.request_decoding import RequestDecoder

log = logging.getLogger(__name__)

_MAX_REQUEST_ID = 128
#: The longest status message sent, in bytes of UTF-8: even percent-encoded (three bytes for each
#: byte of non-ASCII text) far below gRPC's metadata limits (8 KiB soft), so no transport limit
#: ever replaces a status with its own.
MAX_STATUS_MESSAGE = 1024
#: The operation label of calls to a method the server does not have (never the caller's path,
#: which would let callers create metric series).
UNKNOWN_OPERATION = "unknown"

#: `refuse(context, operation, error)`: answer `error` for a request refused before its handler
#: ran (a body that does not parse, a method that does not exist) the way the daemon answers any
#: other refusal, e.g. authenticated and audited; it raises `error` (or the caller's own).
Refuse = Callable[[grpc.aio.ServicerContext, str, KeyrelayError], Awaitable[None]]


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            if value.isprintable():
                return value
    return uuid.uuid4().hex


def _status_message(message: str) -> str:
    """`message` cut to MAX_STATUS_MESSAGE bytes of UTF-8 (on a character boundary)."""
    encoded = message.encode()
    if len(encoded) <= MAX_STATUS_MESSAGE:
        return message
    return encoded[: MAX_STATUS_MESSAGE - 3].decode(errors="ignore") + "…"


def _clear_frames(exc: BaseException) -> None:
    """Clear the locals of every finished frame in the tracebacks of `exc` and the errors it was
    raised from or while handling (an upstream's failed call, holding the forwarded request)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


async def _answer_error(
    context: grpc.aio.ServicerContext, exc: BaseException, method: str, request_id: str
) -> None:
    """Abort the call with `exc` as its status. The frames of `exc`'s traceback are cleared first
    (after logging): grpc keeps the abort in a reference cycle with the traceback, which would
    otherwise hold every request and local of the failed call until a full garbage collection;
    under a flood of large refused requests that is hundreds of megabytes."""
    if isinstance(exc, KeyrelayError):
        _clear_frames(exc)
        trailers = [(REQUEST_ID_METADATA_KEY, request_id)]
        if exc.reason != "UNSPECIFIED":
            trailers.append((REASON_METADATA_KEY, exc.reason))
        context.set_trailing_metadata(tuple(trailers))
        await context.abort(exc.code, _status_message(exc.message))
    log.error("unexpected error in %s", method, exc_info=exc)
    _clear_frames(exc)
    context.set_trailing_metadata(
        ((REASON_METADATA_KEY, "INTERNAL"), (REQUEST_ID_METADATA_KEY, request_id))
    )
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error; the server log has details under request id {request_id}"
    )


def _needs_answer(exc: BaseException | None) -> bool:
    """True for an error the interceptor must turn into a status: not an abort, not a cancellation."""
    return isinstance(exc, Exception) and not isinstance(exc, grpc.aio.AbortError)


class RefusalLog:
    """One WARNING line per `interval` seconds about requests refused before their handler ran,
    counting the ones it did not print, so a flood of bad bodies cannot flood the log."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._next = 0.0
        self._quiet = 0

    def note(self, operation: str, error: KeyrelayError) -> None:
        now = time.monotonic()
        if now < self._next:
            self._quiet += 1
            return
        more = f" ({self._quiet} more such requests since the last line)" if self._quiet else ""
        log.warning("refused a request to %s: %s: %s%s", operation, error.reason, error.message[:200], more)
        self._next, self._quiet = now + self._interval, 0


class RequestBudget:
    """The large request bodies a server works on at once. A call whose body is over
    `SMALL_BODY_BYTES` waits its turn (first come, first served) before the body is parsed and
    keeps its share until the call ends, so a flood of maximum-size bodies queues instead of
    being parsed, copied and forwarded all at once. Smaller bodies, which is every ordinary
    request, never wait: a tenant flooding large requests delays only other large requests. A
    body alone always gets in, whatever its size."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit_bytes

    async def acquire(self, size: int) -> None:
        if not self._waiting and self._fits(size):
            self.used += size
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((size, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(size)  # admitted as it was cancelled: hand the share on
            else:
                with contextlib.suppress(ValueError):  # `_admit` may have dropped it already
                    self._waiting.remove((size, turn))
                self._admit()
            raise

    def release(self, size: int) -> None:
        self.used -= size
        self._admit()

    def _admit(self) -> None:
        while self._waiting:
            size, turn = self._waiting[0]
            if turn.done():  # its caller was cancelled
                self._waiting.popleft()
            elif self._fits(size):
                self._waiting.popleft()
                self.used += size
                turn.set_result(None)
            else:
                return


class _Call:
    """What every intercepted call shares: its request id (tagged on log lines), its route (reset to
    "local"), the mapping of errors to statuses, and one request metric when it ends.

    Context variables are set and never reset: grpc.aio runs each call in a task of its own, so
    they die with it, and a stream's generator may be finalised in another context, where a reset
    would fail."""

    __slots__ = ("_context", "_method", "_operation", "_metrics", "_request_id", "_started")

    def __init__(
        self, context: grpc.aio.ServicerContext, method: str, metrics: Metrics | None, operation: str | None = None
    ) -> None:
        self._context = context
        self._method = method
        self._operation = operation or method.rpartition("/")[2]
        self._metrics = metrics

    async def __aenter__(self) -> None:
        self._request_id = _request_id(self._context)
        request_id_var.set(self._request_id)
        route_var.set("local")
        operation_var.set(self._operation)
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
                self._metrics.observe_request(self._operation, route_var.get(), code, time.perf_counter() - self._started)


class _Entry:
    """How one server turns bytes into a request before the handler runs: decoding, the
    in-flight budget, and the refusal of what does not decode."""

    def __init__(self, metrics: Metrics | None, refuse: Refuse | None, budget: RequestBudget | None) -> None:
        self.metrics = metrics
        self.refuse = refuse
        self.budget = budget
        self.refusals = RefusalLog()

    async def refused(self, context: grpc.aio.ServicerContext, operation: str, error: KeyrelayError) -> None:
        """Answer `error` for a request refused before its handler ran: logged (rate-limited), and
        handed to the daemon's `refuse` (which audits it) when it has one. Always raises."""
        self.refusals.note(operation, error)
        if self.metrics is not None:
            self.metrics.refused_request(error.reason)
        if self.refuse is not None:
            await self.refuse(context, operation, error)
        raise error

    async def decode(self, decoder: RequestDecoder | None, body: Any, context, operation: str) -> Any:
        """The request `body` holds; MalformedRequestError (through `refused`) when it holds none."""
        if decoder is None:
            return body
        try:
            return decoder.decode(body)
        except MalformedRequestError as exc:
            error = exc
        # Refused outside the except block, so the refusal is not chained to the parse.
        await self.refused(context, operation, error)

    def share(self, decoder: RequestDecoder | None, body: Any) -> int:
        """The budget share a call with `body` takes (0: none)."""
        if self.budget is None or decoder is None or len(body) <= SMALL_BODY_BYTES:
            return 0
        return len(body)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str, entry: _Entry, decoder: RequestDecoder | None):
    operation = method.rpartition("/")[2]

    async def serve(body: Any, context: grpc.aio.ServicerContext) -> Any:
        share = entry.share(decoder, body)
        if not share:
            return await behavior(await entry.decode(decoder, body, context, operation), context)
        await entry.budget.acquire(share)
        try:
            request = await entry.decode(decoder, body, context, operation)
            del body  # the message holds what is needed
            return await behavior(request, context)
        finally:
            entry.budget.release(share)

    async def wrapped(body: Any, context: grpc.aio.ServicerContext) -> Any:
        # Only `serve`'s frame holds the body and the request: `_Call` clears it when the call
        # fails, so an error's traceback (which grpc keeps in a reference cycle) keeps neither.
        work = serve(body, context)
        del body
        async with _Call(context, method, entry.metrics):
            return await work

    return wrapped


#: What grpc raises when a write cannot be sent because the stream is gone (the client cancelled
#: or disconnected). grpc names no public class for it.
_STREAM_GONE = cygrpc.ExecuteBatchError


def _wrap_stream(behavior: Callable[..., Any], method: str, entry: _Entry, decoder: RequestDecoder | None):
    operation = method.rpartition("/")[2]

    async def wrapped(body: Any, context: grpc.aio.ServicerContext) -> None:
        async with _Call(context, method, entry.metrics):
            # A stream holds its share only while its request is parsed: it may stay open for
            # hours with nothing in flight.
            share = entry.share(decoder, body)
            if share:
                await entry.budget.acquire(share)
            try:
                request = await entry.decode(decoder, body, context, operation)
            finally:
                if share:
                    entry.budget.release(share)
            del body
            result = behavior(request, context)
            if not hasattr(result, "__aiter__"):  # a handler that writes for itself (health's Watch)
                await result
                return
            # The handler's items are written here rather than yielded to grpc: a client that
            # leaves mid-stream then ends the call quietly (grpc logs a failed write of a yielded
            # item as an error), and the handler's generator is closed in this call's own task
            # and context, not by a finaliser somewhere else.
            async with contextlib.aclosing(result) as items:
                async for item in items:
                    try:
                        await context.write(item)
                    except _STREAM_GONE:
                        log.debug("the client of %s left mid-stream", method)
                        return

    return wrapped


def _unknown_method(method: str, entry: _Entry):
    async def refuse(body: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _Call(context, method, entry.metrics, UNKNOWN_OPERATION):
            await entry.refused(
                context,
                UNKNOWN_OPERATION,
                UnknownMethodError(
                    f"this server has no method {quote(method)}; check the service and method name against the "
                    "server's reflection, or upgrade the server"
                ),
            )

    return grpc.unary_unary_rpc_method_handler(refuse)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """The per-call envelope of every keyrelay server.

    It decodes each request itself (grpc gets no deserializer), so a body that does not parse is
    `MalformedRequestError` like any bad request; holds large bodies against the server's
    `RequestBudget`; maps the keyrelay exception hierarchy to gRPC statuses and tags calls
    with request ids; with `metrics`, counts and times every unary and server-streaming call; and
    answers a method the server does not have with `UnknownMethodError`. Requests refused before
    their handler ran go to `refuse` when given (where the daemon audits them)."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        refuse: Refuse | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        self._entry = _Entry(metrics, refuse, budget)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return _unknown_method(method, self._entry)
        decoder = RequestDecoder.for_deserializer(handler.request_deserializer)
        deserializer = None if decoder is not None else handler.request_deserializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, self._entry, decoder),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, self._entry, decoder),
                request_deserializer=deserializer,
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


#: How many maximum-size request bodies a server works on at once (see `RequestBudget`).
BUDGET_REQUESTS = 16
#: Bodies up to this size never wait for the budget.
SMALL_BODY_BYTES = 64 * 1024


def new_server(
    max_message_bytes: int = 8 * 1024 * 1024,
    *,
    metrics: Metrics | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    refuse: Refuse | None = None,
    max_send_bytes: int | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server with the skeleton's interceptor (recording into `metrics`, refusing
    undecodable requests through `refuse`), taking request bodies of at most `max_message_bytes`
    (gRPC's transport refuses larger ones before any handler runs) and working on at most
    `BUDGET_REQUESTS` times that many bytes of large bodies at once. `interceptors` run inside it, so the
    keyrelay errors they raise are answered as statuses."""
    budget = RequestBudget(BUDGET_REQUESTS * max_message_bytes)
    return grpc.aio.server(
        interceptors=[ErrorMappingInterceptor(metrics, refuse=refuse, budget=budget), *interceptors],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_send_bytes or max(max_message_bytes, 8 * 1024 * 1024)),
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
