"""The local embedder's batches: sentence-transformers' `encode` with fixed batches of N texts
(its default 32, and 8 to 64) against fret's Embedder, which sorts texts by token count and cuts
batches of at most --embed-batch-tokens padded tokens. Same model (all-MiniLM-L6-v2), same texts,
one process; each setting runs once per round, rounds interleave the settings, so a noisy machine
weighs on every setting alike. Vectors are checked equal (max abs difference).

    .venv/bin/python bench/embed_batching.py [--texts 1024] [--rounds 2]

Sets: `uniform` (the mining-speed corpus: 60-word passages packed from manpages sentences) and
`manpages` (the manpages set's documents, which the model cuts at 256 tokens). Writes
bench/results/embed_batching.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CACHE, emit
from mining_speed import corpus  # the same packed passages as the mining-speed bench

ST_BATCHES = (8, 16, 32, 64)
TOKEN_BUDGETS = (1024, 2048, 4096)


def texts_of(name: str, n: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="fret-embed-") as tmp:
        path = (corpus(max(n, 2000), 10, Path(tmp) / "data") / "corpus.jsonl" if name == "uniform"
                else CACHE / "manpages-retrieval" / "corpus.jsonl")
        with open(path) as f:
            return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from pipeline.embedding import Embedder

    embedder = Embedder("all-MiniLM-L6-v2")
    model = embedder.model
    rows, summary = [], {"texts": args.texts, "rounds": args.rounds}
    for name in ("uniform", "manpages"):
        texts = texts_of(name, args.texts)
        lengths = embedder.encoded_lengths(texts)
        reference = model.encode(texts, batch_size=32, normalize_embeddings=True)
        settings = [(f"st batch {b}", lambda b=b: model.encode(texts, batch_size=b, normalize_embeddings=True))
                    for b in ST_BATCHES]
        for budget in TOKEN_BUDGETS:
            def ours(budget=budget):
                embedder.batch_tokens = budget
                return embedder.encode(texts)
            settings.append((f"fret {budget} tokens", ours))
        rates: dict[str, list[float]] = {label: [] for label, _ in settings}
        diffs: dict[str, float] = {}
        for _ in range(args.rounds):
            for label, run in settings:
                start = time.perf_counter()
                vectors = run()
                rates[label].append(len(texts) / (time.perf_counter() - start))
                diffs[label] = float(np.abs(np.asarray(vectors) - reference).max())
        peer_default = statistics.fmean(rates["st batch 32"])
        peer_best = max(statistics.fmean(rates[f"st batch {b}"]) for b in ST_BATCHES)
        for label, _ in settings:
            mean = statistics.fmean(rates[label])
            rows.append({"set": name, "setting": label, "texts_per_s": round(mean, 1),
                         "sd": round(statistics.pstdev(rates[label]), 1),
                         "vs_st_32": round(mean / peer_default, 3), "vs_st_best": round(mean / peer_best, 3),
                         "max_abs_diff": f"{diffs[label]:.1e}"})
        summary[name] = {"tokens_mean": statistics.fmean(lengths), "tokens_max": max(lengths),
                         "fret_2048_vs_st_best": statistics.fmean(rates["fret 2048 tokens"]) / peer_best}
    emit("embed_batching", rows, ["set", "setting", "texts_per_s", "sd", "vs_st_32", "vs_st_best", "max_abs_diff"],
         summary)


if __name__ == "__main__":
    main()
