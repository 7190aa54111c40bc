"""The false-negative share before and after the never-a-negative rules, on real sets with qrels.

A written negative is a false negative when it is a relevant passage of its query by the set's
own qrels (a qrel document, any chunk of one, or a copy of one's text), or a chunk or copy of the
example's positive. This audit reads the qrels and the corpus, not fret's rules.

Runs, each on the same BEIR train split (its first --queries queries, the whole corpus):
- before: the job at commit BEFORE (today's main when the issue was filed), in a git worktree;
- after: this checkout, seed 0 run, seeds 1 and 2 by `fret remine` (0 LLM tokens);
both scored by the scripted stub LLM (pipeline.testing.stub_llm: hashed log-probabilities), so
that both versions see the very same scores and differ only in their rules;
- retrieval: this checkout with --scores retrieval --relabel never --negative-strategy top (no
LLM at all), seeds do not apply (top is deterministic).

    python bench/false_negatives.py --sets pydoc manpages --queries 400
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CACHE, ROOT  # noqa: E402

BEFORE = "bcd2573"  # the parent of the first commit of issue 37
SETS = {"pydoc": ROOT / "samples" / "pydoc-retrieval", "manpages": CACHE / "manpages-retrieval"}
MINING = ["--num_neighbors", "20", "--negative_strategy", "random", "--num_negatives", "5"]


def subset(source: Path, folder: Path, n_queries: int) -> Path:
    from pipeline.train.evaluate import load_beir, write_beir

    corpus, queries, qrels = load_beir(source, "train")
    qids = sorted(q for q in qrels if q in queries)[:n_queries]
    return write_beir(folder, corpus, {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}, "train")


def run(cwd: Path, folder: Path, output: Path, llm_url: str, *flags: str) -> float:
    if (output / "manifest.json").exists():  # kept from an earlier invocation with the same --work
        return json.loads((output / "manifest.json").read_text()).get("seconds", 0.0)
    command = [sys.executable, "-m", "beam_jobs.fret_job", "--input", str(folder / "corpus.jsonl"), "--queries",
               str(folder), "--output", str(output), "--llm_url", llm_url, "--progress", "false",
               "--wave_size", "0", *flags]
    start = time.monotonic()
    subprocess.run(command, cwd=cwd, check=True, env={**os.environ, "PYTHONPATH": str(cwd)},
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def audit(output: Path, folder: Path) -> dict:
    """Counts of written negatives, and of those relevant by the qrels or a chunk/copy of the positive."""
    from pipeline.given_queries import text_key
    from pipeline.ingest import normalize_text
    from pipeline.mining import document_of
    from pipeline.train.evaluate import load_beir
    from tests.jobkit import read_output

    corpus, queries, qrels = load_beir(folder, "train")
    relevant_text = {q: {text_key(corpus[d][1]) for d in docs if d in corpus} for q, docs in qrels.items()}
    by_text = {normalize_text(text): q for q, text in queries.items() if q in qrels}
    out = read_output(output)
    counts = {"examples": len(out["examples"]), "negatives": 0, "qrel_document": 0, "copy_of_a_qrel": 0,
              "chunk_or_copy_of_positive": 0}
    for e in out["examples"]:
        query = by_text[e["query"]]
        docs = set(qrels[query])
        for n in e["hard_negatives"]:
            counts["negatives"] += 1
            key = text_key(n["text"])
            if document_of(n["id"]) in docs or n["id"] in docs:
                counts["qrel_document"] += 1
            elif key in relevant_text[query]:
                counts["copy_of_a_qrel"] += 1
            elif document_of(n["id"]) == document_of(e["positive"]["id"]) or key == text_key(e["positive"]["text"]):
                counts["chunk_or_copy_of_positive"] += 1
    false = counts["qrel_document"] + counts["copy_of_a_qrel"] + counts["chunk_or_copy_of_positive"]
    counts["false_negative_share"] = false / counts["negatives"] if counts["negatives"] else None
    counts["written"] = out["manifest"]["written"]
    counts["tokens"] = sum(u.get("prompt_sent", 0) for u in out["manifest"].get("tokens", {}).values())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "false_negatives.json"))
    parser.add_argument("--work", default="", help="a folder of an earlier invocation: finished runs are reused")
    args = parser.parse_args()
    from beam_jobs.cli import main as fret
    from pipeline.testing.stub_llm import StubLLM

    tmp = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fret-fn-"))
    before_tree = tmp / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), BEFORE], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    results = {"commit": commit.strip(), "before": BEFORE, "queries": args.queries, "mining": " ".join(MINING),
               "sets": {}}
    try:
        with StubLLM() as stub:
            for name in args.sets:
                folder = tmp / name / "data"
                if not (folder / "queries.jsonl").exists():
                    subset(SETS[name], folder, args.queries)
                rows = results["sets"][name] = {"before": [], "after": [], "retrieval": None, "seconds": {}}
                for seed in (0, 1, 2):
                    out = tmp / name / f"before-{seed}"
                    rows["seconds"][f"before-{seed}"] = run(before_tree, folder, out, stub.base_url, *MINING,
                                                            "--seed", str(seed))
                    rows["before"].append(audit(out, folder))
                    print(name, "before", seed, rows["before"][-1], flush=True)
                after = tmp / name / "after-0"
                rows["seconds"]["after-0"] = run(ROOT, folder, after, stub.base_url, *MINING, "--seed", "0")
                rows["after"].append(audit(after, folder))
                for seed in (1, 2):  # the same scores, mined again with another seed: no request
                    out = tmp / name / f"after-{seed}"
                    sent = len(stub.requests)
                    assert (out / "manifest.json").exists() or fret(["remine", str(after), "--output", str(out), "--seed", str(seed)]) == 0
                    assert len(stub.requests) == sent, "remine sent a request"
                    rows["after"].append(audit(out, folder))
                print(name, "after", rows["after"], flush=True)
                out = tmp / name / "retrieval"
                rows["seconds"]["retrieval"] = run(ROOT, folder, out, "http://127.0.0.1:9", "--scores", "retrieval",
                                                   "--relabel", "never", "--negative_strategy", "top",
                                                   "--num_negatives", "5", "--num_neighbors", "20")
                rows["retrieval"] = audit(out, folder)
                print(name, "retrieval", rows["retrieval"], flush=True)
                for kind in ("before", "after"):
                    shares = [r["false_negative_share"] for r in rows[kind]]
                    rows[f"{kind}_share_mean"] = statistics.mean(shares)
                    rows[f"{kind}_share_sd"] = statistics.stdev(shares)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps({n: {k: v for k, v in r.items() if k.endswith(("mean", "sd"))} | {
        "retrieval": r["retrieval"]["false_negative_share"]} for n, r in results["sets"].items()}, indent=2))


if __name__ == "__main__":
    main()
