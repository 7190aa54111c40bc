"""Ranks and reciprocal rank fusion (Gecko: R(q,p) = 1/r_QL + 1/r_RC, with k = 0)."""

from __future__ import annotations

import math
from typing import Sequence


# Ranking precision. vLLM's scores move in their last bits with batch composition (another
# process on the cores changes which requests share a step): bench/score_noise.py measured the
# size of that noise. QL and RC are rounded to these decimals before they are ranked, so that
# scores equal up to noise rank the same, and equal rounded scores fall to the stable tiebreak.
QL_DECIMALS = 2  # summed log-probability of the query, nats
RC_DECIMALS = 3  # expected relevance (label units) or log P(top label)
CE_DECIMALS = 3  # a served cross-encoder's score (vLLM and TEI answer the sigmoid, in [0, 1])
# the embedder's cosine: the search ranks exact float64 products, but the query's vector moves in
# its last bits with the embedder's batch (pipeline.retrieval.NOISE bounds it)
RETRIEVAL_DECIMALS = 5


def quantise(values: Sequence[float], decimals: int) -> list[float]:
    """Round for ranking; non-finite values pass through (they rank last)."""
    return [round(v, decimals) if math.isfinite(v) else v for v in values]


def ranks_desc(scores: Sequence[float], tiebreak: Sequence[object]) -> list[int]:
    """1-based ranks, highest score first; equal scores are ordered by `tiebreak` ascending."""
    if len(scores) != len(tiebreak):
        raise ValueError("scores and tiebreak must have the same length")
    order = sorted(range(len(scores)), key=lambda i: (-_finite(scores[i]), tiebreak[i]))
    ranks = [0] * len(scores)
    for position, index in enumerate(order, start=1):
        ranks[index] = position
    return ranks


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def rrf(rank_lists: Sequence[Sequence[int]], k: float = 0.0) -> list[float]:
    """Reciprocal rank fusion: sum over rankings of 1 / (k + rank)."""
    if k < 0:
        raise ValueError("the RRF constant k must be >= 0 (Gecko uses 0)")
    if not rank_lists:
        return []
    length = len(rank_lists[0])
    if any(len(r) != length for r in rank_lists):
        raise ValueError("every ranking must rank the same candidates")
    return [sum(1.0 / (k + ranks[i]) for ranks in rank_lists) for i in range(length)]


def log_softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - total for v in values]


def expected_relevance(label_logprobs: dict[str, float], label_values: dict[str, float]) -> float:
    """Zhuang et al. 2023: sum_k P(label_k) * value_k, P normalised over the label set."""
    names = list(label_values)
    normalised = log_softmax([label_logprobs[n] for n in names])
    return sum(math.exp(lp) * label_values[n] for lp, n in zip(normalised, names))


def top_label_logprob(label_logprobs: dict[str, float], top_label: str) -> float:
    """log P(top label), normalised over the label set."""
    names = list(label_logprobs)
    normalised = log_softmax([label_logprobs[n] for n in names])
    return normalised[names.index(top_label)]
