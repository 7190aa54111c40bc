"""Assemble a training example from a query and its scored candidates."""

from __future__ import annotations

import collections
from typing import Optional, Sequence

from pipeline import ids
from pipeline.mining import MiningConfig, choose_positive, mine_negatives, never_negatives, score_of
from schemas import CandidateScore, ExtraPositive, HardNegative, PassageRef, Provenance, QueryRecord, TrainingExample


def build_example(query: QueryRecord, scored: Sequence[CandidateScore], mining: MiningConfig,
                  keep_candidates: bool = True, quality: Optional[float] = None) -> TrainingExample:
    """The example without its provenance, which `stamp` adds when it is written: provenance is the
    same for every row of a run and a third of an example's bytes, and a runner that holds the
    examples between stages (the DirectRunner) would hold it once per example. Its never_negative
    counts the retrieved neighbours each never-a-negative rule kept out (pipeline.mining)."""
    positive = choose_positive(scored, mining)
    ruled = never_negatives(scored, positive, mining, query.known_positive_ids)
    negatives = mine_negatives(scored, positive, query.query_id, mining, ruled=ruled)
    kept_out = collections.Counter(ruled[c.passage_id] for c in scored if c.retrieval_rank > 0 and c.passage_id in ruled)
    ordered = sorted(scored, key=lambda c: c.fused_rank)
    return TrainingExample.model_construct(  # validated whole by stamp()
        example_id=ids.example_id(query.query_id, positive.passage_id),
        query_id=query.query_id,
        task=query.task,
        query=query.query,
        positive=PassageRef(id=positive.passage_id, title=positive.title, text=positive.text),
        seed_passage_id=query.passage_id,
        positive_id_as_given=query.positive_id_as_given,
        known_positive_ids=list(query.known_positive_ids),
        positive_changed=bool(query.passage_id) and positive.passage_id != query.passage_id,
        query_source=query.source,
        positive_source=_positive_source(query.passage_id, positive.passage_id),
        positive_ql=positive.ql,
        positive_rc=positive.rc,
        positive_fused=positive.fused,
        positive_ce=positive.ce,
        hard_negatives=[
            HardNegative(id=n.passage_id, title=n.title, text=n.text, fused_rank=n.fused_rank,
                         retrieval_rank=n.retrieval_rank, ql=n.ql, rc=n.rc, fused=n.fused, ce=n.ce)
            for n in negatives
        ],
        never_negative=dict(sorted(kept_out.items())),
        extra_positives=[
            ExtraPositive(id=c.passage_id, title=c.title, text=c.text, score=score_of(c, mining.extra_score,
                                                                                     mining.rc_kind),
                          fused_rank=c.fused_rank, retrieval_rank=c.retrieval_rank, ql=c.ql, rc=c.rc, fused=c.fused,
                          ce=c.ce)
            for c in ordered if ruled.get(c.passage_id) == "extra_positive"
        ] if mining.keep_extra_positives else [],
        candidates=ordered if keep_candidates else None,
        knobs=query.knobs,
        quality=quality,
    )


def _positive_source(seed_id: str, positive_id: str) -> str:
    if not seed_id:
        return "top_fused"  # a given query that came without a positive
    return "seed" if positive_id == seed_id else "relabelled"


def stamp(example: TrainingExample, provenance: Provenance) -> TrainingExample:
    """The written record: the example with the run's provenance, validated."""
    return TrainingExample.model_validate({**dict(example), "provenance": provenance})
