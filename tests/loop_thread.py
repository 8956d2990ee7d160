"""An event loop in a daemon thread, for grpc.aio servers served inside a test process (a server
binds to the loop it is created on, so each gets a loop of its own)."""

from __future__ import annotations

import asyncio
import threading


class LoopThread:
    """`call(coro)` runs a coroutine on the loop and waits for its result; `stop(server)` stops a
    server started on it, then the loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, server) -> None:
        self.call(server.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
