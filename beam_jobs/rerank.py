"""LLM stage 2: rerank candidates by QL + RC fused by RRF, then relabel the positive and mine negatives."""

from __future__ import annotations

import asyncio
import functools

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs.common import NS, OUTCOME
from beam_jobs.llm_stage import LLMBatchDoFn, StageSettings, failure_reason, journaled_llm_stage
from pipeline import journal
from pipeline.accounting import Outcome, query_unit
from pipeline.examples import build_example
from pipeline.mining import MiningConfig
from pipeline.prompts import load_prompt
from pipeline.rerank import RerankConfig, score_query
from schemas import DeadLetter


def _emit_example(query, passage, records, mining: MiningConfig, keep: bool):
    if len(records) == 1 and isinstance(records[0], DeadLetter):
        yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(query_unit(query, passage), "dead_lettered", records[0]))
        return
    yield build_example(query, records, mining, keep), query_unit(query, passage)  # the unit, not the text


class RerankMetrics:
    """The counters every rerank order keeps (made in a DoFn's __init__), and the emission of a
    query's example or dead letter that updates them."""

    def __init__(self):
        self.scored = Metrics.counter(NS, "queries_reranked")
        self.rerank_failures = Metrics.counter(NS, "rerank_failures")
        self.relabelled = Metrics.counter(NS, "relabelled")
        self.candidates = Metrics.distribution(NS, "candidates_per_query")

    def emit(self, query, passage, candidates, records, mining: MiningConfig, keep: bool):
        for out in _emit_example(query, passage, records, mining, keep):
            if isinstance(out, beam.pvalue.TaggedOutput):
                self.rerank_failures.inc()
            else:
                self.candidates.update(len(candidates))
                self.scored.inc()
                self.relabelled.inc(int(out[0].positive_changed))
            yield out


class _RerankFn(LLMBatchDoFn):
    STAGE = "rerank"
    PROGRESS = "rerank (queries)"

    def __init__(self, settings: StageSettings, rerank: RerankConfig, mining: MiningConfig,
                 keep_candidates: bool):
        super().__init__(settings)
        self._rerank, self._mining, self._keep = rerank, mining, keep_candidates
        self.metrics = RerankMetrics()

    def _request(self, batch):
        config, items = self._rerank, [item for _, item in batch]
        return lambda client: _score_all(client, items, config)

    def _outputs(self, batch, results):
        items = [item for _, item in batch]
        results = [journal.as_records(r) for r in results]
        self._settle([(key, records, failure_reason(records)) for (key, _), records in zip(batch, results)])
        for (query, passage, cands), records in zip(items, results):
            yield from self.metrics.emit(query, passage, cands, records, self._mining, self._keep)


def _replay_rerank(done, mining, keep):
    (query, passage, _), payload = done
    yield from _emit_example(query, passage, journal.decode(payload), mining, keep)


async def _score_all(client, batch, config):
    return await asyncio.gather(*(score_query(client, q, cands, config) for q, _, cands in batch))


class RerankAndMine(beam.PTransform):
    """(query, seed, candidates) -> {"examples": (TrainingExample, seed's unit id), "outcome", "reused"}
    via QL + RC + RRF and mining. The examples carry no provenance until pipeline.examples.stamp."""

    def __init__(self, settings: StageSettings, rerank: RerankConfig, mining: MiningConfig,
                 keep_candidates: bool = True):
        super().__init__()
        self.settings, self.rerank, self.mining, self.keep_candidates = settings, rerank, mining, keep_candidates

    def expand(self, candidates):
        prompt_hashes = (load_prompt("query_likelihood", self.rerank.ql_prompt_version).hash,
                         load_prompt("relevance_classification", self.rerank.rc_prompt_version).hash)
        key_fn = functools.partial(_rerank_key, self.settings.client.model, prompt_hashes, self.rerank)
        dofn = _RerankFn(self.settings, self.rerank, self.mining, self.keep_candidates)
        return journaled_llm_stage(candidates, self.settings, "rerank", key_fn, "Score", dofn, "examples",
                                   _replay_rerank, self.mining, self.keep_candidates)


def _rerank_key(model, prompt_hashes, config, item):
    query, _, cands = item
    return journal.rerank_key(model, prompt_hashes, config, query, cands)
