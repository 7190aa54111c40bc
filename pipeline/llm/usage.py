"""Token usage by request kind, from the server's own per-request numbers.

A stage runs its batch inside `measure(stage, ...)`; code below it may relabel a group of
requests with `metered(kind, ...)` (the reranker splits QL from RC). The client calls `record`
for every answered request. Context variables carry the meter into every task the batch starts,
so concurrent batches and stages sharing one client never mix their counts.
"""

from __future__ import annotations

import contextvars
from typing import Any, Awaitable, Optional, TypeVar

from schemas import TokenUsage

T = TypeVar("T")
_METER: contextvars.ContextVar[Optional["UsageMeter"]] = contextvars.ContextVar("fret_usage_meter", default=None)
_KIND: contextvars.ContextVar[str] = contextvars.ContextVar("fret_usage_kind", default="other")


FIELDS = tuple(TokenUsage.model_fields)  # requests, prompt_sent, prompt_computed, completion, cache_reported


CALLS = ("requests", "failures", "retries")


class UsageMeter:
    """Token counts per request kind, and the calls behind them; mergeable. `usage()` gives the
    tokens as TokenUsage records; `calls` counts requests made, failed and retried attempts."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}  # kind -> values in FIELDS order
        self.calls: dict[str, int] = dict.fromkeys(CALLS, 0)  # and any other count a request path keeps

    def totals(self) -> dict[str, int]:
        """Calls plus prompt and completion tokens over every kind (Beam's counters)."""
        sent, completion = (sum(row[FIELDS.index(f)] for row in self.counts.values())
                            for f in ("prompt_sent", "completion"))
        return {**self.calls, "prompt_tokens": sent, "completion_tokens": completion}

    def add(self, kind: str, prompt: int, cached: Optional[int], completion: int) -> None:
        row = self.counts.setdefault(kind, [0] * len(FIELDS))
        for i, value in enumerate((1, prompt, prompt - min(prompt, cached or 0), completion, int(cached is not None))):
            row[i] += value

    def merge(self, other: "UsageMeter") -> "UsageMeter":
        for name, value in other.calls.items():
            self.calls[name] = self.calls.get(name, 0) + value
        for kind, values in other.counts.items():
            row = self.counts.setdefault(kind, [0] * len(FIELDS))
            for i, value in enumerate(values):
                row[i] += value
        return self

    def usage(self) -> dict[str, TokenUsage]:
        return {kind: TokenUsage(**dict(zip(FIELDS, values))) for kind, values in sorted(self.counts.items())}


def cached_tokens(usage: dict[str, Any]) -> Optional[int]:
    """The server's prefix-cache hits for one request, or None when it does not say."""
    details = usage.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    return int(value) if isinstance(value, (int, float)) else None


def count_call(name: str) -> None:
    """One request made, failed or retried, for the meter of the batch that made it."""
    meter = _METER.get()
    if meter is not None:
        meter.calls[name] = meter.calls.get(name, 0) + 1


def record(prompt: int, cached: Optional[int], completion: int) -> None:
    meter = _METER.get()
    if meter is not None:
        meter.add(_KIND.get(), prompt, cached, completion)


async def metered(kind: str, awaitable: Awaitable[T]) -> T:
    """Await with the requests it makes counted under `kind`."""
    # Set back, not reset by token: a coroutine abandoned at shutdown is closed in another
    # context, where reset() raises (seen as an unraisable warning when a dead server aborts).
    previous = _KIND.get()
    _KIND.set(kind)
    try:
        return await awaitable
    finally:
        _KIND.set(previous)


async def measure(kind: str, awaitable: Awaitable[T]) -> tuple[T, UsageMeter]:
    """(result, the usage of every request made while awaiting it, by kind; `kind` by default)."""
    meter = UsageMeter()
    previous = _METER.get(), _KIND.get()
    _METER.set(meter)
    _KIND.set(kind)
    try:
        return await awaitable, meter
    finally:  # set back, not reset by token (see metered)
        _METER.set(previous[0])
        _KIND.set(previous[1])
