"""Memory of the decontamination side input for a large evaluation corpus, old and new side by side.

Old: a frozenset of n-gram strings (what LoadEvalNgrams built before). New: EvalIndex, the
sorted unique 64-bit keys of pipeline.decontamination (the same rule, hashed). Both are built
from the same synthetic corpus in one run; tracemalloc measures what each keeps and its peak.

    .venv/bin/python bench/decontam_memory.py [--passages 100000] [--words 80]
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
import tracemalloc

from common import emit

from pipeline.decontamination import DecontamConfig, EvalIndex
from pipeline.filtering import words


def corpus(n: int, mean_words: int, seed: int = 0) -> list[str]:
    """Zipf-ish word draws from a 50k vocabulary: n-grams of realistic variety and length spread."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(50_000)]
    cumulative = list(itertools.accumulate(1 / (i + 1) for i in range(len(vocab))))
    texts = []
    for _ in range(n):
        length = max(5, int(rng.gauss(mean_words, mean_words / 3)))
        texts.append(" ".join(rng.choices(vocab, cum_weights=cumulative, k=length)))
    return texts


def string_ngrams(texts, config: DecontamConfig) -> frozenset:
    """The old side input: every eval text's n-grams as strings (n = 13, or the whole short text)."""
    grams: set[str] = set()
    for text in texts:
        tokens = words(text)
        n = config.ngram
        if len(tokens) < n:
            grams.add(" ".join(tokens))
        else:
            grams.update(" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return frozenset(grams)


def measure(build):
    tracemalloc.start()
    t0 = time.perf_counter()
    value = build()
    seconds = time.perf_counter() - t0
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return value, kept, peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=80)
    args = parser.parse_args()
    texts = corpus(args.passages, args.words)
    config = DecontamConfig()
    rows = []
    new, new_kept, new_peak, new_s = measure(lambda: EvalIndex.build(texts, config))
    rows.append({"side_input": "EvalIndex (uint64 keys)", "entries": len(new), "kept_MiB": new_kept / 2**20,
                 "peak_MiB": new_peak / 2**20, "bytes_per_entry": new_kept / max(1, len(new)), "build_s": new_s})
    del new
    old, old_kept, old_peak, old_s = measure(lambda: string_ngrams(texts, config))
    rows.append({"side_input": "frozenset of n-gram strings", "entries": len(old), "kept_MiB": old_kept / 2**20,
                 "peak_MiB": old_peak / 2**20, "bytes_per_entry": old_kept / max(1, len(old)), "build_s": old_s})
    emit("decontam_memory", rows, ["side_input", "entries", "kept_MiB", "peak_MiB", "bytes_per_entry", "build_s"],
         {"passages": args.passages, "mean_words": args.words,
          "kept_ratio_new_over_old": new_kept / old_kept, "peak_ratio_new_over_old": new_peak / old_peak,
          "new_kept_MiB_per_million_passages": new_kept / 2**20 * 1e6 / args.passages})


if __name__ == "__main__":
    main()
