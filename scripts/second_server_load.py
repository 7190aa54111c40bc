"""Load beside the tests, as a user trying the tool while they run: a second vLLM server on the
tiny model and a small FRet job against it, again and again, until this process is stopped.

    .venv/bin/python scripts/second_server_load.py OUT_FOLDER
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(out: str) -> None:
    from pipeline.llm.server import VLLMServer
    from pipeline.llm.vllm_venv import ensure_vllm_venv
    from pipeline.testing.tiny_llm import build_tiny_llm

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    passages = [json.loads(line) for line in open(ROOT / "samples" / "passages.jsonl", encoding="utf-8")][:16]
    with open(folder / "in.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"title": p.get("title", ""), "text": p["text"][:600]}) + "\n" for p in passages)
    model = build_tiny_llm(Path.home() / ".cache" / "fret-distill" / "tiny-llm-v1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the server below is stopped on the way out
    with VLLMServer(str(model), python=ensure_vllm_venv(), served_model_name="tiny-llm",
                    extra_args=("--dtype", "float32"), startup_timeout_s=3600,
                    log_path=str(folder / "server.log")) as server:
        for run in itertools.count(1):
            code = subprocess.call(
                [sys.executable, "-m", "beam_jobs.fret_job", "--input", str(folder / "in.jsonl"),
                 "--output", str(folder / "job"), "--overwrite", "--llm_url", server.base_url,
                 "--llm_timeout", "3600", "--max_tokens", "1500", "--num_neighbors", "4", "--progress", "false"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(folder / "job.log", "w"))
            print(f"second-server job {run}: exit {code}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/under_load/second_server")
