"""Search over index shards, merged per query, equals one exact search over the whole corpus."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

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


@pytest.mark.parametrize("num_shards", [1, 2, 4, 9])
def test_a_tie_wider_than_the_pool_still_breaks_on_id(num_shards):
    """40 identical vectors, k = 3: every index and every sharding returns p00, p01, p02. The
    per-shard pool of k + 8 once cut the tie at an arbitrary 11 of the 40 (p01, p09, p10)."""
    docs = np.ones((40, 8), dtype=np.float32) / np.sqrt(8, dtype=np.float32)
    ids = [f"p{i:02d}" for i in range(40)]
    order = np.random.default_rng(num_shards).permutation(40)  # ids in no particular order in the matrix
    docs, ids = docs[order], [ids[i] for i in order]
    shards = {}
    for i, pid in enumerate(ids):
        shards.setdefault(shard_of(pid, num_shards), []).append(i)
    partials = [search_shard(docs[:1], docs[rows], [ids[r] for r in rows], 3)[0] for rows in shards.values()]
    assert [h.passage_id for h in merge_topk(partials, 3)] == ["p00", "p01", "p02"]
    assert [h.passage_id for h in exact_search(docs[:1], docs, ids, 3)[0]] == ["p00", "p01", "p02"]


def test_ties_in_the_middle_of_random_scores_match_a_full_sort():
    """Random scores with many exact ties (vectors drawn from a few values): the sharded search
    equals numpy's full sort by (score descending, id)."""
    rng = np.random.default_rng(11)
    docs = rng.integers(0, 3, size=(300, 6)).astype(np.float32)
    queries = rng.integers(0, 3, size=(20, 6)).astype(np.float32)
    ids = [f"d{i:03d}" for i in rng.permutation(300)]
    full = queries @ docs.T
    for q in range(len(queries)):
        expected = sorted(range(300), key=lambda j: (-full[q, j], ids[j]))[:15]
        for num_shards in (1, 5):
            shards = {}
            for i, pid in enumerate(ids):
                shards.setdefault(shard_of(pid, num_shards), []).append(i)
            partials = [search_shard(queries[q:q + 1], docs[rows], [ids[r] for r in rows], 15)[0]
                        for rows in shards.values()]
            assert [h.passage_id for h in merge_topk(partials, 15)] == [ids[j] for j in expected]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 120), d=st.sampled_from([4, 16, 48]), k=st.integers(1, 30), seed=st.integers(0, 2**16),
       levels=st.sampled_from([0, 2, 3]))
def test_search_against_faiss_and_a_float64_brute_force(n, d, k, seed, levels):
    """Random vectors (levels > 0: drawn from a few values, so exact ties abound). Ours equals a
    float64 brute force ordered by (score desc, id) wherever neighbouring scores are more than
    float64 noise apart (the pool is rescored exactly), and faiss IndexFlatIP finds the same top-k scores."""
    import faiss

    rng = np.random.default_rng(seed)
    draw = (lambda m: rng.integers(0, levels, size=(m, d)).astype(np.float32)) if levels else (lambda m: unit(rng, m, d))
    docs, queries = draw(n), draw(5)
    ids = [f"x{i:03d}" for i in rng.permutation(n)]
    ours = exact_search(queries, docs, ids, k)
    exact = queries.astype(np.float64) @ docs.astype(np.float64).T
    index = faiss.IndexFlatIP(d)
    index.add(docs)
    faiss_scores, _ = index.search(queries, min(k, n))
    for q, hits in enumerate(ours):
        assert len(hits) == min(k, n)
        expected = sorted(range(n), key=lambda j: (-exact[q, j], ids[j]))[:len(hits)]
        assert np.allclose([h.score for h in hits], exact[q, expected], atol=1e-5)
        assert np.allclose([h.score for h in hits], faiss_scores[q], atol=1e-5)
        if levels:  # small whole numbers: every score is exact in float32, so ties are exact too
            assert [h.passage_id for h in hits] == [ids[j] for j in expected]
            continue
        for rank, (h, j) in enumerate(zip(hits, expected)):
            near = np.abs(exact[q] - exact[q, j]) < 1e-12
            if near.sum() == 1:  # no other score within float64 noise: the same passage, at the same rank
                assert h.passage_id == ids[j], (q, rank)


def test_a_query_gets_the_same_hits_whatever_queries_share_its_call():
    """The runner decides which queries are searched together, and faiss's float32 scores of one
    pair move by ~1e-7 with the call's shape. Near-ties 1e-8 apart must still come out in one
    order, with one score, whether a query is searched alone, with all, or in a random block."""
    rng = np.random.default_rng(7)
    base = unit(rng, 9_000, 384)  # faiss scores fewer than 20 queries without BLAS: other sums, other bits
    near = base[:1_000] + rng.standard_normal((1_000, 384)).astype(np.float32) * 1e-8  # near-twins
    docs = np.concatenate([base, near / np.linalg.norm(near, axis=1, keepdims=True)])
    ids = [f"d{i:04d}" for i in range(len(docs))]
    queries = np.concatenate([docs[:60] + unit(rng, 60, 384) * 0.05, unit(rng, 60, 384)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    together = search_shard(queries, docs, ids, 10)
    alone = [search_shard(queries[i:i + 1], docs, ids, 10)[0] for i in range(len(queries))]
    order = rng.permutation(len(queries))
    shuffled = {}
    for block in np.array_split(order, 9):
        for i, hits in zip(block, search_shard(queries[block], docs, ids, 10)):
            shuffled[int(i)] = hits
    for i in range(len(queries)):
        assert together[i] == alone[i] == shuffled[i], i
