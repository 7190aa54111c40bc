"""fret eval's nDCG and recall are BEIR's: checked against pytrec_eval (trec_eval) on random graded qrels."""

import pytest
from hypothesis import given, settings, strategies as st

from pipeline.train.evaluate import _metrics, ndcg_at_k, recall_at_k, trec_metrics


def test_graded_gain_is_the_grade_itself():
    """qrels {a: 1, b: 2}, ranking a, b: trec_eval gives 0.8597 (2^rel - 1 gave 0.7967)."""
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 2}) == pytest.approx(0.8597, abs=1e-4)
    assert trec_metrics(["q"], [["a", "b"]], {"q": {"a": 1, "b": 2}})["ndcg@10"][0] == pytest.approx(0.8597, abs=1e-4)


docs = st.sampled_from([f"d{i}" for i in range(30)])


@settings(max_examples=150, deadline=None)
@given(queries=st.lists(st.tuples(st.dictionaries(docs, st.integers(0, 3), min_size=1, max_size=12),
                                  st.lists(docs, unique=True, max_size=30)), min_size=1, max_size=6))
def test_per_query_metrics_equal_pytrec_eval(queries):
    import pytrec_eval

    qids = [f"q{i}" for i in range(len(queries))]
    qrels = {q: rel for q, (rel, _) in zip(qids, queries)}
    ranked = [r for _, r in queries]
    ours = trec_metrics(qids, ranked, qrels)
    run = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in zip(qids, ranked) if r}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10,100"})
    theirs = evaluator.evaluate(run)
    for i, q in enumerate(qids):
        expected = theirs.get(q, {})
        assert ndcg_at_k(ranked[i], qrels[q]) == pytest.approx(expected.get("ndcg_cut_10", 0.0), abs=1e-9)
        assert recall_at_k(ranked[i], qrels[q], 10) == pytest.approx(expected.get("recall_10", 0.0), abs=1e-9)
        assert recall_at_k(ranked[i], qrels[q], 100) == pytest.approx(expected.get("recall_100", 0.0), abs=1e-9)
        assert ours["ndcg@10"][i] == pytest.approx(expected.get("ndcg_cut_10", 0.0), abs=1e-9)
    summary = _metrics(qids, ranked, qrels)
    assert summary["queries"] == len(qids)
    assert summary["ndcg@10"] == pytest.approx(sum(ours["ndcg@10"]) / len(qids))
