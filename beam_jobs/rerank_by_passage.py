"""Reranking in passage-major order: the (query, candidate) pairs of one passage are scored
together, so the server computes the passage's prompt prefix once and every other query that
retrieved it reads the prefix from its cache; the scores are then regrouped by query for fusion,
relabelling and mining. The journal's unit is the pair (stage "score").

The same contract as RerankAndMine (query-major): (query, seed, candidates) in, examples out.
"""

from __future__ import annotations

import asyncio
import dataclasses

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs.common import NS, OUTCOME, TOKENS
from beam_jobs.journal import LookupJournal
from beam_jobs.llm_stage import LLMBatchDoFn, StageSettings, failure_reason, fixed_batches
from beam_jobs.rerank import RerankMetrics
from pipeline import journal
from pipeline.mining import MiningConfig
from pipeline.prompts import load_prompt
from pipeline.rerank import Candidate, RerankConfig, assemble, restamped, score_passage
from schemas import DeadLetter, QueryRecord


@dataclasses.dataclass(frozen=True)
class PairItem:
    """One (query, candidate) pair on its way to the LLM, with its journal key."""

    key: str
    query: QueryRecord
    passage: Candidate


def _pairs(item, model: str, prompt_hashes: tuple, config: RerankConfig):
    query, _, candidates = item
    for c in candidates:
        yield PairItem(journal.pair_key(model, prompt_hashes, config, query, c), query, c)


def _group(element):
    """(passage id, pairs) -> (passage id, (the passage, its pairs in query order))."""
    passage_id, keyed = element
    pairs = sorted((pair for _, pair in keyed), key=lambda p: p.query.query_id)
    return passage_id, (pairs[0].passage, pairs)


class _ScorePassagesFn(LLMBatchDoFn):
    STAGE = "score"
    PROGRESS = "rerank (passages)"

    def __init__(self, settings: StageSettings, rerank: RerankConfig):
        super().__init__(settings)
        self._rerank = rerank
        self.pairs_scored = Metrics.counter(NS, "pairs_scored")

    def _request(self, batch):
        config, groups = self._rerank, [group for _, group in batch]

        async def run(client):
            return await asyncio.gather(*(score_passage(client, passage, [p.query for p in pairs], config)
                                          for passage, pairs in groups))
        return run

    def _outputs(self, batch, results):
        finished, emitted = [], []
        for (_, (_, pairs)), scores in zip(batch, results):
            for pair, score in zip(pairs, scores, strict=True):
                finished.append((pair.key, [score], failure_reason([score])))
                emitted.append((pair.query.query_id, (pair.passage.passage_id, score)))
        self._settle(finished)
        self.pairs_scored.inc(len(emitted))
        yield from emitted


def _replay_pair(done):
    """A journaled pair, restamped with this run's query (the key is the pair's content)."""
    pair, payload = done
    (score,) = journal.decode(payload)
    if isinstance(score, DeadLetter):
        score = restamped(score, pair.query)
    else:
        score = score.model_copy(update={"query_id": pair.query.query_id})
    yield pair.query.query_id, (pair.passage.passage_id, score)


class _AssembleFn(beam.DoFn):
    """A query's pair scores -> its example (ranked, fused, relabelled, mined) or a dead letter."""

    def __init__(self, rerank: RerankConfig, mining: MiningConfig, keep_candidates: bool):
        self._rerank, self._mining, self._keep = rerank, mining, keep_candidates
        self.metrics = RerankMetrics()

    def process(self, element):
        _, grouped = element
        for query, passage, candidates in grouped["item"]:
            records = assemble(query, candidates, dict(grouped["scores"]), self._rerank)
            records = [records] if isinstance(records, DeadLetter) else records
            yield from self.metrics.emit(query, passage, candidates, records, self._mining, self._keep)


class RerankByPassage(beam.PTransform):
    """(query, seed, candidates) -> {"examples": (TrainingExample, seed's unit id), "outcome",
    "reused": journaled pairs, "tokens"}, scoring the pairs passage by passage."""

    def __init__(self, settings: StageSettings, rerank: RerankConfig, mining: MiningConfig,
                 keep_candidates: bool = True):
        super().__init__()
        self.settings, self.rerank, self.mining, self.keep_candidates = settings, rerank, mining, keep_candidates

    def expand(self, candidates):
        prompt_hashes = (load_prompt("query_likelihood", self.rerank.ql_prompt_version).hash,
                         load_prompt("relevance_classification", self.rerank.rc_prompt_version).hash)
        pair_items = candidates | "Pairs" >> beam.FlatMap(_pairs, self.settings.client.model, prompt_hashes,
                                                          self.rerank)
        split = pair_items | "Journal" >> LookupJournal(self.settings.journal_folder, "score", _pair_key)
        groups = (split.todo
                  | "KeyByPassage" >> beam.Map(lambda kv: (kv[1].passage.passage_id, kv))
                  | "ByPassage" >> beam.GroupByKey()
                  | "Group" >> beam.Map(_group))
        total = groups | "CountTodo" >> beam.combiners.Count.Globally()
        fresh = (groups
                 | "Batch" >> fixed_batches(self.settings.batch_size)
                 | "Score" >> beam.ParDo(_ScorePassagesFn(self.settings, self.rerank),
                                         total=beam.pvalue.AsSingleton(total))
                 .with_outputs(OUTCOME, TOKENS, main="scores"))
        replayed = split.done | "Replay" >> beam.FlatMap(_replay_pair)
        scores = (fresh.scores, replayed) | "AllScores" >> beam.Flatten()
        queries = candidates | "KeyByQuery" >> beam.Map(lambda item: (item[0].query_id, item))
        examples = ({"item": queries, "scores": scores}
                    | "ByQuery" >> beam.CoGroupByKey()
                    | "Assemble" >> beam.ParDo(_AssembleFn(self.rerank, self.mining, self.keep_candidates))
                    .with_outputs(OUTCOME, main="examples"))
        return {"examples": examples.examples,
                OUTCOME: (fresh[OUTCOME], examples[OUTCOME]) | "MergeOutcomes" >> beam.Flatten(),
                "reused": split.done, TOKENS: fresh[TOKENS]}


def _pair_key(pair: PairItem) -> str:
    return pair.key
