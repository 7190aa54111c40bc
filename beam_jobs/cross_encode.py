"""A served cross-encoder scores each query's candidates (--scores ce), before the LLM rerank:
one request per query, journaled, on the shape every LLM stage shares. The scores ride on the
candidates into fusion, whichever order the LLM then scores in."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json

import apache_beam as beam

from beam_jobs.common import OUTCOME
from beam_jobs.llm_stage import LLMBatchDoFn, StageSettings, failure_reason, journaled_llm_stage
from pipeline import ids, journal
from pipeline.accounting import Outcome, query_unit
from pipeline.llm.reranker import score_candidates
from schemas import DeadLetter

STAGE = "ce"


def ce_key(model: str, api: str, item) -> str:
    query, _, candidates = item
    cands = [(c.passage_id, c.title, c.text) for c in candidates]
    return ids.content_id("jc-", model, api, query.query, json.dumps(cands), length=32)


def _emit(item, records):
    query, seed, candidates = item
    (record,) = records
    if isinstance(record, DeadLetter):
        yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(query_unit(query, seed), "dead_lettered", record))
        return
    by_id = dict(zip(record.passage_ids, record.scores))
    yield query, seed, [dataclasses.replace(c, ce=by_id[c.passage_id]) for c in candidates]


class _CrossEncodeFn(LLMBatchDoFn):
    STAGE = STAGE
    PROGRESS = "cross-encoder (queries)"

    def __init__(self, settings: StageSettings, api: str):
        super().__init__(settings)
        self._api = api

    def _request(self, batch):
        api, model = self._api, self._settings.client.model

        async def score_all(client):  # a coroutine: its requests start inside the stage's usage meter
            return await asyncio.gather(*(score_candidates(client, api, model, q, c) for _, (q, _, c) in batch))

        return score_all

    def _outputs(self, batch, results):
        self._settle([(key, [r], failure_reason([r])) for (key, _), r in zip(batch, results)])
        for (_, item), record in zip(batch, results):
            yield from _emit(item, [record])


def _replay(done):
    item, payload = done
    yield from _emit(item, journal.decode(payload))


class CrossEncodeCandidates(beam.PTransform):
    """(query, seed, candidates) -> {"candidates": the same with each candidate's `ce`, "outcome":
    a dead letter per query the cross-encoder failed, "reused": journal hits, "tokens"}."""

    def __init__(self, settings: StageSettings, api: str):
        super().__init__()
        self.settings, self.api = settings, api

    def expand(self, items):
        key_fn = functools.partial(ce_key, self.settings.model_key, self.api)
        return journaled_llm_stage(items, self.settings, STAGE, key_fn, "CrossEncode", _CrossEncodeFn(self.settings,
                                                                                                       self.api),
                                   "candidates", _replay)
