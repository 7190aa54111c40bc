"""Mining time without an LLM: `fret run --scores retrieval` against sentence-transformers'
mine_hard_negatives, the same embedder (all-MiniLM-L6-v2, its own length), exact search, the
same settings (relative margin 0.05, 3 negatives, top sampling), one run each, side by side.

    .venv/bin/python bench/mining_speed.py [--passages 100000] [--queries 2000] [--peer-batch-size 32]

The corpus: sentences of the manpages set (scripts/make_manpages_retrieval.py) packed into
passages of about 60 words, as many as asked; each query is the first words of a passage, which
is its positive. Wall seconds of each whole call (embedding included; the job from the command
to its manifest, on the DirectRunner). The peer's encode batch (--peer-batch-size: its default 32,
or the best of bench/embed_batching.py) is its one speed setting; fret runs its defaults. Writes
bench/results/mining_speed.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CACHE, ROOT, emit

from pipeline.train.evaluate import write_beir


def corpus(n: int, n_queries: int, folder: Path) -> Path:
    sentences = []
    with open(CACHE / "manpages-retrieval" / "corpus.jsonl") as f:
        for line in f:
            text = json.loads(line)["text"]
            sentences += [s.strip() for s in text.replace("\n", " ").split(". ") if len(s.split()) >= 4]
    rng = random.Random(0)
    passages = []
    while len(passages) < n:
        words = []
        while len(words) < 60:
            words += rng.choice(sentences).split()
        passages.append(" ".join(words[:60]) + f" [{len(passages)}]")
    chosen = rng.sample(range(n), n_queries)
    return write_beir(folder, {f"d{i}": ("", text) for i, text in enumerate(passages)},
                      {f"q{i}": " ".join(passages[d].split()[:12]) for i, d in enumerate(chosen)},
                      {f"q{i}": {f"d{d}": 1} for i, d in enumerate(chosen)}, split="train")


def fret(folder: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "beam_jobs.fret_job", "--input", str(folder / "corpus.jsonl"), "--queries",
                    str(folder), "--output", str(out), "--llm_url", "http://127.0.0.1:9", "--scores", "retrieval",
                    "--relabel", "never", "--negative_strategy", "top", "--num_negatives", "3",
                    "--negative_relative_margin", "0.05", "--num_neighbors", "33", "--negative_range", "0,31",
                    "--near_dup_threshold", "0", "--wave_size", "0", "--progress", "false"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def peer(folder: Path, batch_size: int = 32) -> float:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from pipeline.embedding import resolve_model_path
    from pipeline.train.evaluate import load_beir

    start = time.perf_counter()
    docs, queries, qrels = load_beir(folder, "train")
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    pairs = Dataset.from_dict({"query": [queries[q] for q in sorted(qrels)],
                               "positive": [docs[next(iter(qrels[q]))][1] for q in sorted(qrels)]})
    mine_hard_negatives(pairs, model, corpus=[t for _, t in docs.values()], relative_margin=0.05, num_negatives=3,
                        sampling_strategy="top", output_format="n-tuple", verbose=False, batch_size=batch_size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--peer-batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fret-speed-") as name:  # the corpus and fret's output go after
        tmp = Path(name)
        folder = corpus(args.passages, args.queries, tmp / "data")
        theirs = peer(folder, args.peer_batch_size)
        ours = fret(folder, tmp / "out")
    emit("mining_speed", [{"miner": "mine_hard_negatives", "seconds": round(theirs, 1)},
                          {"miner": "fret run --scores retrieval", "seconds": round(ours, 1)}],
         ["miner", "seconds"], {"passages": args.passages, "queries": args.queries,
                                "peer_batch_size": args.peer_batch_size, "fret_speed_vs_peer": theirs / ours})


if __name__ == "__main__":
    main()
