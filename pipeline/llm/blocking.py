"""A thread-safe synchronous facade over LLMClient, for Beam DoFns and scripts.

One event loop runs in a daemon thread and owns the aiohttp session; any thread submits a
whole batch as one coroutine and waits for it. `acquire(config)` hands every caller in the
process with the same config the same instance, whatever stage or pipeline it belongs to: one
connection pool and one concurrency bound per worker process. The last `release()` closes the
session and stops the loop thread, so a job run as many pipelines (waves) leaves none behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, TypeVar

from pipeline.llm.client import LLMClient
from pipeline.llm.types import ClientConfig

T = TypeVar("T")


_REGISTRY: dict[ClientConfig, "BlockingLLM"] = {}
_REGISTRY_LOCK = threading.Lock()


def acquire(config: ClientConfig) -> "BlockingLLM":
    """The process's client for `config`, retained for the caller: pair with `release()`."""
    with _REGISTRY_LOCK:
        llm = _REGISTRY.get(config)
        if llm is None:
            llm = _REGISTRY[config] = BlockingLLM(config)
        llm._users += 1
        return llm


def live_clients() -> int:
    """Clients acquired and not yet released by all their users (for tests)."""
    with _REGISTRY_LOCK:
        return len(_REGISTRY)


class BlockingLLM:
    def __init__(self, config: ClientConfig):
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fret-llm-loop", daemon=True)
        self._thread.start()
        self.client = LLMClient(config)
        self._users = 0  # guarded by _REGISTRY_LOCK
        self._ready = False
        self._ready_lock = threading.Lock()

    def release(self) -> None:
        """One user is done; the last one closes the session and stops the loop thread."""
        with _REGISTRY_LOCK:
            self._users -= 1
            last = self._users <= 0
            if last and _REGISTRY.get(self.config) is self:
                del _REGISTRY[self.config]
        if last:
            self.close()

    def run(self, fn: Callable[[LLMClient], Awaitable[T]], timeout: float | None = None) -> T:
        """Run `fn(client)` on the loop thread and return its result."""
        future = asyncio.run_coroutine_threadsafe(_call(fn, self.client), self._loop)
        return future.result(timeout)

    def submit(self, fn: Callable[[LLMClient], Awaitable[T]]) -> "concurrent.futures.Future[T]":
        """Start `fn(client)` on the loop thread and return at once; `.result()` waits for it."""
        return asyncio.run_coroutine_threadsafe(_call(fn, self.client), self._loop)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until every server answers; checked once per instance."""
        with self._ready_lock:
            if self._ready:
                return
        self.run(lambda c: c.wait_ready(timeout_s))
        with self._ready_lock:
            self._ready = True

    @property
    def stats(self):
        return self.client.stats

    def close(self) -> None:
        """Close the session and stop the loop thread (a script's own instance, or the last user)."""
        if self._loop.is_running():
            try:
                self.run(lambda c: c.close(), timeout=30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()


async def _call(fn: Callable[[LLMClient], Awaitable[Any]], client: LLMClient) -> Any:
    return await fn(client)
