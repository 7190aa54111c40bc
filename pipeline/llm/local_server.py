"""In-worker vLLM: one server per machine, shared by every worker process and thread on it.

Dataflow runs several SDK worker processes per VM, each with many threads. The first to ask
starts the server on a fixed local port under a file lock; the others find it healthy on that
port and use it. This mirrors Beam's vLLM model handler (a server per worker, reached over
HTTP) while keeping fret's client: retries, backoff, structured output and logprob scoring.
"""

from __future__ import annotations

import atexit
import dataclasses
import fcntl
import hashlib
import os
import shlex
import sys
import tempfile
import time
import threading
import urllib.error
import urllib.request
from typing import Optional

from pipeline.llm.server import VLLMServer

DEFAULT_PORT = 8765


@dataclasses.dataclass(frozen=True)
class LocalServerSpec:
    model: str  # local path or hub name, as `vllm serve` takes it
    served_model_name: str
    port: int = DEFAULT_PORT
    python: Optional[str] = None  # interpreter with vLLM; default: $FRET_VLLM_PYTHON, the fret vLLM venv, this one
    extra_args: str = ""  # more `vllm serve` flags, e.g. "--tensor-parallel-size 2"
    memory_fraction: float = 0.9  # --gpu-memory-utilization (on CPU: the share of RAM for the KV cache)
    max_model_len: int = 4096
    startup_timeout_s: float = 1800.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


_lock = threading.Lock()
_owned: dict[int, VLLMServer] = {}  # servers this process started, by port


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def ensure_local_server(spec: LocalServerSpec) -> str:
    """The base URL of this machine's server for `spec`, starting it if no process has yet."""
    with _lock:  # threads of this process
        if spec.port in _owned or _healthy(spec.base_url):
            return spec.base_url
        key = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
        lock_path = os.path.join(tempfile.gettempdir(), f"fret-vllm-{spec.port}-{key}.lock")
        with open(lock_path, "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # other processes of this machine wait here
            try:
                if _healthy(spec.base_url):  # another process started it while we waited
                    return spec.base_url
                server = VLLMServer(spec.model, port=spec.port, python=spec.python,
                                    served_model_name=spec.served_model_name, max_model_len=spec.max_model_len,
                                    memory_fraction=spec.memory_fraction, extra_args=shlex.split(spec.extra_args),
                                    startup_timeout_s=spec.startup_timeout_s)
                print(f"[fret] starting vLLM on {spec.model} at {spec.base_url} for this machine's workers "
                      f"(a minute or more on CPUs; log: {server.log_path})", file=sys.stderr, flush=True)
                started = time.monotonic()
                server.start()
                print(f"[fret] vLLM is ready at {spec.base_url} after {time.monotonic() - started:.0f}s",
                      file=sys.stderr, flush=True)
                _owned[spec.port] = server
                return spec.base_url
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


def stop_owned_servers() -> None:
    """Stop the servers this process started (at exit; worker VMs are torn down anyway)."""
    with _lock:
        for server in _owned.values():
            server.stop()
        _owned.clear()


atexit.register(stop_owned_servers)
