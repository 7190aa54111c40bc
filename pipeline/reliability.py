"""Failure policy of the LLM stages: which failures a re-run may fix, and when to give up.

A job that keeps going while its server is down writes a dataset of dead letters and burns
the budget on retries. The guard stops it early with a message that says what to do.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Iterable, Optional

# Dead-letter reasons that say nothing about the input: the server was down, slow or refused.
# They are never journaled, so `--resume` tries those items again.
TRANSIENT_REASONS = frozenset({"llm_unavailable", "llm_timeout", "llm_http_error", "llm_bad_response"})


def is_transient(reason: Optional[str]) -> bool:
    return reason in TRANSIENT_REASONS


class FailureRateExceeded(RuntimeError):
    """Raised inside a worker; the runner fails the job with this message."""


@dataclasses.dataclass(frozen=True)
class FailurePolicy:
    max_rate: float = 0.5  # abort when more than this share of recent LLM items failed
    window: int = 200  # recent items the share is computed over
    min_items: int = 20  # no verdict before this many items: a few failures prove nothing

    def __post_init__(self):
        if not 0.0 < self.max_rate <= 1.0:
            raise ValueError(f"max_failure_rate must be in (0, 1], got {self.max_rate}")
        if self.window < 1 or self.min_items < 1:
            raise ValueError("failure_window and the minimum item count must be >= 1")


class FailureGuard:
    """Sliding-window failure share of one stage; thread-safe so DoFn threads can share it."""

    def __init__(self, stage: str, policy: FailurePolicy, hint: str = ""):
        self.stage, self.policy, self.hint = stage, policy, hint
        self._recent: collections.deque[Optional[str]] = collections.deque(maxlen=policy.window)
        self._seen = 0
        self._lock = threading.Lock()

    def record(self, reasons: Iterable[Optional[str]]) -> None:
        """One entry per item: None for success, else the dead-letter reason. Raises when over the limit."""
        with self._lock:
            for reason in reasons:
                self._recent.append(reason)
                self._seen += 1
            if len(self._recent) >= min(self.policy.min_items, self.policy.window):
                self._check()

    def _check(self) -> None:
        failures = [r for r in self._recent if r is not None]
        share = len(failures) / len(self._recent)
        if share <= self.policy.max_rate:
            return
        top = collections.Counter(failures).most_common(3)
        reasons = ", ".join(f"{reason}: {n}" for reason, n in top)
        raise FailureRateExceeded(
            f"fret aborted the job: {len(failures)} of the last {len(self._recent)} {self.stage} items failed "
            f"({share:.0%} > --max_failure_rate {self.policy.max_rate:.0%}; {reasons}). "
            f"{self.hint}".strip())
