"""Exact top-N retrieval, sharded: search every index shard, then merge per query.

Memory per worker is bounded by one shard (plus a query batch), never the whole corpus. Ties
break on passage id, and each pool is scored exactly, so sharded and single-index search, and
any grouping of queries into calls, return the same lists.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Iterable, Sequence

import numpy as np

# Queries per faiss call. faiss scores in tiles of its own (4,096 queries x 1,024 passages), so a
# big block costs no matrix of every score; blocks of 256 ran 5x slower at 384-d (bench/library_checks.py).
QUERY_BLOCK = 4096


@dataclasses.dataclass(frozen=True, order=True)
class Hit:
    neg_score: float  # sorted ascending = score descending
    passage_id: str

    @property
    def score(self) -> float:
        return -self.neg_score


def shard_of(passage_id: str, num_shards: int) -> int:
    import zlib

    return zlib.crc32(passage_id.encode("utf-8", "surrogatepass")) % num_shards


def search_shard(query_vectors: np.ndarray, doc_vectors: np.ndarray, doc_ids: Sequence[str], k: int
                 ) -> list[list[Hit]]:
    """Top-k by inner product (cosine for unit vectors) of each query within one shard.

    faiss's exact k-NN (faiss.knn: no index, so no copy of the shard) picks a pool of k + 8 per
    query, 1.7x to 3.6x faster than numpy's product with torch.topk on 2 cores (bench/
    library_checks.py). Its float32 scores depend on which queries share a call (by ~1e-7:
    BLAS kernels differ with the block's shape), and the runner decides the blocks, so the pool
    is ranked again by exact_scores, which does not. A pool whose tail is within noise of the
    k-th score is widened to every column that noise could lift past it. Ties break on id."""
    if len(doc_ids) == 0 or len(query_vectors) == 0:
        return [[] for _ in range(len(query_vectors))]
    import faiss

    docs = np.ascontiguousarray(doc_vectors, dtype=np.float32)
    k_here = min(k, len(doc_ids))
    extra = min(len(doc_ids), k_here + 8)
    out: list[list[Hit]] = []
    for start in range(0, len(query_vectors), QUERY_BLOCK):
        block = np.ascontiguousarray(query_vectors[start:start + QUERY_BLOCK], dtype=np.float32)
        values, columns = faiss.knn(block, docs, extra, metric=faiss.METRIC_INNER_PRODUCT)  # (b, extra), sorted
        for row, (row_values, row_columns) in enumerate(zip(values, columns)):
            floor = row_values[k_here - 1] - NOISE
            if row_values[-1] >= floor and extra < len(doc_ids):
                every, every_columns = faiss.knn(block[row:row + 1], docs, len(doc_ids),
                                                 metric=faiss.METRIC_INNER_PRODUCT)  # (1, n), sorted
                row_columns = every_columns[0, :int(np.searchsorted(-every[0], -floor, side="right"))]
            scores = exact_scores(block[row], docs[row_columns])
            hits = sorted(Hit(-float(v), doc_ids[c]) for v, c in zip(scores, row_columns.tolist()))
            out.append(hits[:k_here])
    return out


# How far apart two float32 scorings of one pair can land (measured 1.2e-7 between query blocks
# of unit vectors at 384-d); a candidate this close to the k-th may belong in the top k.
NOISE = 1e-5


def exact_scores(query: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """The query's inner product with each row, the same whatever else is scored beside it: each
    float32 product is exact in float64, and each row's sum takes the same order (numpy's
    pairwise sum over one contiguous row); no BLAS kernel picks the order by the call's shape."""
    return (docs.astype(np.float64) * query.astype(np.float64)).sum(axis=1)


def merge_topk(partials: Iterable[Sequence[Hit]], k: int) -> list[Hit]:
    """Merge per-shard top-k lists into the global top-k."""
    return heapq.nsmallest(k, (h for part in partials for h in part))


def exact_search(query_vectors: np.ndarray, doc_vectors: np.ndarray, doc_ids: Sequence[str], k: int
                 ) -> list[list[Hit]]:
    """One exact search over the whole corpus: the reference the sharded search must equal."""
    return search_shard(query_vectors, doc_vectors, doc_ids, k)
