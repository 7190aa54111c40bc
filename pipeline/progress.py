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


def progress_line(stage: str, done: int, total: Optional[int], elapsed_s: float,
                  steady: Optional[tuple[int, float]] = None) -> str:
    """`embed (passages): 1200/5000 (24%), 36.1/s, ETA 1m45s`; without a total, done and rate only.
    `steady`: (items, seconds) since the stage's first finished batch. The rate and ETA come from
    it: the time until the first batch finishes is the pipeline filling (batches in flight, a
    server warming its cache), not the pace, and counting it once made the rerank stage's first ETA
    36 minutes for a stage of 4."""
    rate = pace = done / max(1e-9, elapsed_s)
    if steady is not None:
        items, seconds = steady
        pace = items / seconds if items > 0 and seconds > 0 else 0.0
        rate = pace or rate  # one batch back: the overall rate is all there is to show
    if total is None or total <= 0:
        return f"[fret] {stage}: {done} done ({rate:.1f}/s)"
    left = max(0, total - done)
    if not left:
        eta = _duration(0)
    elif pace > 0:
        eta = _duration(left / pace)
    else:
        eta = "unknown" if steady is None else "after the next batch"
    return f"[fret] {stage}: {done}/{total} ({100 * done / total:.0f}%), {rate:.1f}/s, ETA {eta}"


class Progress:
    """Console progress for local runs: one line per stage every few seconds."""

    _lock = threading.Lock()
    _last: dict[str, float] = {}
    _counts: dict[str, int] = {}
    _start: dict[str, float] = {}
    _first: dict[str, tuple[int, float]] = {}  # per stage: (items done, time) at its first finished batch

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
            cls._first.clear()

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
            cls._counts[stage] = done = cls._counts.get(stage, 0) + n
            first_done, first_t = cls._first.setdefault(stage, (done, t))
            finished = total is not None and done >= total
            if t - cls._last[stage] >= INTERVAL_S or finished:
                cls._last[stage] = t
                print(progress_line(stage, done, total, t - cls._start[stage], (done - first_done, t - first_t)),
                      flush=True)
