"""The grpc.aio server skeleton every keyrelay daemon uses.

- `ErrorMappingInterceptor` turns `KeyrelayError` into its status code, message and
  `keyrelay-error-reason` trailer, answers anything else `INTERNAL` without details (logging it
  with the request id), and gives every call a request id (the client's `x-request-id`, or a new
  one) that is echoed in the trailers and tagged on every log line of the call.
- `Health` wraps the standard `grpc.health.v1` servicer.
- `add_reflection` serves server reflection for the given services.
- `wait_for_termination_signal` resolves on SIGTERM or SIGINT so `__main__` can drain and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from typing import Any, Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from foundation.errors import REASON_METADATA_KEY, REQUEST_ID_METADATA_KEY, KeyrelayError
from foundation.logsetup import request_id_var

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


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str):
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        request_id = _request_id(context)
        token = request_id_var.set(request_id)
        try:
            return await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - every error becomes a status here
            await _answer_error(context, exc, method, request_id)
        finally:
            request_id_var.reset(token)

    return wrapped


def _wrap_stream(behavior: Callable[..., Any], method: str):
    async def wrapped(request: Any, context: grpc.aio.ServicerContext):
        request_id = _request_id(context)
        token = request_id_var.set(request_id)
        try:
            async for item in behavior(request, context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _answer_error(context, exc, method, request_id)
        finally:
            request_id_var.reset(token)

    return wrapped


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps the keyrelay exception hierarchy to gRPC statuses and tags calls with request ids."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
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


def new_server(max_message_bytes: int = 8 * 1024 * 1024) -> grpc.aio.Server:
    """A grpc.aio server with the error-mapping interceptor and the given message size limit."""
    return grpc.aio.server(
        interceptors=[ErrorMappingInterceptor()],
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
