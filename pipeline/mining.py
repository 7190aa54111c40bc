"""Choose the positive and hard negatives from candidates ranked by the fused LLM score."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Literal, Optional, Sequence

from pipeline.fusion import CE_DECIMALS, QL_DECIMALS, RC_DECIMALS, RETRIEVAL_DECIMALS
from pipeline.given_queries import is_text_key, text_key
from schemas import CandidateScore, MiningStrategy

MarginScore = Literal["rc", "ql", "fused", "ce", "retrieval"]
RCKind = Literal["expected_relevance", "top_label_logprob"]


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    strategy: MiningStrategy = "lowest"  # Gecko's best: p_N, the lowest-ranked neighbour
    num_negatives: int = 1
    window: tuple[int, int] = (10, 20)  # rank_window: fused ranks lo..hi inclusive
    margin: float = 0.95  # margin (NV-Retriever TopK-PercPos): drop scores above margin * positive
    margin_score: MarginScore = "rc"
    # What CandidateScore.rc holds: the margin is a share of a probability-like score, so a
    # log-probability (top_label_logprob) is turned back into P(top label) before it is applied.
    rc_kind: RCKind = "expected_relevance"
    # a relabelled seed (and its document's other chunks) is likely relevant: never a negative
    exclude_seed: bool = True
    seed: int = 0
    relabel: Literal["gecko", "never"] = "gecko"  # never: the seed or given positive stays the positive
    # sentence-transformers' mine_hard_negatives filters, under its semantics (pool_filter): of the
    # first range_max + 2 neighbours by rank, those the score filters keep, the first range_max of
    # them less the first range_min
    range_min: int = 0
    range_max: Optional[int] = None
    absolute_margin: Optional[float] = None  # drop a candidate whose score + margin > the positive's
    relative_margin: Optional[float] = None  # drop a candidate whose score > positive - |positive| x margin
    max_score: Optional[float] = None
    min_score: Optional[float] = None
    # extra positives (RLHN): neighbours this score rates as relevant as the positive; None: none
    extra_score: Optional[MarginScore] = None
    extra_margin: float = 0.0
    keep_extra_positives: bool = True  # write them in the example's extra_positives (else: only out of the negatives)

    def __post_init__(self):
        if self.num_negatives < 0:
            raise ValueError("num_negatives must be >= 0")
        if self.range_min < 0 or (self.range_max is not None and self.range_max <= self.range_min):
            raise ValueError("the negative range is min,max with 0 <= min < max (ranks; max may be left out)")
        if not 0 < self.margin <= 1:
            raise ValueError("margin must be in (0, 1]; NV-Retriever uses 0.95")
        if self.window[0] < 1 or self.window[1] < self.window[0]:
            raise ValueError("window must be (lo, hi) with 1 <= lo <= hi, fused ranks")
        if self.relabel not in ("gecko", "never"):
            raise ValueError(f"relabel must be gecko or never, not {self.relabel!r}")


def choose_positive(candidates: Sequence[CandidateScore], config: MiningConfig | None = None) -> CandidateScore:
    """p+ = argmax fused score, i.e. fused rank 1 (Gecko's relabelling); with relabel="never", the
    seed or given positive whenever the query has one."""
    if config is not None and config.relabel == "never":
        seeds = [c for c in candidates if c.is_seed]
        if seeds:
            return seeds[0]
    return min(candidates, key=lambda c: c.fused_rank)


def document_of(passage_id: str) -> str:
    """The input record a passage came from: an over-long record's chunks are `ID#0`, `ID#1`, ...
    (pipeline.ingest.split_passage). A user id that itself ends in `#<digits>` is read as a chunk
    too: that can only keep a passage out of the negatives, never put one in."""
    head, sep, tail = passage_id.rpartition("#")
    return head if sep and tail.isdigit() else passage_id


NEVER_NEGATIVE_RULES = ("known_positive", "chunk_of_a_positive", "duplicate_of_a_positive", "seed_document",
                        "extra_positive")


def never_negatives(candidates: Sequence[CandidateScore], positive: CandidateScore, config: MiningConfig,
                    known_positive_ids: Sequence[str] = ()) -> dict[str, str]:
    """passage id -> the rule that keeps it out of the negatives (NEVER_NEGATIVE_RULES), for the
    candidates that may be relevant:
    - known_positive: a passage the user marked relevant (BEIR's other qrels by id, FlagEmbedding's
      other `pos` texts by text key);
    - chunk_of_a_positive: another chunk of the positive's document, a known positive's or an extra
      positive's;
    - duplicate_of_a_positive: the same text as the positive, a known or an extra positive, under
      another id;
    - seed_document: the seed passage, its document's other chunks and copies of its text (with
      exclude_seed);
    - extra_positive: a retrieved neighbour the scores rate as relevant as the positive
      (is_extra_positive).
    The first rule that applies is named."""
    known = set(known_positive_ids)
    keys = {c.passage_id: text_key(c.text) for c in candidates}  # a hash each: computed once
    is_known = {c.passage_id for c in candidates if c.passage_id in known or keys[c.passage_id] in known}
    positives = [positive.passage_id, *is_known]
    documents = {document_of(p) for p in positives} | {document_of(k) for k in known}
    texts = {keys[p] for p in positives} | {k for k in known if is_text_key(k)}
    seeds = [c.passage_id for c in candidates if c.is_seed] if config.exclude_seed else []
    seed_documents, seed_texts = {document_of(p) for p in seeds}, {keys[p] for p in seeds}
    ruled = {}
    for c in candidates:
        pid = c.passage_id
        if pid == positive.passage_id:
            continue
        if pid in is_known:
            ruled[pid] = "known_positive"
        elif document_of(pid) in documents:
            ruled[pid] = "chunk_of_a_positive"
        elif keys[pid] in texts:
            ruled[pid] = "duplicate_of_a_positive"
        elif pid in seeds or document_of(pid) in seed_documents or keys[pid] in seed_texts:
            ruled[pid] = "seed_document"
        elif c.retrieval_rank > 0 and is_extra_positive(c, positive, config):
            ruled[pid] = "extra_positive"
    # an extra positive is a positive: its document's other chunks and copies of its text go too
    extras = [p for p, rule in ruled.items() if rule == "extra_positive"]
    extra_documents, extra_texts = {document_of(p) for p in extras}, {keys[p] for p in extras}
    for c in candidates:
        if c.passage_id != positive.passage_id and c.passage_id not in ruled:
            if document_of(c.passage_id) in extra_documents:
                ruled[c.passage_id] = "chunk_of_a_positive"
            elif keys[c.passage_id] in extra_texts:
                ruled[c.passage_id] = "duplicate_of_a_positive"
    return ruled


def mine_negatives(candidates: Sequence[CandidateScore], positive: CandidateScore, query_id: str,
                   config: MiningConfig, known_positive_ids: Sequence[str] = (),
                   ruled: Optional[dict[str, str]] = None) -> list[CandidateScore]:
    """Hard negatives, hardest first (by fused rank), from the retrieved neighbours that no rule of
    never_negatives keeps out (`ruled`: its answer, when the caller has it already) and that
    pool_filter keeps."""
    if ruled is None:
        ruled = never_negatives(candidates, positive, config, known_positive_ids)
    neighbours = [c for c in candidates if c.retrieval_rank > 0  # a seed outside the top-N is not one
                  and c.passage_id not in ruled]
    neighbours.sort(key=lambda c: c.fused_rank)
    pool = pool_filter(neighbours, positive, config)
    k = config.num_negatives
    if k == 0 or not pool:
        return []
    if config.strategy == "top":
        return pool[:k]
    if config.strategy == "lowest":
        return list(reversed(pool[-k:]))  # p_N first, then p_{N-1}, ...
    if config.strategy == "random":
        rng = random.Random(f"{config.seed}:{query_id}")
        return sorted(rng.sample(pool, min(k, len(pool))), key=lambda c: c.fused_rank)  # hardest first, as ST
    if config.strategy == "rank_window":
        lo, hi = config.window
        return [c for c in pool if lo <= c.fused_rank <= hi][:k]
    if config.strategy == "margin":
        limit = config.margin * margin_score(positive, config)
        return [c for c in pool if margin_score(c, config) < limit][:k]
    raise ValueError(f"unknown mining strategy {config.strategy!r}; use top, lowest, random, rank_window or margin")


def pool_filter(neighbours: Sequence[CandidateScore], positive: CandidateScore, config: MiningConfig
                ) -> list[CandidateScore]:
    """Of the neighbours by rank (the never-negatives left out), the candidates that
    sentence-transformers' mine_hard_negatives would sample from at the same settings: the first
    range_max + 2 (it retrieves 2 more for a query with one positive: the positive's slot and one
    for the query's own text), less the positive, less
    those whose score (config.margin_score) the margins, max_score and min_score drop; then the
    first range_max of those, less the first range_min. Ours rather than a call into it: it works
    on one query's scored candidates inside a Beam worker (the library wants the whole dataset and
    the model); tests/test_mining_vs_st.py checks each option against mine_hard_negatives on
    random embeddings."""
    window = neighbours[:config.range_max + 2] if config.range_max is not None else neighbours
    kept = [c for c in window if c.passage_id != positive.passage_id]
    filters = (config.absolute_margin, config.relative_margin, config.max_score, config.min_score)
    if any(f is not None for f in filters):
        top = margin_score(positive, config)
        ceilings = [config.max_score]
        if config.absolute_margin is not None:
            ceilings.append(top - config.absolute_margin)
        if config.relative_margin is not None:
            ceilings.append(top - abs(top) * config.relative_margin)
        ceiling = min((c for c in ceilings if c is not None), default=math.inf)
        floor = config.min_score if config.min_score is not None else -math.inf
        kept = [c for c in kept if floor <= margin_score(c, config) <= ceiling]
    return kept[:config.range_max][config.range_min:]


def margin_score(c: CandidateScore, config: MiningConfig) -> float:
    """The score the margins and limits compare (config.margin_score), see score_of."""
    return score_of(c, config.margin_score, config.rc_kind)


def score_of(c: CandidateScore, name: str, rc_kind: RCKind = "expected_relevance") -> float:
    """A score where higher means more relevant and, for the LLM's, non-negative, as a percentage
    margin needs: 0.95 x a negative log-probability would sit *above* it and keep the false
    negatives. QL becomes the per-token probability, a top-label log-probability P(top label)."""
    if name == "ql":
        return math.exp(c.ql_mean)
    if name == "fused":
        return c.fused  # RRF: a sum of reciprocal ranks, positive
    if name == "ce":
        return c.ce  # the served cross-encoder's sigmoid, in [0, 1]
    if name == "retrieval":
        return c.retrieval_score if c.retrieval_score is not None else -math.inf  # the embedder's cosine
    return math.exp(c.rc) if rc_kind == "top_label_logprob" else c.rc


# the decimals the extra-positive rule compares at, as ranking does (pipeline.fusion): a neighbour
# that equals the positive up to float noise is not "rated above" it
EXTRA_DECIMALS = {"rc": RC_DECIMALS, "ql": QL_DECIMALS, "ce": CE_DECIMALS, "retrieval": RETRIEVAL_DECIMALS}


def is_extra_positive(c: CandidateScore, positive: CandidateScore, config: MiningConfig) -> bool:
    """RLHN-style relabelling: a neighbour that config.extra_score rates above the positive, or
    within config.extra_margin below it (score > positive - |positive| x margin), compared at the
    ranking's decimals. Strictly: where the positive is itself rated irrelevant, the neighbours
    rated as irrelevant as it are not positives."""
    if config.extra_score is None:
        return False
    decimals = EXTRA_DECIMALS.get(config.extra_score, 12)
    top = round(score_of(positive, config.extra_score, config.rc_kind), decimals)
    value = score_of(c, config.extra_score, config.rc_kind)
    return math.isfinite(value) and round(value, decimals) > round(top - abs(top) * config.extra_margin, decimals)
