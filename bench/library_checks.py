"""Hand-written pieces timed beside the library that does the same job, in one run, same inputs.

Each row is one job: ours (what fret-distill runs) and the library's, seconds for the same
work (best of `--repeats`), and the ratio library / ours (> 1: ours is faster). The equality
of the results is checked by the tests named in each row, not here.

    .venv/bin/python bench/library_checks.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

import numpy as np

from common import emit


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _topk_search(query_vectors, doc_vectors, doc_ids, k: int):
    """search_shard as it was before faiss (commit 8e14d7a's, with the tie widening): numpy's
    product and torch.topk per block of 256 queries, then the same Hit lists."""
    import torch

    from pipeline.retrieval import Hit

    k_here = min(k, len(doc_ids))
    extra = min(len(doc_ids), k_here + 8)
    out = []
    for start in range(0, len(query_vectors), 256):
        scores = torch.from_numpy(np.ascontiguousarray(query_vectors[start:start + 256] @ doc_vectors.T))
        values, columns = torch.topk(scores, extra, dim=1, sorted=True)
        for row_values, row_columns in zip(values.tolist(), columns.tolist()):
            out.append(sorted(Hit(-v, doc_ids[c]) for v, c in zip(row_values, row_columns))[:k_here])
    return out


def search_rows(repeats: int) -> list[dict]:
    from pipeline.retrieval import search_shard

    rows = []
    rng = np.random.default_rng(0)
    for docs_n, dim, queries_n in ((50_000, 384, 2_048), (50_000, 64, 4_096)):
        docs, queries = unit(rng, docs_n, dim), unit(rng, queries_n, dim)
        ids = [f"p{i}" for i in range(docs_n)]
        before = best(lambda: _topk_search(queries, docs, ids, 20), repeats)
        now = best(lambda: search_shard(queries, docs, ids, 20), repeats)
        rows.append({"job": f"exact top-20, {queries_n} queries x one {docs_n // 1000}k shard, {dim}-d",
                     "ours": "numpy matmul + torch.topk (before)", "library": "faiss.knn (now, in search_shard)",
                     "ours_s": before, "library_s": now, "library_over_ours": now / before,
                     "checked_by": "tests/test_retrieval.py::test_search_against_faiss_and_a_float64_brute_force"})
    return rows


def _blake2b_bands(text: str, rows: int, bands: int) -> list[str]:
    """The MinHash this project ran before datasketch: one blake2b per shingle and permutation."""
    from pipeline.filtering import shingles

    grams = shingles(text)

    def h(value, salt):
        return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8, salt=salt.to_bytes(8, "little")).digest(),
                              "little")

    signature = [min(h(g, seed) for g in grams) for seed in range(bands * rows)]
    return [f"{b}:" + ",".join(map(str, signature[b * rows:(b + 1) * rows])) for b in range(bands)]


def minhash_rows(repeats: int) -> list[dict]:
    from pipeline.filtering import NearDupConfig, minhash_bands

    rng = random.Random(0)
    words = ("how do i read write parse a json csv file list dict string value key error type class method "
             "python module function return").split()
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) for _ in range(2_000)]
    config = NearDupConfig()
    before = best(lambda: [_blake2b_bands(q, config.rows, config.bands) for q in queries], repeats)
    now = best(lambda: [minhash_bands(q, config) for q in queries], repeats)
    return [{"job": f"MinHash LSH band keys, 2,000 queries ({config.bands} bands x {config.rows} rows)",
             "ours": "blake2b per shingle and seed (before)", "library": "datasketch MinHash (now)",
             "ours_s": before, "library_s": now, "library_over_ours": now / before,
             "queries_per_s_before": len(queries) / before, "queries_per_s_now": len(queries) / now,
             "checked_by": "tests/test_ingest_and_filters.py::test_our_lsh_bands_find_exactly_what_datasketch_"
                           "minhashlsh_finds"}]


def metric_rows(repeats: int) -> list[dict]:
    from pipeline.train.evaluate import ndcg_at_k, recall_at_k, trec_metrics

    rng = random.Random(1)
    docs = [f"d{i}" for i in range(5_000)]
    qids = [f"q{i}" for i in range(5_000)]
    qrels = {q: {d: rng.randint(1, 3) for d in rng.sample(docs, rng.randint(1, 5))} for q in qids}
    ranked = [rng.sample(docs, 100) for _ in qids]

    def ours():
        for q, r in zip(qids, ranked):
            ndcg_at_k(r, qrels[q])
            recall_at_k(r, qrels[q], 10)
            recall_at_k(r, qrels[q], 100)

    ours_s = best(ours, repeats)
    theirs = best(lambda: trec_metrics(qids, ranked, qrels), repeats)
    return [{"job": "nDCG@10, Recall@10/100 of 5,000 queries x 100 results", "ours": "per-query Python",
             "library": "pytrec_eval (fret eval uses it)", "ours_s": ours_s, "library_s": theirs,
             "library_over_ours": theirs / ours_s,
             "checked_by": "tests/test_eval_metrics.py::test_per_query_metrics_equal_pytrec_eval"}]


def loss_rows(repeats: int) -> list[dict]:
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from pipeline.train.losses import GeckoInfoNCE

    torch.manual_seed(0)
    q, p, n = torch.randn(256, 384), torch.randn(256, 384), torch.randn(256, 1, 384)
    ours_loss = GeckoInfoNCE(0.05, same_tower=True, batch_negatives=True)
    theirs_loss = MultipleNegativesRankingLoss(torch.nn.Identity(), scale=20.0,
                                               directions=("query_to_doc", "query_to_query"))
    ours = best(lambda: [ours_loss(q, p, n) for _ in range(20)], repeats)
    theirs = best(lambda: [theirs_loss.compute_loss_from_embeddings([q, p, n[:, 0]], None) for _ in range(20)],
                  repeats)
    return [{"job": "InfoNCE with same-tower and batch negatives, batch 256 x 384-d, 20 calls",
             "ours": "GeckoInfoNCE", "library": "sentence-transformers MultipleNegativesRankingLoss",
             "ours_s": ours, "library_s": theirs, "library_over_ours": theirs / ours,
             "checked_by": "tests/test_losses_vs_st.py"}]


def quantile_rows(repeats: int) -> list[dict]:
    from pipeline.score_sketch import ScoreSketch

    values = np.random.default_rng(2).normal(size=200_000).tolist()

    def ours():
        parts = [ScoreSketch() for _ in range(4)]
        for i, v in enumerate(values):
            parts[i % 4].add(v)
        total = parts[0]
        for part in parts[1:]:
            total.merge(part)
        return total.quantile(0.5)

    ours_s = best(ours, repeats)
    theirs = best(lambda: np.quantile(np.asarray(values), 0.5), repeats)
    return [{"job": "mean, sd and median of 200,000 scores in 4 merged parts", "ours": "ScoreSketch (bounded memory)",
             "library": "numpy on every value (unbounded)", "ours_s": ours_s, "library_s": theirs,
             "library_over_ours": theirs / ours_s, "checked_by": "tests/test_score_sketch.py"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = (search_rows(args.repeats) + minhash_rows(args.repeats) + metric_rows(args.repeats)
            + loss_rows(args.repeats) + quantile_rows(args.repeats))
    emit("library_checks", rows, ["job", "ours", "library", "ours_s", "library_s", "library_over_ours"],
         {"repeats": args.repeats})


if __name__ == "__main__":
    main()
