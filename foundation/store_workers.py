"""A small thread pool for the blocking calls of a synchronous store (SQLite, and any DB-API
driver), so that they never run on the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class StoreWorkers:
    """A small thread pool that runs blocking store calls off the event loop."""

    def __init__(self, workers: int = 4, name: str = "store") -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def __call__(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Wait for running calls and stop the threads."""
        self._executor.shutdown(wait=True)
