import subprocess
import sys

import pytest

PIPELINE_MODULES = [
    "pipeline",
    "pipeline.prompts",
    "pipeline.llm.client",
    "pipeline.llm.server",
    "pipeline.llm.vllm_venv",
    "pipeline.testing.stub_llm",
    "pipeline.testing.tiny_llm",
    "schemas",
]


@pytest.mark.parametrize("module", PIPELINE_MODULES)
def test_pipeline_imports_no_beam(module):
    code = (
        f"import sys, {module}\n"
        "beam = sorted(m for m in sys.modules if m == 'apache_beam' or m.startswith('apache_beam.'))\n"
        "assert not beam, beam[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_no_beam_import_statement_in_pipeline_sources():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pipeline"
    offenders = [str(p) for p in root.rglob("*.py") if "apache_beam" in p.read_text()]
    assert offenders == []
