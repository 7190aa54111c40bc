"""Fail the setup if the project venv holds a CUDA build of torch or NVIDIA wheels."""

import sys
from importlib import metadata

import torch

nvidia = sorted(d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"].lower().startswith("nvidia"))
if not torch.__version__.startswith("2.13.0") or "+cpu" not in torch.__version__ or nvidia:
    sys.exit(f"expected the local CPU wheel torch 2.13.0+cpu and no NVIDIA packages; got torch "
             f"{torch.__version__} and {nvidia}. Install torch==2.13.0 before the project.")
print(f"torch {torch.__version__} (CPU build), no NVIDIA packages")
