"""Differential test: with the same embeddings, `--scores retrieval --relabel never` mines the
negatives that sentence-transformers' mine_hard_negatives mines at the same settings, option by
option (range, absolute and relative margin, max and min score, top and random sampling)."""

import numpy as np
import pytest
import torch

from pipeline.examples import build_example
from pipeline.mining import MiningConfig
from pipeline.rerank import build_candidates, fuse
from pipeline.retrieval import exact_scores
from schemas import Passage, QueryRecord

DIM, CORPUS, QUERIES = 24, 90, 25


class FixedEmbeddings:
    """What mine_hard_negatives calls on a SentenceTransformer, answering from a table of vectors:
    both sides then rank the same embeddings, whatever either would compute."""

    device = torch.device("cpu")

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def _encode(self, texts, **_):
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)

    encode = encode_document = encode_query = _encode

    def similarity(self, a, b):
        return torch.as_tensor(a) @ torch.as_tensor(b).T

    def similarity_pairwise(self, a, b):
        return (torch.as_tensor(a) * torch.as_tensor(b)).sum(-1)


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _data(seed: int):
    rng = np.random.default_rng(seed)
    corpus = _unit(rng.normal(size=(CORPUS, DIM)))
    positives = rng.choice(CORPUS, size=QUERIES, replace=False)
    # a query near its positive, as real pairs are, so that margins have something to drop
    queries = _unit(corpus[positives] + rng.normal(scale=0.9, size=(QUERIES, DIM)))
    texts = [f"passage {j}" for j in range(CORPUS)]
    query_texts = [f"query {i}" for i in range(QUERIES)]
    return corpus, queries, positives, texts, query_texts


def _fret(corpus, queries, positives, texts, query_texts, config: MiningConfig, neighbours: int):
    out = {}
    for i, q in enumerate(queries):
        scores = exact_scores(q, corpus)
        order = sorted(range(CORPUS), key=lambda j: (-scores[j], texts[j]))[:neighbours]
        hits = [(float(scores[j]), f"d{j:03d}", "", texts[j]) for j in order]
        seed = Passage(id=f"d{positives[i]:03d}", text=texts[positives[i]], source_id="s", chunk=0)
        candidates = build_candidates(seed, [hits], neighbours, float(scores[positives[i]]))
        nan = [float("nan")] * len(candidates)
        query = QueryRecord(query_id=f"q{i}", passage_id=seed.id, task="t", query=query_texts[i])
        scored = fuse(query, candidates, nan, nan, nan, [{}] * len(candidates), 0.0, scores=("retrieval",))
        example = build_example(query, scored, config)
        out[query_texts[i]] = [n.text for n in example.hard_negatives]
    return out


def _st(corpus, queries, positives, texts, query_texts, **settings):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    vectors = {**dict(zip(texts, corpus)), **dict(zip(query_texts, queries))}
    pairs = Dataset.from_dict({"query": query_texts, "positive": [texts[p] for p in positives]})
    mined = mine_hard_negatives(pairs, FixedEmbeddings(vectors), corpus=texts, output_format="triplet",
                                verbose=False, **settings)
    out = {q: [] for q in query_texts}
    for row in mined:
        out[row["query"]].append(row["negative"])
    return out


# (fret's MiningConfig fields, mine_hard_negatives' arguments): one row per option, then all at once
SETTINGS = [
    ({"num_negatives": 3, "range_max": 12}, {"num_negatives": 3, "range_max": 12}),
    ({"num_negatives": 3, "range_min": 4, "range_max": 12}, {"num_negatives": 3, "range_min": 4, "range_max": 12}),
    ({"num_negatives": 4, "range_max": 30, "absolute_margin": 0.1},
     {"num_negatives": 4, "range_max": 30, "absolute_margin": 0.1}),
    ({"num_negatives": 4, "range_max": 30, "relative_margin": 0.05},
     {"num_negatives": 4, "range_max": 30, "relative_margin": 0.05}),
    ({"num_negatives": 4, "range_max": 30, "max_score": 0.2}, {"num_negatives": 4, "range_max": 30, "max_score": 0.2}),
    ({"num_negatives": 4, "range_max": 30, "min_score": 0.25}, {"num_negatives": 4, "range_max": 30, "min_score": 0.25}),
    ({"num_negatives": 5, "range_min": 2, "range_max": 40, "absolute_margin": 0.02, "relative_margin": 0.1,
      "max_score": 0.5, "min_score": -0.2},
     {"num_negatives": 5, "range_min": 2, "range_max": 40, "absolute_margin": 0.02, "relative_margin": 0.1,
      "max_score": 0.5, "min_score": -0.2}),
]


@pytest.mark.parametrize("fret_settings,st_settings", SETTINGS,
                         ids=["range_max", "range_min", "absolute_margin", "relative_margin", "max_score",
                              "min_score", "all"])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_sampling_mines_what_mine_hard_negatives_mines(fret_settings, st_settings, seed):
    data = _data(seed)
    config = MiningConfig(strategy="top", relabel="never", margin_score="retrieval", **fret_settings)
    ours = _fret(*data, config, neighbours=fret_settings["range_max"] + 2)
    theirs = _st(*data, sampling_strategy="top", **st_settings)
    assert ours == theirs
    assert sum(map(len, ours.values())) > 0


def test_random_sampling_draws_from_the_same_candidates():
    """Random draws differ by generator; what each draws from must not: the candidates that the
    range and the score limits keep, the same number of them."""
    data = _data(3)
    limits = {"range_min": 1, "range_max": 20, "relative_margin": 0.05, "max_score": 0.6}
    config = MiningConfig(strategy="random", relabel="never", margin_score="retrieval", num_negatives=3, **limits)
    ours = _fret(*data, config, neighbours=22)
    everything = _st(*data, sampling_strategy="top", num_negatives=19, **limits)
    theirs = _st(*data, sampling_strategy="random", num_negatives=3, **limits)
    for query, pool in everything.items():
        assert len(ours[query]) == len(theirs[query]) == min(3, len(pool))
        assert set(ours[query]) <= set(pool) and set(theirs[query]) <= set(pool)
        assert ours[query] == [t for t in pool if t in ours[query]], "hardest first, as sentence-transformers sorts"
