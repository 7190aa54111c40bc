"""A thread-safe synchronous facade over LLMClient, for Beam DoFns and scripts.

One event loop runs in a daemon thread and owns the aiohttp session; any thread submits a
whole batch as one coroutine and waits for it. Sharing one instance across a worker's DoFn
threads keeps one connection pool and one concurrency bound per process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, TypeVar

from pipeline.llm.client import LLMClient
from pipeline.llm.types import ClientConfig

T = TypeVar("T")


class BlockingLLM:
    def __init__(self, config: ClientConfig):
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fret-llm-loop", daemon=True)
        self._thread.start()
        self.client = LLMClient(config)
        self._users = 0
        self._ready = False
        self._users_lock = threading.Lock()

    def retain(self) -> "BlockingLLM":
        """Register a user (a DoFn instance); the session closes when the last one releases."""
        with self._users_lock:
            self._users += 1
        return self

    def release(self) -> None:
        with self._users_lock:
            self._users -= 1
            last = self._users <= 0
        if last:
            # Closes the connection pool; the next run() reopens it.
            self.run(lambda c: c.close(), timeout=30)

    def run(self, fn: Callable[[LLMClient], Awaitable[T]], timeout: float | None = None) -> T:
        """Run `fn(client)` on the loop thread and return its result."""
        future = asyncio.run_coroutine_threadsafe(_call(fn, self.client), self._loop)
        return future.result(timeout)

    def submit(self, fn: Callable[[LLMClient], Awaitable[T]]) -> "concurrent.futures.Future[T]":
        """Start `fn(client)` on the loop thread and return at once; `.result()` waits for it."""
        return asyncio.run_coroutine_threadsafe(_call(fn, self.client), self._loop)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until every server answers; checked once per instance."""
        with self._users_lock:
            if self._ready:
                return
        self.run(lambda c: c.wait_ready(timeout_s))
        with self._users_lock:
            self._ready = True

    @property
    def stats(self):
        return self.client.stats

    def close(self) -> None:
        if self._loop.is_running():
            try:
                self.run(lambda c: c.close(), timeout=30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)


async def _call(fn: Callable[[LLMClient], Awaitable[Any]], client: LLMClient) -> Any:
    return await fn(client)
