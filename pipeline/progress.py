"""Console progress for local runs: one line per stage every few seconds."""

from __future__ import annotations

import threading
import time


class Progress:
    """Console progress for local runs: one line per stage every few seconds."""

    _lock = threading.Lock()
    _last: dict[str, float] = {}
    _counts: dict[str, int] = {}
    _start: dict[str, float] = {}

    @classmethod
    def add(cls, stage: str, n: int, enabled: bool) -> None:
        if not enabled:
            return
        with cls._lock:
            t = time.monotonic()
            cls._start.setdefault(stage, t)
            cls._last.setdefault(stage, t)
            cls._counts[stage] = cls._counts.get(stage, 0) + n
            if t - cls._last[stage] >= 5.0:
                cls._last[stage] = t
                rate = cls._counts[stage] / max(1e-9, t - cls._start[stage])
                print(f"[fret] {stage}: {cls._counts[stage]} done ({rate:.1f}/s)", flush=True)
