"""Training objectives: Gecko's InfoNCE with Matryoshka dimensions, and XTR's token retrieval."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TextKeys(NamedTuple):
    """One integer per text of a batch; equal keys mean equal texts.

    query (B,), positive (B,), negatives (B, k) or None.
    """

    query: torch.Tensor
    positive: torch.Tensor
    negatives: Optional[torch.Tensor] = None


class GeckoInfoNCE(nn.Module):
    """InfoNCE over cosine similarity / temperature, as in Gecko (Lee et al. 2024, eq. 3).

    For query q_i with positive p_i, the denominator sums exp(s/τ) over
      - the in-batch positives p_j (j = i is the numerator's own term),
      - the same-tower negatives q_j, j != i (other queries of the batch),
      - the query's own hard negatives p_i^-,
      - with batch_negatives, the other queries' hard negatives p_j^- as well (not in Gecko's
        eq. 3; sentence-transformers' MultipleNegativesRankingLoss and NV-Retriever do this).
    Each term can be switched off; the positive always stays.

    Given TextKeys, a column whose text is the row's own positive (a duplicate positive, or a
    mined negative that is another query's positive) or the row's own query is left out: it is no
    negative, as sentence-transformers' no-duplicates batches ensure. With symmetric, the loss is
    the mean of that and the reverse direction, where each positive p_i picks its query q_i among
    the batch's queries (sentence-transformers' MultipleNegativesSymmetricRankingLoss; not Gecko).

    Args:
        temperature: τ (Gecko: 0.05).
        in_batch: include the other queries' positives.
        same_tower: include the other queries.
        hard_negatives: include the query's mined hard negatives.
        batch_negatives: with hard_negatives, every hard negative of the batch counts for every query.
        symmetric: add the positive-to-query direction and average the two.

    Inputs: q (B, d), p (B, d), negatives (B, k, d) or None, negative_mask (B, k) bool or None,
    keys: TextKeys or None.

    Example:
        >>> loss = GeckoInfoNCE(0.05)(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 1, 8))
    """

    def __init__(self, temperature: float = 0.05, in_batch: bool = True, same_tower: bool = True,
                 hard_negatives: bool = True, batch_negatives: bool = False, symmetric: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0 (Gecko uses 0.05)")
        self.temperature = temperature
        self.in_batch, self.same_tower, self.hard_negatives = in_batch, same_tower, hard_negatives
        self.batch_negatives, self.symmetric = batch_negatives, symmetric

    def forward(self, q: torch.Tensor, p: torch.Tensor, negatives: Optional[torch.Tensor] = None,
                negative_mask: Optional[torch.Tensor] = None, keys: Optional[TextKeys] = None) -> torch.Tensor:
        q = F.normalize(q, dim=-1)  # (B, d)
        p = F.normalize(p, dim=-1)  # (B, d)
        batch = q.shape[0]
        eye = torch.eye(batch, dtype=torch.bool, device=q.device)  # (B, B)
        same_positive = (keys.positive[:, None] == keys.positive[None, :]) & ~eye if keys else None  # (B, B)
        same_query = (keys.query[:, None] == keys.query[None, :]) & ~eye if keys else None  # (B, B)
        qp = q @ p.T / self.temperature  # (B, B): s(q_i, p_j)
        if not self.in_batch:
            qp = qp.masked_fill(~eye, float("-inf"))  # keep only s(q_i, p_i)
        elif keys:
            qp = qp.masked_fill(same_positive, float("-inf"))  # p_j is q_i's own positive text
        columns = [qp]
        if self.same_tower:
            qq = (q @ q.T / self.temperature).masked_fill(eye, float("-inf"))  # (B, B): s(q_i, q_j), j != i
            if keys:
                qq = qq.masked_fill(same_query, float("-inf"))  # q_j is q_i's own text
            columns.append(qq)
        if self.hard_negatives and negatives is not None and negatives.shape[1] > 0:
            n = F.normalize(negatives, dim=-1)  # (B, k, d)
            if self.batch_negatives:
                qn = q @ n.reshape(-1, n.shape[-1]).T / self.temperature  # (B, B*k): s(q_i, p_j^-)
                mask = negative_mask.reshape(1, -1).expand_as(qn) if negative_mask is not None else None
            else:
                qn = torch.einsum("bd,bkd->bk", q, n) / self.temperature  # (B, k): s(q_i, p_i^-)
                mask = negative_mask
            if keys and keys.negatives is not None:
                own = (keys.negatives.reshape(1, -1) == keys.positive[:, None] if self.batch_negatives
                       else keys.negatives == keys.positive[:, None])  # (B, B*k) or (B, k)
                mask = ~own if mask is None else mask & ~own
            if mask is not None:
                qn = qn.masked_fill(~mask, float("-inf"))  # padding, and a row's own positive, do not count
            columns.append(qn)
        logits = torch.cat(columns, dim=1)  # (B, B [+ B] [+ k or B*k])
        targets = torch.arange(batch, device=q.device)  # (B,): p_i sits in column i
        loss = F.cross_entropy(logits, targets)  # scalar
        if self.symmetric:
            pq = qp.T if not keys else qp.T.masked_fill(same_query, float("-inf"))  # (B, B): s(p_i, q_j)
            loss = (loss + F.cross_entropy(pq, targets)) / 2
        return loss


class MatryoshkaLoss(nn.Module):
    """Sum of a base loss over leading slices of the embeddings (MRL, Kusupati et al. 2022).

    Args:
        base: a loss taking (q, p, negatives, negative_mask) embeddings, e.g. GeckoInfoNCE.
        dims: embedding sizes to train, e.g. (384, 256, 128, 64); each slice is re-normalised
            by the base loss (cosine).
        weights: one weight per dimension (default 1 each).
        negatives_min_dim: sizes below this train without the hard negatives (in-batch terms only).

    Example:
        >>> mrl = MatryoshkaLoss(GeckoInfoNCE(), dims=(8, 4))
        >>> loss = mrl(torch.randn(4, 8), torch.randn(4, 8))
    """

    def __init__(self, base: nn.Module, dims: Sequence[int], weights: Optional[Sequence[float]] = None,
                 negatives_min_dim: int = 0):
        super().__init__()
        if not dims or any(d < 1 for d in dims):
            raise ValueError("dims must be positive embedding sizes, e.g. (384, 256, 128, 64)")
        if weights is not None and len(weights) != len(dims):
            raise ValueError("give one weight per dimension")
        self.base, self.dims = base, tuple(dims)
        self.weights = tuple(weights) if weights is not None else (1.0,) * len(dims)
        self.negatives_min_dim = negatives_min_dim

    def forward(self, q: torch.Tensor, p: torch.Tensor, negatives: Optional[torch.Tensor] = None,
                negative_mask: Optional[torch.Tensor] = None, keys: Optional[TextKeys] = None) -> torch.Tensor:
        if max(self.dims) > q.shape[-1]:
            raise ValueError(f"MRL dimension {max(self.dims)} exceeds the embedding size {q.shape[-1]}")
        total = q.new_zeros(())  # scalar
        for dim, weight in zip(self.dims, self.weights):
            n = negatives[..., :dim] if negatives is not None and dim >= self.negatives_min_dim else None  # (B, k, dim)
            total = total + weight * self.base(q[:, :dim], p[:, :dim], n, negative_mask, keys)  # scalar
        return total


def xtr_scores(q_tokens: torch.Tensor, q_mask: torch.Tensor, d_tokens: torch.Tensor, d_mask: torch.Tensor,
               k_train: int, z_min: float = 1e-3) -> torch.Tensor:
    """XTR's training-time query-document scores (Lee et al. 2023, eq. 3 with eq. 2's alignment).

    Â_ij = 1 when document token j is among the top-k_train tokens that query token i retrieves
    from *all* documents of the batch; f(q, D) = (1/Z) Σ_i max_j Â_ij q_i·d_j, with Z the number
    of query tokens that retrieved at least one token of D, clipped below at z_min so that a
    document no query token retrieved scores 0.

    Inputs: q_tokens (B, Lq, d), q_mask (B, Lq) bool, d_tokens (N, Ld, d), d_mask (N, Ld) bool,
    all token vectors already normalised. Returns (B, N) scores.
    """
    b, lq, _ = q_tokens.shape
    n, ld, _ = d_tokens.shape
    sims = torch.einsum("bid,njd->binj", q_tokens, d_tokens)  # (B, Lq, N, Ld)
    sims = sims.masked_fill(~d_mask[None, None], float("-inf"))  # padding tokens are never retrieved
    flat = sims.reshape(b, lq, n * ld)  # (B, Lq, N*Ld): every token of the batch's documents
    k = min(k_train, int(d_mask.sum().item()))
    top = flat.topk(k, dim=-1).indices  # (B, Lq, k)
    retrieved = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, top, True)  # (B, Lq, N*Ld): Â
    retrieved = retrieved.reshape(b, lq, n, ld) & d_mask[None, None]  # (B, Lq, N, Ld)
    aligned = torch.where(retrieved, sims, torch.zeros_like(sims))  # (B, Lq, N, Ld): Â_ij q_i·d_j
    best = aligned.max(dim=-1).values  # (B, Lq, N): max_j Â_ij q_i·d_j (0 when nothing retrieved)
    hit = retrieved.any(dim=-1) & q_mask[:, :, None]  # (B, Lq, N): query token i retrieved part of D
    best = best * hit  # (B, Lq, N): padding query tokens contribute nothing
    z = hit.sum(dim=1).clamp(min=z_min)  # (B, N): Z, clipped
    return best.sum(dim=1) / z  # (B, N)


class XTRLoss(nn.Module):
    """Cross-entropy over XTR scores of each query against all documents of the batch.

    Args:
        k_train: tokens each query token retrieves from the batch (XTR: a few times the batch
            size; must be small enough to leave some documents unretrieved).
        temperature: scores are divided by this before the softmax.

    Inputs: q_tokens (B, Lq, d), q_mask (B, Lq), d_tokens (N, Ld, d), d_mask (N, Ld), where the
    first B documents are the positives of the B queries (the rest are hard negatives).
    """

    def __init__(self, k_train: int = 64, temperature: float = 0.05):
        super().__init__()
        if k_train < 1 or temperature <= 0:
            raise ValueError("k_train must be >= 1 and temperature > 0")
        self.k_train, self.temperature = k_train, temperature

    def forward(self, q_tokens, q_mask, d_tokens, d_mask) -> torch.Tensor:
        q_tokens = F.normalize(q_tokens, dim=-1)  # (B, Lq, d)
        d_tokens = F.normalize(d_tokens, dim=-1)  # (N, Ld, d)
        scores = xtr_scores(q_tokens, q_mask, d_tokens, d_mask, self.k_train) / self.temperature  # (B, N)
        targets = torch.arange(q_tokens.shape[0], device=scores.device)  # (B,)
        return F.cross_entropy(scores, targets)  # scalar
