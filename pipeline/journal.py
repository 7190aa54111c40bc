"""What the LLM stages (and the passage embedder) remember between runs: content keys and payloads of finished work.

A journal entry is written as soon as a batch of LLM work finishes. Its key hashes every input
the result depends on (model, prompt file, parameters, passage or query and candidates), so a
resumed run reuses exactly the work it would otherwise redo, and a changed configuration
reuses nothing. Results that a re-run could change because the server failed (timeouts,
outages) are never journaled: `--resume` tries them again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Optional, Sequence, Union

from pipeline import ids
from pipeline.reliability import is_transient
from schemas import (CandidateScore, CrossEncoderScores, DeadLetter, JournalEntry, PairScore, QualityRating,
                     QueryRecord, Record)

STAGES = ("generate", "score", "rate", "ce")
_TYPES: dict[str, type[Record]] = {t.__name__: t for t in (QueryRecord, DeadLetter, CandidateScore, QualityRating,
                                                          PairScore, CrossEncoderScores)}
# How the scores are obtained, not what they are: a run resumed with another order or QL path
# reuses the scores. Both orders journal the same pairs (beam_jobs.rerank; tests/test_fret_job_stub.py),
# and the QL paths give the same values (tests/test_token_ql.py).
_HOW_NOT_WHAT = ("score_order", "ql_path")


def _config_key(config) -> str:
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in _HOW_NOT_WHAT}
    return json.dumps(values, sort_keys=True, default=str)


def embedding_key(embedder: str, text: str) -> str:
    """One passage's vector: the embedder as the job names it, and the exact text it embeds."""
    return ids.content_id("je-", embedder, text, length=32)


def generation_key(model: str, prompt_hash: str, config, passage) -> str:
    """All samples of one passage: the knobs come from (seed, passage, sample), so they are covered."""
    return ids.content_id("jg-", model, prompt_hash, _config_key(config), passage.id, passage.title, passage.text,
                          length=32)


def pair_key(model: str, prompt_hashes: Sequence[str], config, query, passage) -> str:
    """The scores of one (query, passage) pair, the rerank stage's unit in either order: the query's
    task and text and the passage as the LLM sees them (its id too: the pair's score is stored
    under it). Retrieval scores are left out: batch composition moves them in the last float bits,
    and the LLM never sees them; mining runs after, so changing it reuses the scores."""
    return ids.content_id("js-", model, *prompt_hashes, _config_key(config), query.task, query.query,
                          passage.passage_id, passage.title, passage.text, length=32)


def rate_key(model: str, prompt_hash: str, config, example) -> str:
    # The threshold and what to do with failed ratings are applied after: changing them reuses the ratings.
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("min_score", "keep_unrated")}
    return ids.content_id("jq-", model, prompt_hash, json.dumps(settings, sort_keys=True), example.task,
                          example.query, example.positive.title, example.positive.text, length=32)


def encode(records: Sequence[Record]) -> str:
    return json.dumps([[type(r).__name__, r.model_dump(mode="json")] for r in records], ensure_ascii=False)


def decode(payload: str) -> list[Record]:
    return [_TYPES[name].model_validate(data) for name, data in json.loads(payload)]


def worth_keeping(records: Sequence[Record]) -> bool:
    """False when any part failed for a reason a re-run may fix."""
    return not any(isinstance(r, DeadLetter) and is_transient(r.reason) for r in records)


def entry(stage: str, key: str, records: Sequence[Record], now: Optional[dt.datetime] = None) -> JournalEntry:
    if stage not in STAGES:
        raise ValueError(f"unknown journal stage {stage!r}; one of {STAGES}")
    return JournalEntry(key=key, stage=stage, payload=encode(records),
                        created_at=now or dt.datetime.now(dt.timezone.utc))


def as_records(result: Union[Record, Sequence[Record]]) -> list[Record]:
    return [result] if isinstance(result, Record) else list(result)
