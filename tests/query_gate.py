"""A pass-through HTTP proxy in front of the real vLLM server that holds the scoring requests of
chosen queries, so a crash test stops the job in a known state (these queries scored and
journaled, those not) instead of racing it with a timer.

Generation, /tokenize and the start-up probe pass through. A scoring request of a held query
waits until `release()`; then it goes to the server, which the test may have killed by then
(the proxy answers 502, as a load balancer in front of a dead server does).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Iterable

import aiohttp
from aiohttp import web

from pipeline.llm.server import free_port


class QueryGateProxy:
    def __init__(self, upstream: str, hold: Iterable[str]):
        self.upstream = upstream.rstrip("/")
        self.hold = set(hold)
        self.port = free_port()
        self.held = threading.Event()  # set once a held request has arrived
        self._release: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._release.set)

    def _held_query(self, body: bytes) -> bool:
        """A QL prompt ends with " <query>"; an RC prompt has a "Query: <query>" line."""
        try:
            prompt = json.loads(body).get("prompt")
        except (ValueError, AttributeError):
            return False
        if not isinstance(prompt, str):
            return False
        return any(prompt.endswith(" " + q) or f"\nQuery: {q}\n" in prompt for q in self.hold)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path == "/v1/completions" and self._held_query(body):
            self.held.set()
            await self._release.wait()
        try:
            async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                             headers={"Content-Type": request.content_type}) as resp:
                return web.Response(status=resp.status, body=await resp.read(), content_type=resp.content_type)
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"upstream failed: {exc}")

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()

        async def start():
            self._release = asyncio.Event()
            # no deadline of its own: the job's request timeout decides, as without the proxy
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            app = web.Application(client_max_size=64 * 2**20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> "QueryGateProxy":
        threading.Thread(target=self._serve, daemon=True, name="query-gate-proxy").start()
        if not self._ready.wait(30):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            self._release.set()
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
