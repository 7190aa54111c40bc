"""Our InfoNCE and XTR scores against sentence-transformers' own on random inputs: the same value
to 1e-5 wherever the two express the same objective (Matryoshka is sentence-transformers' own).

What ST's MultipleNegativesRankingLoss expresses of GeckoInfoNCE: in-batch positives with every
hard negative of the batch (batch_negatives), the same-tower term (direction query_to_query,
joint softmax) and the symmetric term (doc_to_query, per-direction softmax, averaged). Ours
stays for what ST has no switch for: a query's own negatives only (Gecko's eq. 3), no in-batch
positives, and --mask-duplicates' masking of a column whose text is the row's own positive.
"""

import math

import torch
from hypothesis import given, settings, strategies as st
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from pipeline.train.losses import GeckoInfoNCE, GeckoRankingLoss, column_keys, xtr_scores
from tests.loss_models import TableModel, text_features


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


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 9), negatives=st.integers(0, 3),
       temperature=st.sampled_from([0.05, 0.5]), config=configs)
def test_the_trainers_loss_is_mnrl_when_every_negative_is_real_and_texts_differ(seed, batch, negatives, temperature,
                                                                              config):
    """GeckoRankingLoss, the loss fret train hands sentence-transformers' trainer, on its columns
    and labels: with every negative column real and no text repeated, the masks change nothing."""
    ours_settings, directions, mode = config
    q, p, n = embeddings(seed, batch, negatives, 16)
    columns = [q, p, *n.unbind(1)]
    keys = column_keys([text_features([[c * 100 + i + 1] for i in range(batch)]) for c in range(len(columns))])
    loss = GeckoRankingLoss(TableModel(q), temperature=temperature, **ours_settings)
    ours = loss.compute_loss_from_embeddings(columns, (torch.full((batch,), negatives), keys))
    theirs = st_loss(q, p, n, temperature, directions, mode)
    assert math.isclose(float(ours), float(theirs), rel_tol=1e-5, abs_tol=1e-5), (float(ours), float(theirs))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), queries=st.integers(1, 4), documents=st.integers(1, 3),
       tokens=st.integers(1, 5), k=st.integers(1, 30))
def test_xtr_scores_equal_sentence_transformers_multi_vector_xtr(seed, queries, documents, tokens, k):
    """Ours takes a flat list of documents (ragged negatives); ST's groups them per query. On the
    same documents, in its query-major order, the scores agree."""
    from sentence_transformers.multi_vector_encoder.scoring.xtr import xtr_scores as st_xtr

    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(queries, tokens, 8, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(queries, documents, tokens + 1, 8, generator=g), dim=-1)
    q_mask = torch.rand(queries, tokens, generator=g) > 0.2
    q_mask[:, 0] = True
    d_mask = torch.rand(queries, documents, tokens + 1, generator=g) > 0.2
    d_mask[..., 0] = True
    flat, flat_mask = d.reshape(-1, tokens + 1, 8), d_mask.reshape(-1, tokens + 1)
    ours = xtr_scores(q, q_mask, flat, flat_mask, k_train=k)
    theirs = st_xtr(q, d, q_mask, d_mask, top_k=k)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
