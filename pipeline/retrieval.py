"""Exact top-N retrieval, sharded: search every index shard, then merge per query.

Memory per worker is bounded by one shard (plus a query batch), never the whole corpus. Ties
break on passage id, so sharded and single-index search return the same lists.
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
    library_checks.py). Ties are ours to break, on id: a tie that fills the whole pool may reach
    past it, and that row is widened to every column tied at the cut."""
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
        for row, (row_values, row_columns) in enumerate(zip(values.tolist(), columns.tolist())):
            cut = row_values[k_here - 1]
            if row_values[-1] == cut and extra < len(doc_ids):
                every, every_columns = faiss.knn(block[row:row + 1], docs, len(doc_ids),
                                                 metric=faiss.METRIC_INNER_PRODUCT)  # (1, n), sorted
                tied = int(np.searchsorted(-every[0], -cut, side="right"))  # every column scoring >= cut
                row_values, row_columns = every[0, :tied].tolist(), every_columns[0, :tied].tolist()
            hits = sorted(Hit(-v, doc_ids[c]) for v, c in zip(row_values, row_columns))
            out.append(hits[:k_here])
    return out


def merge_topk(partials: Iterable[Sequence[Hit]], k: int) -> list[Hit]:
    """Merge per-shard top-k lists into the global top-k."""
    return heapq.nsmallest(k, (h for part in partials for h in part))


def exact_search(query_vectors: np.ndarray, doc_vectors: np.ndarray, doc_ids: Sequence[str], k: int
                 ) -> list[list[Hit]]:
    """One exact search over the whole corpus: the reference the sharded search must equal."""
    return search_shard(query_vectors, doc_vectors, doc_ids, k)
