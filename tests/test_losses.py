"""Losses against hand-computed values on tiny tensors."""

import math

import pytest
import torch

from pipeline.train.losses import GeckoInfoNCE, GeckoRankingLoss, TextKeys, XTRLoss, column_keys, xtr_scores
from tests.loss_models import TableModel, text_features

# Unit vectors, so cosine = dot product.
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
N = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])  # one hard negative per query
TAU = 0.5


def manual(terms_for_query):
    """-mean_i log(exp(pos_i) / sum(exp(all_i))) from lists of raw cosine scores."""
    losses = []
    for pos, others in terms_for_query:
        denom = math.exp(pos / TAU) + sum(math.exp(s / TAU) for s in others)
        losses.append(-math.log(math.exp(pos / TAU) / denom))
    return sum(losses) / len(losses)


def test_infonce_all_terms_hand_computed():
    # q0: pos 0.6; in-batch p1 0.8; same-tower q1 0.0; hard negative 0.0
    # q1: pos 0.6; in-batch p0 0.8; same-tower q0 0.0; hard negative 0.0
    expected = manual([(0.6, [0.8, 0.0, 0.0]), (0.6, [0.8, 0.0, 0.0])])
    got = GeckoInfoNCE(TAU)(Q, P, N)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("in_batch, same_tower, hard, others", [
    (False, False, False, []),
    (True, False, False, [0.8]),
    (False, True, False, [0.0]),
    (False, False, True, [0.0]),
])
def test_infonce_each_term_switches(in_batch, same_tower, hard, others):
    loss = GeckoInfoNCE(TAU, in_batch=in_batch, same_tower=same_tower, hard_negatives=hard)(Q, P, N)
    assert loss.item() == pytest.approx(manual([(0.6, others), (0.6, others)]), rel=1e-6, abs=1e-7)


def test_batch_negatives_add_the_other_queries_hard_negatives():
    # q0 also meets q1's hard negative (1, 0): cosine 1.0; q1 meets q0's (0, 1): 1.0
    loss = GeckoInfoNCE(TAU, batch_negatives=True)(Q, P, N)
    assert loss.item() == pytest.approx(manual([(0.6, [0.8, 0.0, 0.0, 1.0]), (0.6, [0.8, 0.0, 0.0, 1.0])]), rel=1e-6)
    masked = GeckoInfoNCE(TAU, batch_negatives=True)(Q, P, N, torch.tensor([[True], [False]]))
    # q1's negative is padding: it counts for neither query
    assert masked.item() == pytest.approx(manual([(0.6, [0.8, 0.0, 0.0]), (0.6, [0.8, 0.0, 1.0])]), rel=1e-6)


def test_padding_negatives_are_masked():
    mask = torch.tensor([[True], [False]])
    loss = GeckoInfoNCE(TAU)(Q, P, N, mask)
    assert loss.item() == pytest.approx(manual([(0.6, [0.8, 0.0, 0.0]), (0.6, [0.8, 0.0])]), rel=1e-6)


def test_symmetric_adds_the_positive_to_query_direction():
    # Reverse direction: p_1 = (0.6, 0.8) scores q_1 0.6 and q_2 0.8; p_2 = (0.8, 0.6) scores q_1 0.8, q_2 0.6.
    forward = manual([(0.6, [0.8, 0.0]), (0.6, [0.8, 0.0])])  # in-batch positive, hard negative
    backward = manual([(0.6, [0.8]), (0.6, [0.8])])
    loss = GeckoInfoNCE(TAU, same_tower=False, symmetric=True)(Q, P, N)
    assert loss.item() == pytest.approx((forward + backward) / 2, rel=1e-6)


def test_a_rows_own_positive_text_is_never_its_negative():
    # N[1] = (1, 0) is, by key, the same text as P[0]: q0 must not treat it as a negative.
    keys = TextKeys(query=torch.tensor([0, 1]), positive=torch.tensor([0, 1]), negatives=torch.tensor([[2], [0]]))
    loss = GeckoInfoNCE(TAU, same_tower=False, batch_negatives=True)(Q, P, N, keys=keys)
    # q0: in-batch p1 0.8, negatives n0 0.0 (n1 left out); q1: p0 0.8, n0 1.0, n1 0.0.
    assert loss.item() == pytest.approx(manual([(0.6, [0.8, 0.0]), (0.6, [0.8, 1.0, 0.0])]), rel=1e-6)
    unmasked = GeckoInfoNCE(TAU, same_tower=False, batch_negatives=True)(Q, P, N)
    assert unmasked.item() == pytest.approx(manual([(0.6, [0.8, 0.0, 1.0]), (0.6, [0.8, 1.0, 0.0])]), rel=1e-6)
    # Per-query negatives: q1's own negative is q0's positive text, which is not q1's positive: kept.
    per_query = GeckoInfoNCE(TAU, same_tower=False)(Q, P, N, keys=keys)
    assert per_query.item() == pytest.approx(manual([(0.6, [0.8, 0.0]), (0.6, [0.8, 0.0])]), rel=1e-6)


def test_duplicate_positives_and_queries_are_not_negatives():
    same_docs = TextKeys(query=torch.tensor([0, 1]), positive=torch.tensor([0, 0]))
    loss = GeckoInfoNCE(TAU, same_tower=False, hard_negatives=False)(Q, P, keys=same_docs)
    assert loss.item() == pytest.approx(manual([(0.6, []), (0.6, [])]), abs=1e-6)
    same_queries = TextKeys(query=torch.tensor([0, 0]), positive=torch.tensor([0, 1]))
    loss = GeckoInfoNCE(TAU, hard_negatives=False)(Q, P, keys=same_queries)  # same-tower q1 left out
    assert loss.item() == pytest.approx(manual([(0.6, [0.8]), (0.6, [0.8])]), rel=1e-6)
    symmetric = GeckoInfoNCE(TAU, same_tower=False, hard_negatives=False, symmetric=True)(Q, P, keys=same_queries)
    assert symmetric.item() == pytest.approx((manual([(0.6, [0.8])] * 2) + manual([(0.6, [])] * 2)) / 2, rel=1e-6)


def test_equal_texts_get_equal_keys_whatever_their_padding():
    # "a b" padded in one column and not in another; "a b c" differs only after the shared prefix
    queries = text_features([[5, 6], [5, 6, 7], [9]])
    docs = text_features([[5, 6], [8]])
    (q_keys,), (d_keys,) = column_keys([queries]), column_keys([docs])
    assert q_keys[0] == d_keys[0] and len({int(k) for k in q_keys}) == 3 and d_keys[1] not in q_keys


def test_a_size_below_negatives_min_dim_trains_without_the_hard_negatives():
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 2, 8)
    base = GeckoInfoNCE(0.05, same_tower=False, batch_negatives=True)
    loss = GeckoRankingLoss(TableModel(torch.randn(3, 8)), negatives_min_dim=8)
    labels = (torch.tensor([2, 2, 1, 0]), column_keys([text_features([[i + 10 * c] for i in range(4)])
                                                       for c in range(4)]))
    mask = torch.tensor([[True, True], [True, True], [True, False], [False, False]])
    full = loss.compute_loss_from_embeddings([q, p, n[:, 0], n[:, 1]], labels)
    assert full.item() == pytest.approx(base(q, p, n, mask).item(), rel=1e-6)  # padding copies masked
    cut = [x[..., :4] for x in (q, p, n[:, 0], n[:, 1])]
    small = loss.compute_loss_from_embeddings(cut, labels)
    assert small.item() == pytest.approx(base(q[:, :4], p[:, :4]).item(), rel=1e-6)
    assert small.item() != pytest.approx(base(q[:, :4], p[:, :4], n[..., :4], mask).item(), rel=1e-3)


def test_train_config_weights_pair_with_the_full_size_then_mrl_dims():
    from pipeline.train.trainer import TrainConfig, build_loss

    model = TableModel(torch.randn(3, 8))
    loss = build_loss(TrainConfig(data="d", output="o", mrl_dims=(4, 2), mrl_weights=(1.0, 0.5, 2.0)), model)
    assert loss.matryoshka_dims == (8, 4, 2) and loss.matryoshka_weights == (1.0, 0.5, 2.0)
    # A size at or above the model's is dropped with its weight: the full size keeps the first.
    loss = build_loss(TrainConfig(data="d", output="o", mrl_dims=(16, 4), mrl_weights=(3.0, 9.0, 0.5)), model)
    assert loss.matryoshka_dims == (8, 4) and loss.matryoshka_weights == (3.0, 0.5)
    assert build_loss(TrainConfig(data="d", output="o", mrl_dims=(4,)), model).matryoshka_weights == (1.0, 1.0)
    for bad in [(1.0,), (1.0, -1.0, 1.0), (0.0, 0.0, 0.0)]:
        with pytest.raises(ValueError):
            TrainConfig(data="d", output="o", mrl_dims=(4, 2), mrl_weights=bad)


def test_xtr_score_with_z_normalisation():
    # One query with two tokens; two documents with two tokens each (vectors already unit).
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    docs = torch.tensor([[[1.0, 0.0], [0.6, 0.8]],    # doc 0
                         [[0.8, 0.6], [0.0, -1.0]]])  # doc 1
    q_mask = torch.ones(1, 2, dtype=torch.bool)
    d_mask = torch.ones(2, 2, dtype=torch.bool)
    # k_train = 1: token 0 retrieves doc0.t0 (1.0); token 1 retrieves doc0.t1 (0.8).
    scores = xtr_scores(q, q_mask, docs, d_mask, k_train=1)
    assert scores[0, 0].item() == pytest.approx((1.0 + 0.8) / 2)  # Z = 2
    assert scores[0, 1].item() == pytest.approx(0.0)  # nothing retrieved from doc 1: Z clipped, score 0
    # k_train = 2: token 0 retrieves doc0.t0 (1.0) and doc1.t0 (0.8); token 1 retrieves doc0.t1 (0.8), doc1.t0 (0.6).
    scores = xtr_scores(q, q_mask, docs, d_mask, k_train=2)
    assert scores[0, 0].item() == pytest.approx((1.0 + 0.8) / 2)
    assert scores[0, 1].item() == pytest.approx((0.8 + 0.6) / 2)
    # Alone in the batch, doc 1 is retrieved by both query tokens.
    only_one = xtr_scores(q, q_mask, docs[1:], d_mask[1:], k_train=1)  # token0 -> 0.8, token1 -> 0.6
    assert only_one[0, 0].item() == pytest.approx((0.8 + 0.6) / 2)
    # A query of one token: Z = 1 for doc 0, and doc 1 is not retrieved.
    single = xtr_scores(q[:, :1], q_mask[:, :1], docs, d_mask, k_train=1)
    assert single[0, 0].item() == pytest.approx(1.0) and single[0, 1].item() == pytest.approx(0.0)


def test_xtr_ignores_padding_tokens():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    docs = torch.tensor([[[0.6, 0.8], [1.0, 0.0]]])
    d_mask = torch.tensor([[True, False]])  # the perfect match is padding
    scores = xtr_scores(q, torch.tensor([[True, False]]), docs, d_mask, k_train=1)
    assert scores[0, 0].item() == pytest.approx(0.6)  # only the real token, only the real query token


def _xtr_loss(tokens, rows, counts):
    model = TableModel(torch.zeros(len(tokens), 2), tokens)
    features = [{"rows": torch.tensor(r), "attention_mask": torch.ones(len(r), tokens.shape[1], dtype=torch.bool)}
                for r in rows]
    return XTRLoss(model, k_train=2, temperature=0.1)(features, torch.tensor(counts))


def test_xtr_loss_prefers_the_aligned_document():
    tokens = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # rows 0 and 1
    good = _xtr_loss(tokens, [[0, 1], [0, 1]], [0, 0])
    bad = _xtr_loss(tokens, [[0, 1], [1, 0]], [0, 0])
    assert good.item() < bad.item()


def test_xtr_loss_scores_only_real_negatives():
    """A padding copy (its row's positive again) must not be a document: the loss equals XTR over
    the positives and the one real negative."""
    torch.manual_seed(0)
    tokens = torch.nn.functional.normalize(torch.randn(7, 3, 4), dim=-1)
    padded = _xtr_loss(tokens, [[0, 1], [2, 3], [4, 3]], [1, 0])  # row 1's negative column repeats positive 3
    q_mask, d_mask = torch.ones(2, 3, dtype=torch.bool), torch.ones(3, 3, dtype=torch.bool)
    scores = xtr_scores(tokens[[0, 1]], q_mask, tokens[[2, 3, 4]], d_mask, k_train=2) / 0.1
    expected = torch.nn.functional.cross_entropy(scores, torch.arange(2))
    assert padded.item() == pytest.approx(expected.item(), rel=1e-5)
