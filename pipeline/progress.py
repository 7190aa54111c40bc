"""Console progress for local runs: one line per stage every few seconds, with an ETA when the
stage's total is known."""

from __future__ import annotations

import threading
import time
from typing import Optional

INTERVAL_S = 5.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_line(stage: str, done: int, total: Optional[int], elapsed_s: float) -> str:
    """`embed (passages): 1200/5000 (24%), 36.1/s, ETA 1m45s`; without a total, done and rate only."""
    rate = done / max(1e-9, elapsed_s)
    if total is None or total <= 0:
        return f"[fret] {stage}: {done} done ({rate:.1f}/s)"
    left = max(0, total - done)
    eta = _duration(left / rate) if rate > 0 else "unknown"
    return f"[fret] {stage}: {done}/{total} ({100 * done / total:.0f}%), {rate:.1f}/s, ETA {eta}"


class Progress:
    """Console progress for local runs: one line per stage every few seconds."""

    _lock = threading.Lock()
    _last: dict[str, float] = {}
    _counts: dict[str, int] = {}
    _start: dict[str, float] = {}

    @classmethod
    def _clock(cls, stage: str) -> float:
        """Now; the stage's clock starts at its first call. Call with the lock held."""
        t = time.monotonic()
        cls._start.setdefault(stage, t)
        cls._last.setdefault(stage, t)
        return t

    @classmethod
    def reset(cls) -> None:
        """A new job counts from zero (several jobs can run in one process, as the tests do)."""
        with cls._lock:
            cls._last.clear()
            cls._counts.clear()
            cls._start.clear()

    @classmethod
    def begin(cls, stage: str, enabled: bool) -> None:
        """The stage's clock starts at its first item, not its first finished batch."""
        if enabled:
            with cls._lock:
                cls._clock(stage)

    @classmethod
    def add(cls, stage: str, n: int, enabled: bool, total: Optional[int] = None) -> None:
        if not enabled:
            return
        with cls._lock:
            t = cls._clock(stage)
            cls._counts[stage] = cls._counts.get(stage, 0) + n
            finished = total is not None and cls._counts[stage] >= total
            if t - cls._last[stage] >= INTERVAL_S or finished:
                cls._last[stage] = t
                print(progress_line(stage, cls._counts[stage], total, t - cls._start[stage]), flush=True)
