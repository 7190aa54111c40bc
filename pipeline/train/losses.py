"""Training objectives as sentence-transformers losses: Gecko's InfoNCE (a MultipleNegativesRankingLoss
with fret's masks), its GradCache form, and XTR's token retrieval.

Every loss reads the columns fret's data writes (anchor, positive, negative_1..k) and, as labels,
how many of a row's negative columns are real (the rest repeat its positive to keep columns even).
"""

from __future__ import annotations

import hashlib
from typing import Iterable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.util.distributed import all_gather, all_gather_padded, get_rank, get_world_size
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
    negative. With symmetric, each row's loss is the mean of that and the reverse direction, where
    p_i picks q_i among the batch's queries. `rows` selects the rows averaged (a process's own,
    when the batch was gathered across processes).

    Inputs: q (B, d), p (B, d), negatives (B, k, d) or None, negative_mask (B, k) bool or None,
    keys: TextKeys or None.
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
                negative_mask: Optional[torch.Tensor] = None, keys: Optional[TextKeys] = None,
                rows: Optional[slice] = None) -> torch.Tensor:
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
        per_row = F.cross_entropy(logits, targets, reduction="none")  # (B,)
        if self.symmetric:
            pq = qp.T if not keys else qp.T.masked_fill(same_query, float("-inf"))  # (B, B): s(p_i, q_j)
            per_row = (per_row + F.cross_entropy(pq, targets, reduction="none")) / 2
        return per_row[rows if rows is not None else slice(None)].mean()


def column_keys(features: Iterable[dict]) -> torch.Tensor:
    """(columns, B) int64: a hash of each text's token ids. Equal texts get equal keys in every
    process (Python's hash of bytes is salted per process; blake2b is not)."""
    keys = []
    for feature in features:
        ids, mask = feature["input_ids"].cpu(), feature["attention_mask"].cpu().bool()
        keys.append([int.from_bytes(hashlib.blake2b(row[m].numpy().tobytes(), digest_size=8).digest(), "little",
                                    signed=True) for row, m in zip(ids, mask)])
    return torch.tensor(keys, dtype=torch.int64)


def _gathered(tensor: torch.Tensor, with_grad: bool, distributed: bool) -> torch.Tensor:
    return all_gather(tensor, with_grad=with_grad) if distributed else tensor


class GeckoRankingLoss(MultipleNegativesRankingLoss):
    """sentence-transformers' MultipleNegativesRankingLoss with Gecko's switches and fret's masks.

    It is MNRL (query_to_doc, plus query_to_query for same_tower, plus doc_to_query for
    symmetric) wherever MNRL has the switch; GeckoInfoNCE adds what MNRL has none for: a query's own
    negatives only (batch_negatives off, Gecko's eq. 3), no in-batch positives, the masking of a
    column whose text is the row's own positive or query (mask_duplicates), and the padding of rows
    with fewer negatives. tests/test_losses_vs_st.py checks the shared part equal to MNRL.

    Inputs: columns (anchor, positive, negative_1..k); labels (B,): the real negatives of each row.
    Under MatryoshkaLoss, a size below negatives_min_dim trains without the hard negatives.
    """

    def __init__(self, model, temperature: float = 0.05, in_batch: bool = True, same_tower: bool = False,
                 hard_negatives: bool = True, batch_negatives: bool = True, symmetric: bool = False,
                 mask_duplicates: bool = True, negatives_min_dim: int = 0, gather_across_devices: bool = False):
        directions = ("query_to_doc",) + (("query_to_query",) if same_tower else ()) + (
            ("doc_to_query",) if symmetric else ())
        super().__init__(model, scale=1.0 / temperature, gather_across_devices=gather_across_devices,
                         directions=directions)
        self.infonce = GeckoInfoNCE(temperature, in_batch, same_tower, hard_negatives, batch_negatives, symmetric)
        self.mask_duplicates, self.negatives_min_dim = mask_duplicates, negatives_min_dim

    def forward(self, sentence_features: Iterable[dict], labels: torch.Tensor) -> torch.Tensor:
        features = list(sentence_features)
        keys = column_keys(features)  # before the forward pass, which writes its outputs into the dicts
        # One forward pass per column, as fret's own loop did: embed_columns' merged pass pads the
        # positives to the negatives' length, and the backward pass pays for it (bench/README.md).
        embeddings = [self.model(f)["sentence_embedding"] for f in features]
        return self.compute_loss_from_embeddings(embeddings, (labels, keys))

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels) -> torch.Tensor:
        counts, keys = labels  # (B,) real negatives per row; (columns, B) text keys
        q, p, negatives = embeddings[0], embeddings[1], embeddings[2:]
        local = q.shape[0]
        distributed = self.gather_across_devices and get_world_size() > 1
        q, p = _gathered(q, True, distributed), _gathered(p, True, distributed)
        unused = []
        if negatives and (not self.infonce.hard_negatives or q.shape[-1] < self.negatives_min_dim):
            unused, negatives = negatives, []  # a size below negatives_min_dim: in-batch terms only
        n = torch.stack([_gathered(x, True, distributed) for x in negatives], dim=1) if negatives else None  # (B, k, d)
        device = q.device
        counts = _gathered(counts.to(device), False, distributed)  # (B,)
        keys = _gathered(keys.to(device).T.contiguous(), False, distributed).T  # (columns, B)
        mask = torch.arange(n.shape[1], device=device)[None, :] < counts[:, None] if n is not None else None  # (B, k)
        text_keys = TextKeys(keys[0], keys[1], keys[2:2 + n.shape[1]].T if n is not None else None)
        start = get_rank() * local if distributed else 0
        loss = self.infonce(q, p, n, mask, text_keys if self.mask_duplicates else None, slice(start, start + local))
        # GradCache needs a gradient, zero, for every column it embedded, used at this size or not
        return loss + sum(0.0 * x.sum() for x in unused)

    def get_config_dict(self) -> dict:
        infonce = self.infonce
        return {**super().get_config_dict(), "in_batch": infonce.in_batch, "hard_negatives": infonce.hard_negatives,
                "batch_negatives": infonce.batch_negatives, "mask_duplicates": self.mask_duplicates,
                "negatives_min_dim": self.negatives_min_dim}


class CachedGeckoRankingLoss(CachedLossMixin, nn.Module):
    """GeckoRankingLoss with GradCache (Gao et al. 2021) from sentence-transformers' CachedLossMixin,
    as CachedMultipleNegativesRankingLoss: the batch is embedded mini_batch_size texts at a time, so
    memory follows the mini-batch while the loss sees the whole batch."""

    def __init__(self, model, mini_batch_size: int, **settings):
        super().__init__()
        self.model, self.mini_batch_size = model, mini_batch_size
        self.loss = GeckoRankingLoss(model, **settings)

    def forward(self, sentence_features: Iterable[dict], labels: torch.Tensor) -> torch.Tensor:
        features = list(sentence_features)
        return self.forward_cached(features, (labels, column_keys(features)))

    def calculate_loss(self, reps, labels=None, *, with_backward: bool = False) -> torch.Tensor:
        loss = self.loss.compute_loss_from_embeddings([torch.cat(column) for column in reps], labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def get_config_dict(self) -> dict:
        return {**self.loss.get_config_dict(), "mini_batch_size": self.mini_batch_size}


def xtr_scores(q_tokens: torch.Tensor, q_mask: torch.Tensor, d_tokens: torch.Tensor, d_mask: torch.Tensor,
               k_train: int, z_min: float = 1e-3) -> torch.Tensor:
    """XTR's training-time query-document scores (Lee et al. 2023, eq. 3 with eq. 2's alignment).

    Â_ij = 1 when document token j is among the top-k_train tokens that query token i retrieves
    from *all* documents of the batch; f(q, D) = (1/Z) Σ_i max_j Â_ij q_i·d_j, with Z the number
    of query tokens that retrieved at least one token of D, clipped below at z_min so that a
    document no query token retrieved scores 0.

    sentence-transformers' multi-vector `xtr_scores` computes the same for documents grouped per
    query (equal to this on random inputs, tests/test_losses_vs_st.py); this one stays because
    fret's batches hold a ragged number of real negatives per query, which its grid cannot.

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
    # the max over retrieved tokens only: a 0 placeholder would beat a retrieved negative similarity
    aligned = sims.masked_fill(~retrieved, float("-inf"))  # (B, Lq, N, Ld): Â_ij q_i·d_j
    best = aligned.max(dim=-1).values  # (B, Lq, N): max_j Â_ij q_i·d_j (-inf when nothing retrieved)
    hit = retrieved.any(dim=-1) & q_mask[:, :, None]  # (B, Lq, N): query token i retrieved part of D
    best = torch.where(hit, best, torch.zeros_like(best))  # (B, Lq, N): a miss and a padding token add 0
    z = hit.sum(dim=1).clamp(min=z_min)  # (B, N): Z, clipped
    return best.sum(dim=1) / z  # (B, N)


def _pad_tokens(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (n, L, d) token blocks of different L, padding with masked zeros."""
    width = max(t.shape[1] for t, _ in parts)
    tokens = [F.pad(t, (0, 0, 0, width - t.shape[1])) for t, _ in parts]
    masks = [F.pad(m, (0, width - m.shape[1]), value=False) for _, m in parts]
    return torch.cat(tokens), torch.cat(masks)


class XTRLoss(nn.Module):
    """Cross-entropy over XTR scores of each query against every document of the batch: the
    positives first, then the real hard negatives (padding copies of a positive left out).

    Args:
        model: the SentenceTransformer; its token embeddings are scored.
        k_train: tokens each query token retrieves from the batch (XTR: a few times the batch
            size; must be small enough to leave some documents unretrieved).
        temperature: scores are divided by this before the softmax.
        gather_across_devices: score against the documents of every process's batch.
    """

    def __init__(self, model, k_train: int = 64, temperature: float = 0.05, gather_across_devices: bool = False):
        super().__init__()
        if k_train < 1 or temperature <= 0:
            raise ValueError("k_train must be >= 1 and temperature > 0")
        self.model, self.k_train, self.temperature = model, k_train, temperature
        self.gather_across_devices = gather_across_devices

    def forward(self, sentence_features: Iterable[dict], labels: torch.Tensor) -> torch.Tensor:
        outputs = [self.model(f) for f in sentence_features]
        columns = [(F.normalize(o["token_embeddings"], dim=-1), o["attention_mask"].bool()) for o in outputs]
        distributed = self.gather_across_devices and get_world_size() > 1
        if distributed:
            columns = [all_gather_padded(t, m, with_grad=True) for t, m in columns]
            labels = all_gather(labels.to(columns[0][0].device))
        (q_tokens, q_mask), positives, negatives = columns[0], columns[1], columns[2:]
        counts = labels.to(q_tokens.device)
        documents = [positives] + [(t[counts > j], m[counts > j]) for j, (t, m) in enumerate(negatives)]
        d_tokens, d_mask = _pad_tokens(documents)
        scores = xtr_scores(q_tokens, q_mask, d_tokens, d_mask, self.k_train) / self.temperature  # (B, N)
        targets = torch.arange(q_tokens.shape[0], device=scores.device)  # (B,)
        per_row = F.cross_entropy(scores, targets, reduction="none")
        local = outputs[0]["token_embeddings"].shape[0]
        start = get_rank() * local if distributed else 0
        return per_row[start:start + local].mean()

    def get_config_dict(self) -> dict:
        return {"k_train": self.k_train, "temperature": self.temperature}
