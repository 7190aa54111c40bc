"""Search over index shards, merged per query, equals one exact search over the whole corpus."""

import numpy as np
import pytest

from pipeline.retrieval import exact_search, merge_topk, search_shard, shard_of


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("num_shards", [1, 3, 7, 50])
def test_sharded_topk_equals_single_exact_search(num_shards):
    rng = np.random.default_rng(num_shards)
    docs, queries = unit(rng, 400, 32), unit(rng, 25, 32)
    ids = [f"p{i:04d}" for i in range(len(docs))]
    expected = exact_search(queries, docs, ids, 20)
    shards = {}
    for i, pid in enumerate(ids):
        shards.setdefault(shard_of(pid, num_shards), []).append(i)
    partials = [search_shard(queries, docs[rows], [ids[r] for r in rows], 20) for rows in shards.values()]
    merged = [merge_topk([p[q] for p in partials], 20) for q in range(len(queries))]
    assert [[h.passage_id for h in hits] for hits in merged] == [[h.passage_id for h in hits] for hits in expected]
    # And the exact search really is exact: compare with a full sort.
    full = queries @ docs.T
    for q, hits in enumerate(expected):
        assert [h.passage_id for h in hits] == [ids[i] for i in np.argsort(-full[q], kind="stable")[:20]]
        assert [h.score for h in hits] == pytest.approx(sorted(full[q], reverse=True)[:20], rel=1e-5)


def test_ties_break_on_id_so_every_sharding_agrees():
    docs = np.ones((10, 4), dtype=np.float32) / 2.0
    ids = [f"p{i}" for i in reversed(range(10))]
    hits = exact_search(docs[:1], docs, ids, 3)[0]
    assert [h.passage_id for h in hits] == ["p0", "p1", "p2"]


def test_small_shards_and_empty_inputs():
    rng = np.random.default_rng(0)
    docs, queries = unit(rng, 3, 8), unit(rng, 2, 8)
    assert all(len(h) == 3 for h in search_shard(queries, docs, ["a", "b", "c"], 20))
    assert search_shard(queries, docs[:0], [], 5) == [[], []]
    assert merge_topk([[], []], 5) == []
