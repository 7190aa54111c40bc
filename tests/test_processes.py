"""Every server fret starts is stopped on every exit path (issue 36, defect 3; newcomer's finding 6).

fret starts tests/standin_vllm instead of vLLM here (FRET_VLLM_PYTHON and PYTHONPATH): it takes vLLM's
flags, starts a child process as vLLM's engine core does, speaks the OpenAI protocol and records its
pids, so each test can check that no process of it is left. The real vLLM's Ctrl-C is in
tests/test_fret_job_vllm.py.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.llm.server import free_port
from tests.jobkit import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "standin_vllm"


def gone(pid: int) -> bool:
    """Exited (a zombie no one reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in state


def standin_env(tmp_path, **extra) -> dict:
    return {**os.environ, "FRET_VLLM_PYTHON": sys.executable, "PYTHONPATH": f"{STANDIN}:{ROOT}",
            "STANDIN_PIDS": str(tmp_path / "pids"), **extra}


def standin_pids(tmp_path, timeout: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (tmp_path / "pids").exists() and (tmp_path / "pids").read_text().endswith("\n"):
            return [int(p) for p in (tmp_path / "pids").read_text().split()]
        time.sleep(0.2)
    raise AssertionError("the stand-in server never started")


def wait_until_serving(process) -> None:
    """fret serve prints its URL on stdout once the server answers."""
    line = process.stdout.readline()  # the first line it prints there
    assert "serves" in line, line + process.stderr.read() if process.poll() is not None else line


def assert_all_stopped(tmp_path, port: int) -> None:
    pids = standin_pids(tmp_path, timeout=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.2)
    assert all(gone(p) for p in pids), f"left running: {[p for p in pids if not gone(p)]}"
    from pipeline.llm.server import listening

    assert not listening("127.0.0.1", port), "the port is still held"


def serve(tmp_path, port: int, **env) -> subprocess.Popen:
    # its own session, as a terminal gives a command its own process group
    return subprocess.Popen([sys.executable, "-m", "beam_jobs.cli", "serve", str(tmp_path / "model"), "--port",
                             str(port)], env=standin_env(tmp_path, **env), cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_fret_serve_stops_the_server_when_signalled_during_its_start(tmp_path, sig):
    """The handlers are in place before the start: a server still starting (here it would take 10
    minutes) is stopped with fret, its engine child too, and the port is free."""
    port = free_port()
    fret = serve(tmp_path, port, STANDIN_DELAY_S="600")
    standin_pids(tmp_path)
    os.killpg(fret.pid, sig)  # SIGHUP to the group: the terminal closed
    assert fret.wait(timeout=60) == 128 + sig
    assert f"stopped by {sig.name}" in fret.stderr.read()
    assert_all_stopped(tmp_path, port)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_fret_serve_stops_the_server_it_serves(tmp_path, sig):
    port = free_port()
    fret = serve(tmp_path, port)
    wait_until_serving(fret)
    os.killpg(fret.pid, sig)
    assert fret.wait(timeout=60) == (0 if sig == signal.SIGINT else 128 + sig)
    assert_all_stopped(tmp_path, port)


def test_a_second_fret_serve_on_a_taken_port_says_so(tmp_path):
    """Newcomer's finding 6: the second one printed "ready after 0s" (the first answered), then
    "vLLM exited by itself"; the cause was only in the log."""
    port = free_port()
    first = serve(tmp_path, port)
    wait_until_serving(first)
    second = subprocess.run([sys.executable, "-m", "beam_jobs.cli", "serve", str(tmp_path / "m2"), "--port",
                             str(port)], env=standin_env(tmp_path), cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in second.stderr
    assert "ready after" not in second.stdout + second.stderr
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 0
    assert_all_stopped(tmp_path, port)


@pytest.mark.parametrize("end", ["normal", "error", "SIGINT", "SIGTERM", "SIGHUP"])
def test_the_jobs_in_worker_server_is_stopped_on_every_exit_path(tmp_path, end):
    """--llm_serve: the job's worker starts the server; whatever ends the job stops it. Ctrl-C used
    to leave it answering /health (os._exit skipped the atexit hook), and a later --resume reused it
    without owning it."""
    port = free_port()
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"p{i}", "text": f"passage {i} on topic {i}"} for i in range(6)])
    fault = {"normal": "", "error": "500"}.get(end, "hang")
    job = subprocess.Popen([sys.executable, "-m", "beam_jobs.fret_job", "--input", str(inp), "--output",
                            str(tmp_path / "out"), "--llm_serve", str(tmp_path / "model"), "--llm_model", "standin",
                            "--llm_serve_port", str(port), "--num_neighbors", "2", "--progress", "false",
                            "--llm_retries", "0", "--failure_window", "2", "--scores", "rc"],
                           env=standin_env(tmp_path, STANDIN_FAULT=fault), cwd=ROOT, stderr=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    if end in ("normal", "error"):
        _, err = job.communicate(timeout=300)
        assert job.returncode == (0 if end == "normal" else 2), err[-3000:]
    else:
        standin_pids(tmp_path)
        from pipeline.llm.local_server import _healthy

        deadline = time.monotonic() + 120
        while not _healthy(f"http://127.0.0.1:{port}") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # the job is inside its generation stage, waiting on the hung server
        os.killpg(job.pid, getattr(signal, end))
        _, err = job.communicate(timeout=120)
        assert job.returncode == 128 + getattr(signal, end), err[-3000:]
    assert_all_stopped(tmp_path, port)
