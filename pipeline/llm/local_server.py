"""In-worker vLLM: one server per machine, shared by every worker process and thread on it.

Dataflow runs several SDK worker processes per VM, each with many threads. The first to ask
starts the server on a fixed local port under a file lock; the others find it healthy on that
port and use it. This mirrors Beam's vLLM model handler (a server per worker, reached over
HTTP) while keeping fret's client: retries, backoff, structured output and logprob scoring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shlex
import signal
import sys
import tempfile
import time
import threading
import urllib.error
import urllib.request
from typing import Optional

from pipeline import processes
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


def _record_path(port: int) -> str:
    """Which fret process started the server on a port: its record, beside the start lock."""
    return os.path.join(tempfile.gettempdir(), f"fret-vllm-{port}.owner.json")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AdoptedServer:
    """A server a killed fret process started (its record names a dead owner): this process now
    stops it at exit, as its own."""

    def __init__(self, server_pid: int, port: int):
        self.server_pid, self.port = server_pid, port

    def stop(self, grace_s: float = 20.0) -> None:
        processes.disown(self)
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.server_pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _alive(self.server_pid):
                time.sleep(0.2)
        with contextlib.suppress(FileNotFoundError):
            os.remove(_record_path(self.port))

    def __repr__(self) -> str:
        return f"AdoptedServer(pid={self.server_pid}, port={self.port})"


def ensure_local_server(spec: LocalServerSpec) -> str:
    """The base URL of this machine's server for `spec`, starting it if no process has yet.

    A healthy server on the port is used only when a fret process started it for this spec (its
    record says so): a live owner is a sibling worker; a dead one was killed without stopping it,
    and this process adopts the server, so something stops it. Any other server there is refused."""
    key = hashlib.sha256(repr(dataclasses.replace(spec, startup_timeout_s=0)).encode()).hexdigest()[:12]
    with _lock:  # threads of this process
        if spec.port in _owned:
            return spec.base_url
        lock_path = os.path.join(tempfile.gettempdir(), f"fret-vllm-{spec.port}.lock")
        with open(lock_path, "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # other processes of this machine wait here
            try:
                if _healthy(spec.base_url):
                    return _reuse(spec, key)
                server = VLLMServer(spec.model, port=spec.port, python=spec.python,
                                    served_model_name=spec.served_model_name, max_model_len=spec.max_model_len,
                                    memory_fraction=spec.memory_fraction, extra_args=shlex.split(spec.extra_args),
                                    startup_timeout_s=spec.startup_timeout_s)
                print(f"[fret] starting vLLM on {spec.model} at {spec.base_url} for this machine's workers "
                      f"(a minute or more on CPUs; log: {server.log_path})", file=sys.stderr, flush=True)
                started = time.monotonic()
                server.start()
                _write_record(spec.port, server.process.pid, key)
                print(f"[fret] vLLM is ready at {spec.base_url} after {time.monotonic() - started:.0f}s",
                      file=sys.stderr, flush=True)
                _owned[spec.port] = server
                return spec.base_url
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


def _write_record(port: int, server_pid: int, key: str) -> None:
    tmp = _record_path(port) + f".{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"owner_pid": os.getpid(), "server_pid": server_pid, "spec": key}, f)
    os.replace(tmp, _record_path(port))


def _reuse(spec: LocalServerSpec, key: str) -> str:
    try:
        with open(_record_path(spec.port)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = None
    if not record or record.get("spec") != key:
        raise RuntimeError(f"port {spec.port} already has a server that fret did not start for --llm_serve "
                           f"{spec.model}; stop it, or pass --llm_serve_port with a free port")
    if not _alive(record["owner_pid"]):  # its fret was killed: adopt it, so that it is stopped
        adopted = AdoptedServer(record["server_pid"], spec.port)
        processes.own(adopted)
        _write_record(spec.port, record["server_pid"], key)
        print(f"[fret] adopting the vLLM server on port {spec.port} left by a fret process that was killed; it "
              "stops when this process ends", file=sys.stderr, flush=True)
    return spec.base_url


def stop_owned_servers() -> None:
    """Stop the servers this process started for --llm_serve (pipeline.processes also stops them at exit)."""
    with _lock:
        for port, server in list(_owned.items()):
            server.stop()
            with contextlib.suppress(FileNotFoundError):
                os.remove(_record_path(port))
        _owned.clear()
