"""Our InfoNCE and Matryoshka losses against sentence-transformers' own on random embeddings:
the same value to 1e-5 wherever the two express the same objective.

What ST's MultipleNegativesRankingLoss expresses of GeckoInfoNCE: in-batch positives with every
hard negative of the batch (batch_negatives), the same-tower term (direction query_to_query,
joint softmax) and the symmetric term (doc_to_query, per-direction softmax, averaged). Ours
stays for what ST has no switch for: a query's own negatives only (Gecko's eq. 3), no in-batch
positives, and --mask-duplicates' masking of a column whose text is the row's own positive.
"""

import math

import torch
from hypothesis import given, settings, strategies as st
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss as STMatryoshka
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch import nn

from pipeline.train.losses import GeckoInfoNCE, MatryoshkaLoss


class TableModel(nn.Module):
    """Stands for a SentenceTransformer: features["rows"] picks rows of a fixed embedding table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, features):
        return {"sentence_embedding": self.table[features["rows"]]}

    def _get_untruncated_embedding_dimension(self) -> int:
        return self.table.shape[1]

    def get_embedding_dimension(self) -> int:
        return self.table.shape[1]


def embeddings(seed: int, batch: int, negatives: int, dim: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dim, generator=g, dtype=torch.float64),
            torch.randn(batch, dim, generator=g, dtype=torch.float64),
            torch.randn(batch, negatives, dim, generator=g, dtype=torch.float64))


def st_loss(q, p, n, temperature, directions, partition_mode):
    model = TableModel(torch.cat([q, p, *n.unbind(1)]))
    loss = MultipleNegativesRankingLoss(model, scale=1 / temperature, directions=directions,
                                        partition_mode=partition_mode)
    return loss.compute_loss_from_embeddings([q, p, *n.unbind(1)], None)


configs = st.sampled_from([
    # (ours, ST's directions, ST's partition mode)
    (dict(same_tower=False, batch_negatives=True), ("query_to_doc",), "joint"),
    (dict(same_tower=True, batch_negatives=True), ("query_to_doc", "query_to_query"), "joint"),
    (dict(same_tower=False, batch_negatives=True, symmetric=True), ("query_to_doc", "doc_to_query"), "per_direction"),
])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 9), negatives=st.integers(0, 3),
       dim=st.sampled_from([4, 16]), temperature=st.sampled_from([0.05, 0.5, 1.0]), config=configs)
def test_infonce_equals_multiple_negatives_ranking_loss(seed, batch, negatives, dim, temperature, config):
    ours_settings, directions, mode = config
    q, p, n = embeddings(seed, batch, negatives, dim)
    ours = GeckoInfoNCE(temperature, **ours_settings)(q, p, n if negatives else None)
    theirs = st_loss(q, p, n, temperature, directions, mode)
    assert math.isclose(float(ours), float(theirs), rel_tol=1e-5, abs_tol=1e-5), (float(ours), float(theirs))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 8), negatives=st.integers(0, 2),
       weights=st.lists(st.floats(0.25, 2.0), min_size=3, max_size=3))
def test_matryoshka_equals_sentence_transformers_matryoshka(seed, batch, negatives, weights):
    dims = (32, 16, 8)
    q, p, n = embeddings(seed, batch, negatives, 32)
    ours = MatryoshkaLoss(GeckoInfoNCE(0.05, same_tower=False, batch_negatives=True), dims, weights)(
        q, p, n if negatives else None)
    model = TableModel(torch.cat([q, p, *n.unbind(1)]))
    theirs = STMatryoshka(model, MultipleNegativesRankingLoss(model, scale=20.0), matryoshka_dims=list(dims),
                          matryoshka_weights=list(weights))
    columns = [{"rows": torch.arange(i * batch, (i + 1) * batch)} for i in range(2 + negatives)]
    value = theirs(columns, None)
    assert math.isclose(float(ours), float(value), rel_tol=1e-5, abs_tol=1e-5), (float(ours), float(value))
