"""Losses against hand-computed values on tiny tensors."""

import math

import pytest
import torch

from pipeline.train.losses import GeckoInfoNCE, MatryoshkaLoss, TextKeys, XTRLoss, xtr_scores

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


def test_trainer_text_keys_number_equal_texts_alike():
    from pipeline.train.trainer import text_keys

    keys = text_keys(["a", "b", "a"], ["x", "y", "z"], ["y", "w", "x", "x", "z", "v"], 2, "cpu")
    assert keys.query.tolist() == [0, 1, 0]
    assert keys.positive.tolist() == [0, 1, 2]
    assert keys.negatives.tolist() == [[1, 3], [0, 0], [2, 4]]


def test_matryoshka_is_the_sum_over_truncated_dims():
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 2, 8)
    base = GeckoInfoNCE(0.05)
    expected = base(q, p, n) + base(q[:, :4], p[:, :4], n[..., :4]) + base(q[:, :2], p[:, :2], n[..., :2])
    assert MatryoshkaLoss(base, (8, 4, 2))(q, p, n).item() == pytest.approx(expected.item(), rel=1e-6)
    weighted = MatryoshkaLoss(base, (8, 4), weights=(1.0, 0.5))(q, p, n)
    assert weighted.item() == pytest.approx((base(q, p, n) + 0.5 * base(q[:, :4], p[:, :4], n[..., :4])).item(),
                                            rel=1e-6)
    with pytest.raises(ValueError):
        MatryoshkaLoss(base, (16,))(q, p, n)
    split = MatryoshkaLoss(base, (8, 4), negatives_min_dim=8)(q, p, n)  # the 4-dim slice without negatives
    assert split.item() == pytest.approx((base(q, p, n) + base(q[:, :4], p[:, :4])).item(), rel=1e-6)


def test_train_config_weights_pair_with_the_full_size_then_mrl_dims():
    from pipeline.train.trainer import TrainConfig, build_loss

    config = TrainConfig(data="d", output="o", mrl_dims=(4, 2), mrl_weights=(1.0, 0.5, 2.0))
    loss = build_loss(config, dim=8)
    assert loss.dims == (8, 4, 2) and loss.weights == (1.0, 0.5, 2.0)
    # A size at or above the model's is dropped with its weight: the full size keeps the first.
    loss = build_loss(TrainConfig(data="d", output="o", mrl_dims=(16, 4), mrl_weights=(3.0, 9.0, 0.5)), dim=8)
    assert loss.dims == (8, 4) and loss.weights == (3.0, 0.5)
    assert build_loss(TrainConfig(data="d", output="o", mrl_dims=(4,)), dim=8).weights == (1.0, 1.0)
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


def test_xtr_loss_prefers_the_aligned_document():
    q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    docs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    masks = torch.ones(2, 1, dtype=torch.bool)
    good = XTRLoss(k_train=2, temperature=0.1)(q, masks, docs, masks)
    bad = XTRLoss(k_train=2, temperature=0.1)(q, masks, docs.flip(0), masks)
    assert good.item() < bad.item()
