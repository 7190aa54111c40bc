"""Every process fret starts, fret stops, on every exit path: one registry, one place.

Whatever starts a process registers it with `own` as soon as it exists (VLLMServer does, before it
waits for /health) and drops it with `disown` once stopped. A command calls `guard()` before it
starts anything. Then the owned processes are stopped:
- on a normal end or an error: by the `with` or `finally` that started them, and by the atexit hook;
- on SIGINT: KeyboardInterrupt unwinds as above; a command that must leave without unwinding (the
  job's Ctrl-C, whose runner threads would print pages) calls `exit_now`, which stops them first;
- on SIGTERM and SIGHUP (a closed terminal): the handler stops them, runs the command's own cleanup
  (`on_signal`), and exits with 128 + the signal.
SIGKILL cannot be caught; a server left by one is found by its port record (pipeline.llm.local_server).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Protocol


class Stoppable(Protocol):
    def stop(self) -> None: ...


_lock = threading.RLock()  # re-entrant: a signal handler runs on the main thread, maybe inside stop_owned
_owned: dict[int, Stoppable] = {}
_cleanups: list[Callable[[], None]] = []
_installed = False
HANDLED = (signal.SIGTERM, signal.SIGHUP)


def own(process: Stoppable) -> None:
    with _lock:
        _owned[id(process)] = process


def disown(process: Stoppable) -> None:
    with _lock:
        _owned.pop(id(process), None)


def owned() -> list[Stoppable]:
    with _lock:
        return list(_owned.values())


def stop_owned() -> None:
    """Stop every process this process started and has not stopped yet (each once)."""
    with _lock:
        running = list(_owned.values())
        _owned.clear()
    for process in running:
        try:
            process.stop()
        except Exception as exc:  # noqa: BLE001 - one failed stop must not keep the others running
            print(f"[fret] could not stop {process!r}: {exc}", file=sys.stderr, flush=True)


def exit_now(code: int) -> None:
    """Leave at once, without unwinding (os._exit), after stopping what this process started."""
    stop_owned()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _on_terminate(signum, frame) -> None:
    stop_owned()
    with _lock:
        cleanups = list(reversed(_cleanups))
    for cleanup in cleanups:
        try:
            cleanup()
        except Exception as exc:  # noqa: BLE001 - the exit must happen whatever a cleanup does
            print(f"[fret] cleanup after {signal.Signals(signum).name} failed: {exc}", file=sys.stderr, flush=True)
    print(f"[fret] stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    exit_now(128 + signum)


def guard() -> None:
    """Install the SIGTERM/SIGHUP handlers and the atexit hook, once, before anything is started.
    Off the main thread (a library user's worker) only the atexit hook can be installed."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    atexit.register(stop_owned)
    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED:
            signal.signal(sig, _on_terminate)


@contextlib.contextmanager
def on_signal(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run `cleanup` if SIGTERM or SIGHUP ends the process inside this block (after the owned
    processes are stopped)."""
    with _lock:
        _cleanups.append(cleanup)
    try:
        yield
    finally:
        with _lock:
            _cleanups.remove(cleanup)


class Child:
    """A subprocess.Popen as an owned process: SIGTERM, then SIGKILL after `grace_s`."""

    def __init__(self, popen, grace_s: float = 20.0):
        self.popen, self.grace_s = popen, grace_s

    def stop(self) -> None:
        import subprocess

        disown(self)
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def __repr__(self) -> str:
        return f"Child(pid={self.popen.pid})"


def call(command: list[str]) -> int:
    """subprocess.call, with the child owned: it is stopped if this process is ended first."""
    import subprocess

    child = Child(subprocess.Popen(command))
    own(child)
    try:
        return child.popen.wait()
    finally:
        child.stop()
