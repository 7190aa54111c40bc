"""RRF, ranks and every mining strategy against hand-computed values."""

import math

import pytest

from pipeline.fusion import expected_relevance, ranks_desc, rrf, top_label_logprob
from pipeline.mining import MiningConfig, choose_positive, mine_negatives
from pipeline.rerank import Candidate, fuse
from schemas import QueryKnobs, QueryRecord

QUERY = QueryRecord(query_id="q1", passage_id="seed", task="t", query="q",
                    knobs=QueryKnobs(query_length="short", difficulty="easy"))


def test_ranks_are_one_based_descending_with_tiebreak():
    assert ranks_desc([0.1, 0.9, 0.5], [0, 1, 2]) == [3, 1, 2]
    assert ranks_desc([1.0, 1.0, 0.0], ["b", "a", "c"]) == [2, 1, 3]
    assert ranks_desc([float("nan"), 0.0], [0, 1]) == [2, 1]  # NaN never outranks a real score


def test_rrf_gecko_k0_hand_computed():
    ql_ranks, rc_ranks = [1, 2, 3], [3, 1, 2]
    assert rrf([ql_ranks, rc_ranks]) == pytest.approx([1 + 1 / 3, 1 / 2 + 1, 1 / 3 + 1 / 2])
    assert rrf([ql_ranks, rc_ranks], k=60) == pytest.approx([1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62])
    with pytest.raises(ValueError):
        rrf([[1, 2], [1]])
    with pytest.raises(ValueError):
        rrf([[1]], k=-1)


def test_expected_relevance_zhuang():
    values = {"hi": 2.0, "some": 1.0, "not": 0.0}
    logprobs = {"hi": math.log(0.2), "some": math.log(0.2), "not": math.log(0.1)}  # normalised: .4 .4 .2
    assert expected_relevance(logprobs, values) == pytest.approx(0.4 * 2 + 0.4 * 1)
    assert top_label_logprob(logprobs, "hi") == pytest.approx(math.log(0.4))


def candidates(n):
    out = [Candidate("seed", "", "seed text", True, 3, 0.7)]
    out += [Candidate(f"p{i}", "", f"text {i}", False, i, 1 - i / 100) for i in range(1, n + 1) if i != 3]
    return out


def test_fuse_relabels_when_llm_prefers_a_neighbour():
    cands = [Candidate("seed", "", "s", True, 1, 0.9), Candidate("a", "", "a", False, 2, 0.8),
             Candidate("b", "", "b", False, 3, 0.7)]
    # QL prefers a, then seed, then b; RC prefers a, then b, then seed.
    scored = fuse(QUERY, cands, ql=[-5.0, -1.0, -9.0], ql_mean=[-1, -0.2, -1.8], rc=[0.5, 1.9, 1.0],
                  rc_labels=[{}, {}, {}], rrf_k=0)
    by_id = {c.passage_id: c for c in scored}
    assert by_id["a"].fused == pytest.approx(2.0) and by_id["a"].fused_rank == 1
    assert by_id["seed"].fused == pytest.approx(1 / 2 + 1 / 3)
    assert by_id["b"].fused == pytest.approx(1 / 3 + 1 / 2)
    # seed and b tie on fused; summed ranks tie too (5); retrieval rank breaks it: seed first.
    assert by_id["seed"].fused_rank == 2 and by_id["b"].fused_rank == 3
    assert choose_positive(scored).passage_id == "a"


def scored_list(n=20):
    """Candidates whose fused rank equals their index + 1 and rc falls with rank."""
    cands = candidates(n)
    m = len(cands)
    ql = [-(i + 1.0) for i in range(m)]
    rc = [2.0 - i * 0.1 for i in range(m)]
    return fuse(QUERY, cands, ql=ql, ql_mean=ql, rc=rc, rc_labels=[{}] * m, rrf_k=0)


def ids(negatives):
    return [n.passage_id for n in negatives]


def test_lowest_takes_p_n_then_upwards():
    scored = scored_list()
    positive = choose_positive(scored)
    assert positive.passage_id == "seed"
    assert ids(mine_negatives(scored, positive, "q1", MiningConfig("lowest", 1))) == ["p20"]
    assert ids(mine_negatives(scored, positive, "q1", MiningConfig("lowest", 3))) == ["p20", "p19", "p18"]


def test_random_is_seeded_and_excludes_the_positive():
    scored = scored_list()
    positive = choose_positive(scored)
    a = mine_negatives(scored, positive, "q1", MiningConfig("random", 5, seed=1))
    b = mine_negatives(scored, positive, "q1", MiningConfig("random", 5, seed=1))
    c = mine_negatives(scored, positive, "q1", MiningConfig("random", 5, seed=2))
    assert ids(a) == ids(b) and ids(a) != ids(c) and len(set(ids(a))) == 5
    assert positive.passage_id not in ids(a)


def test_rank_window_uses_fused_ranks():
    scored = scored_list()
    positive = choose_positive(scored)
    got = mine_negatives(scored, positive, "q1", MiningConfig("rank_window", 3, window=(5, 6)))
    assert [n.fused_rank for n in got] == [5, 6]


def test_margin_drops_candidates_too_close_to_the_positive():
    scored = scored_list()
    positive = choose_positive(scored)  # rc = 2.0
    got = mine_negatives(scored, positive, "q1", MiningConfig("margin", 2, margin=0.95, margin_score="rc"))
    # rc = 2.0 - 0.1 * i; kept iff rc < 1.9, so ranks 2 (1.9) is dropped, ranks 3 and 4 are the hardest left.
    assert [n.fused_rank for n in got] == [3, 4]
    assert all(n.rc < 0.95 * positive.rc for n in got)


def test_margin_on_log_probabilities_never_keeps_candidates_above_the_positive():
    """With --rc-score top_label_logprob the scores are log-probabilities: 0.95 x log P(positive)
    lies above it, so a margin applied to them would keep exactly the near-positives. The margin
    applies to P(top label) instead."""
    cands = candidates(6)
    m = len(cands)
    # log P(top label): positive (seed) log(0.9); then 0.88 (within 5%: not a negative), 0.5, 0.3, ...
    probs = [0.9, 0.88, 0.5, 0.3, 0.2, 0.1][:m]
    scored = fuse(QUERY, cands, ql=[-(i + 1.0) for i in range(m)], ql_mean=[-(i + 1.0) for i in range(m)],
                  rc=[math.log(p) for p in probs], rc_labels=[{}] * m, rrf_k=0)
    positive = choose_positive(scored)
    assert positive.passage_id == "seed"
    config = MiningConfig("margin", 3, margin=0.95, margin_score="rc", rc_kind="top_label_logprob")
    got = mine_negatives(scored, positive, "q1", config)
    assert [round(math.exp(n.rc), 2) for n in got] == [0.5, 0.3, 0.2]
    assert all(n.rc < positive.rc for n in got)
    # Read as a probability-like score, the same log-probabilities would invert the margin.
    wrong = mine_negatives(scored, positive, "q1", MiningConfig("margin", 3, margin=0.95, margin_score="rc"))
    assert [n.fused_rank for n in wrong] != [n.fused_rank for n in got]


def test_margin_on_query_likelihood_uses_per_token_probability():
    cands = candidates(5)
    m = len(cands)
    ql_mean = [-0.10, -0.12, -0.5, -1.0, -2.0][:m]  # per-token probs .905 .887 .607 .368 .135
    scored = fuse(QUERY, cands, ql=[v * 10 for v in ql_mean], ql_mean=ql_mean,
                  rc=[2.0 - i * 0.1 for i in range(m)], rc_labels=[{}] * m, rrf_k=0)
    positive = choose_positive(scored)
    got = mine_negatives(scored, positive, "q1", MiningConfig("margin", 5, margin=0.95, margin_score="ql"))
    assert [n.ql_mean for n in got] == [-0.5, -1.0, -2.0]  # -0.12 is within 5% of the positive: dropped
    fused = mine_negatives(scored, positive, "q1", MiningConfig("margin", 5, margin=0.95, margin_score="fused"))
    assert fused and all(n.fused < 0.95 * positive.fused for n in fused)


def test_a_relabelled_seed_is_never_a_negative():
    cands = [Candidate("seed", "", "s", True, 2, 0.9), Candidate("a", "", "a", False, 1, 0.95),
             Candidate("b", "", "b", False, 3, 0.1)]
    scored = fuse(QUERY, cands, ql=[-3.0, -1.0, -2.0], ql_mean=[-3.0, -1.0, -2.0], rc=[0.1, 2.0, 1.0],
                  rc_labels=[{}] * 3, rrf_k=0)
    positive = choose_positive(scored)
    assert positive.passage_id == "a"
    assert ids(mine_negatives(scored, positive, "q1", MiningConfig("lowest", 2))) == ["b"]
    with_seed = mine_negatives(scored, positive, "q1", MiningConfig("lowest", 2, exclude_seed=False))
    assert ids(with_seed) == ["seed", "b"]


def test_mining_config_is_validated():
    with pytest.raises(ValueError, match="margin"):
        MiningConfig(margin=1.5)
    with pytest.raises(ValueError, match="window"):
        MiningConfig(window=(5, 2))


def _scored(rows, query=QUERY):
    """rows: (id, text, is_seed, retrieval rank), already in the fused order the test wants."""
    cands = [Candidate(pid, "", text, seed, rank, 0.5) for pid, text, seed, rank in rows]
    n = len(cands)
    return fuse(query, cands, ql=[-float(i) for i in range(n)], ql_mean=[-float(i) for i in range(n)],
                rc=[float(n - i) for i in range(n)], rc_labels=[{}] * n, rrf_k=0)


def test_chunks_of_a_known_positive_and_of_the_seed_document_are_never_negatives():
    """Issue 37, defect 1: known positive `k` was split into k#0, k#1 and both were mined
    (negatives ['p#1', 'x', 'k#1', 'k#0']); the seed document's other chunk too."""
    query = QUERY.model_copy(update={"passage_id": "p#0", "known_positive_ids": ["k"]})
    scored = _scored([("p#0", "seed chunk", True, 1), ("p#1", "seed's next chunk", False, 2),
                      ("x", "unrelated", False, 3), ("k#1", "known, second chunk", False, 4),
                      ("k#0", "known, first chunk", False, 5)], query)
    positive = choose_positive(scored)
    assert positive.passage_id == "p#0"
    config = MiningConfig("lowest", 4)
    assert ids(mine_negatives(scored, positive, "q1", config, query.known_positive_ids)) == ["x"]
    from pipeline.mining import never_negatives

    assert never_negatives(scored, positive, config, query.known_positive_ids) == {
        "p#1": "chunk_of_a_positive", "k#1": "chunk_of_a_positive", "k#0": "chunk_of_a_positive"}


def test_a_copy_of_the_positives_text_under_another_id_is_never_a_negative():
    """Issue 37, defect 2: the kept copy (same text, other id) of a known positive was mined."""
    query = QUERY.model_copy(update={"passage_id": "", "known_positive_ids": ["a"]})
    scored = _scored([("a", "the same text", False, 1), ("c", "the  same text", False, 2),
                      ("d", "other text", False, 3)], query)
    positive = choose_positive(scored)
    assert positive.passage_id == "a"
    assert ids(mine_negatives(scored, positive, "q1", MiningConfig("lowest", 3), query.known_positive_ids)) == ["d"]
    # a copy of the relabelled positive's text, with no known positive at all
    scored = _scored([("seed", "seed text", True, 1), ("b", "winner", False, 2), ("b2", "winner", False, 3),
                      ("e", "else", False, 4)])
    winner = next(c for c in scored if c.passage_id == "b")
    assert ids(mine_negatives(scored, winner, "q1", MiningConfig("lowest", 3))) == ["e"]


def test_relabel_never_keeps_the_seed_or_given_positive():
    scored = _scored([("a", "best", False, 1), ("seed", "seed text", True, 2), ("b", "b", False, 3)])
    assert choose_positive(scored).passage_id == "a"  # Gecko relabels
    never = MiningConfig("lowest", 2, relabel="never")
    positive = choose_positive(scored, never)
    assert positive.passage_id == "seed"
    assert ids(mine_negatives(scored, positive, "q1", never)) == ["b", "a"]
    no_seed = _scored([("a", "best", False, 1), ("b", "b", False, 2)])
    assert choose_positive(no_seed, never).passage_id == "a"  # a query without a positive still gets one
    with pytest.raises(ValueError, match="relabel"):
        MiningConfig(relabel="sometimes")


def test_the_chunks_and_copies_of_an_extra_positive_are_never_negatives():
    """The demo's audit found them: a chunk of an extra positive's document was written as a negative."""
    from pipeline.mining import never_negatives
    from schemas import CandidateScore

    def cand(pid, rank, rc, text=None):
        return CandidateScore(passage_id=pid, text=text or f"text of {pid}", is_seed=pid == "s", retrieval_rank=rank,
                              retrieval_score=1 - rank / 10, ql=-1.0, ql_mean=-0.5, rc=rc, fused=1 / rank,
                              fused_rank=rank)

    scored = [cand("s", 1, 1.0), cand("x#0", 2, 1.8), cand("x#1", 3, 0.2), cand("copy", 4, 0.1, "text of x#0"),
              cand("other", 5, 0.1)]
    config = MiningConfig("lowest", 3, relabel="never", extra_score="rc")
    ruled = never_negatives(scored, scored[0], config)
    assert ruled == {"x#0": "extra_positive", "x#1": "chunk_of_a_positive", "copy": "duplicate_of_a_positive"}
