"""Relevance labels' log-probabilities: LLMClient's RC requests (a mixin: it uses the client's
session, retries, routing and usage accounting)."""

from __future__ import annotations

import asyncio
from typing import Optional, Sequence

from pipeline.llm.types import LabelMethod, LabelResult, LLMError


class LabelScoring:
    async def label_logprobs(self, prompt: str, labels: Sequence[str], method: LabelMethod = "exact",
                             route_key: Optional[str] = None) -> LabelResult:
        """log P(label | prompt) for every label, however unlikely.

        "exact": the whole label's log-likelihood, one echo request per label (any server with
        echo + logprobs). "first_token": the log-probability of each label's first token, all
        labels in one request (vLLM's `logprob_token_ids`); the request carries no prompt
        logprobs, so vLLM's prefix cache serves the shared part of the prompt.
        """
        if method == "first_token":
            return await self._label_first_token(prompt, labels, route_key)
        results = await asyncio.gather(*(self.query_likelihood(prompt, label, route_key) for label in labels))
        out = LabelResult(ok=True)
        for label, r in zip(labels, results):
            out.prompt_tokens += r.prompt_tokens
            out.completion_tokens += r.completion_tokens
            out.latency_s = max(out.latency_s, r.latency_s)
            out.attempts = max(out.attempts, r.attempts)
            if not r.ok:
                return out.fail(r.reason or "bad_response", f"label {label!r}: {r.detail}")
            out.logprobs[label] = r.logprob_sum
            out.num_tokens[label] = r.num_tokens
        return out

    async def label_first_tokens(self, labels: Sequence[str]) -> list[int]:
        """The first token id of each label; they must differ to tell the labels apart.
        Concurrent callers share one lookup: a batch of hundreds of RC requests would otherwise
        send hundreds of identical /tokenize requests before the first answer is cached."""
        key = tuple(labels)
        if key in self._label_tokens:
            return self._label_tokens[key]
        pending = self._label_pending.get(key)
        if pending is None:
            pending = self._label_pending[key] = asyncio.ensure_future(self._fetch_label_tokens(labels))
        try:
            ids = await asyncio.shield(pending)
        finally:
            if pending.done():
                self._label_pending.pop(key, None)  # a failed lookup is tried again by the next caller
        self._label_tokens[key] = ids
        return ids

    async def _fetch_label_tokens(self, labels: Sequence[str]) -> list[int]:
        ids = [(await self.tokenize(label))[:1] for label in labels]
        if any(not i for i in ids) or len({i[0] for i in ids}) != len(ids):
            raise LLMError(f"labels {list(labels)} do not start with distinct tokens; use the 'exact' label "
                           "method", "bad_response")
        return [i[0] for i in ids]

    async def _label_first_token(self, prompt: str, labels: Sequence[str], route_key: Optional[str] = None
                                 ) -> LabelResult:
        result = LabelResult()
        try:
            ids = await self.label_first_tokens(labels)
        except LLMError as exc:
            return result.fail(exc.reason, str(exc))
        body = {
            "model": self.config.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
            "logprobs": 1, "logprob_token_ids": ids, "return_tokens_as_token_ids": True,
        }
        payload = await self._call("completions", body, result, route_key=route_key)
        if payload is None:
            return result
        try:
            top = payload["choices"][0]["logprobs"]["top_logprobs"][0]
            values = {label: float(top[f"token_id:{i}"]) for label, i in zip(labels, ids)}
        except (KeyError, IndexError, TypeError, ValueError):
            return result.fail("bad_response", "the server did not return logprobs for the requested label "
                                               "tokens; it needs vLLM's logprob_token_ids (use the 'exact' method)")
        result.logprobs = values
        result.num_tokens = {label: 1 for label in labels}
        result.ok = True
        return result
