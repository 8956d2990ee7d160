"""In-process stand-ins for a gRPC channel and its failures, for unit tests of the SDK clients: the
generated stubs run on `FakeChannel`, so requests go through the real method paths and protobuf
(de)serialization while handlers answer or raise like a server would. No sockets."""

from __future__ import annotations

import grpc

from foundation.errors import REASON_METADATA_KEY


class FakeRpcError(grpc.RpcError, grpc.Call):
    """A failed call as grpc raises it: code, details and trailing metadata (the reason)."""

    def __init__(self, code: grpc.StatusCode, details: str = "", reason: str | None = None) -> None:
        super().__init__(details)
        self._code, self._details = code, details
        self._trailers = ((REASON_METADATA_KEY, reason),) if reason else ()

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


class FakeChannel:
    """Serves stub calls from `handlers` (method name -> callable(request) returning a response
    or a FakeStream, or raising); records every call as (method, request, timeout, metadata)."""

    def __init__(self) -> None:
        self.handlers: dict[str, object] = {}
        self.calls: list[tuple[str, object, float | None, dict[str, str]]] = []
        self.closed = False

    def _method(self, path, request_serializer, response_deserializer, streaming):
        def invoke(request, timeout=None, metadata=None, **kwargs):
            # Round-trip the request as the wire would, so malformed requests fail here.
            request = type(request).FromString(request_serializer(request))
            self.calls.append((path, request, timeout, dict(metadata or ())))
            result = self.handlers[path](request)
            if streaming:
                return result
            return response_deserializer(result.SerializeToString())

        return invoke

    def unary_unary(self, path, request_serializer=None, response_deserializer=None, **kwargs):
        return self._method(path, request_serializer, response_deserializer, streaming=False)

    def unary_stream(self, path, request_serializer=None, response_deserializer=None, **kwargs):
        return self._method(path, request_serializer, response_deserializer, streaming=True)

    def close(self):
        self.closed = True

    def calls_to(self, method: str):
        return [c for c in self.calls if c[0].endswith("/" + method)]


class FakeTime:
    """Stands in for the `time` module inside a client module: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if len(self.sleeps) >= 1000:  # a retry or reconnect loop that should have stopped
            raise RuntimeError("runaway loop: slept 1000 times")
        self.sleeps.append(seconds)
        self.now += seconds


