"""LLM stage 2: score each (query, candidate) pair by QL and RC, fuse a query's scores by RRF,
relabel the positive and mine negatives.

The pairs go to the LLM in one of two orders (--score_order):
- passage (the default): the pairs of one passage are scored together, so the server computes the
  passage's prompt prefix once and every other query that retrieved it reads it from its cache;
- query: the pairs of one query are scored together.
Either way the journal's unit is the pair (stage "score", pipeline.journal.pair_key), so a run
resumed with the other order reuses every scored pair. The scores are then regrouped by query for
fusion, relabelling and mining.
"""

from __future__ import annotations

import asyncio
import dataclasses

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs.common import NS, OUTCOME, TOKENS
from beam_jobs.journal import LookupJournal
from beam_jobs.llm_stage import LLMBatchDoFn, StageSettings, failure_reason, fixed_batches
from pipeline import journal
from pipeline.accounting import Outcome, query_unit
from pipeline.examples import build_example
from pipeline.mining import NEVER_NEGATIVE_RULES, MiningConfig
from pipeline.prompts import load_prompt
from pipeline.rerank import Candidate, RerankConfig, assemble, restamped, score_passage, score_query_pairs
from schemas import DeadLetter, QueryRecord


def _emit_example(query, passage, records, mining: MiningConfig, keep: bool):
    if len(records) == 1 and isinstance(records[0], DeadLetter):
        yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(query_unit(query, passage), "dead_lettered", records[0]))
        return
    # the unit, not the text
    yield build_example(query, records, mining, keep), query_unit(query, passage)


class RerankMetrics:
    """The counters of the rerank stage (made in a DoFn's __init__), and the emission of a query's
    example or dead letter that updates them."""

    def __init__(self):
        self.scored = Metrics.counter(NS, "queries_reranked")
        self.rerank_failures = Metrics.counter(NS, "rerank_failures")
        self.relabelled = Metrics.counter(NS, "relabelled")
        self.candidates = Metrics.distribution(NS, "candidates_per_query")
        # the false-negative audit: neighbours kept out of the negatives, by rule
        self.never_negative = {rule: Metrics.counter(NS, f"never_negative_{rule}") for rule in NEVER_NEGATIVE_RULES}

    def emit(self, query, passage, candidates, records, mining: MiningConfig, keep: bool):
        for out in _emit_example(query, passage, records, mining, keep):
            if isinstance(out, beam.pvalue.TaggedOutput):
                self.rerank_failures.inc()
            else:
                self.candidates.update(len(candidates))
                self.scored.inc()
                self.relabelled.inc(int(out[0].positive_changed))
                for rule, n in out[0].never_negative.items():
                    self.never_negative[rule].inc(n)
            yield out


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


def _group_key(kv, order: str):
    """A pair keyed by what its order scores together: its passage, or its query."""
    pair = kv[1]
    return (pair.passage.passage_id if order == "passage" else pair.query.query_id), kv


def _group(element):
    """(group key, pairs) -> (the key, its pairs in a fixed order: by query, then by passage)."""
    key, keyed = element
    return key, sorted((pair for _, pair in keyed), key=lambda p: (p.query.query_id, p.passage.passage_id))


class _ScorePairsFn(LLMBatchDoFn):
    STAGE = "score"

    def __init__(self, settings: StageSettings, rerank: RerankConfig):
        super().__init__(settings)
        self._rerank = rerank
        self.PROGRESS = f"rerank ({rerank.score_order}s)"
        self.pairs_scored = Metrics.counter(NS, "pairs_scored")

    def _request(self, batch):
        config, groups = self._rerank, [pairs for _, pairs in batch]

        def score_group(client, pairs):
            if config.score_order == "passage":  # one passage, the queries that retrieved it
                return score_passage(client, pairs[0].passage, [p.query for p in pairs], config)
            return score_query_pairs(client, pairs[0].query, [p.passage for p in pairs], config)

        async def run(client):
            return await asyncio.gather(*(score_group(client, pairs) for pairs in groups))
        return run

    def _outputs(self, batch, results):
        finished, emitted = [], []
        for (_, pairs), scores in zip(batch, results):
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


class RerankAndMine(beam.PTransform):
    """(query, seed, candidates) -> {"examples": (TrainingExample, seed's unit id), "outcome",
    "reused": journaled pairs, "tokens"}, scoring the pairs in --score_order. The examples carry
    no provenance until pipeline.examples.stamp."""

    def __init__(self, settings: StageSettings, rerank: RerankConfig, mining: MiningConfig,
                 keep_candidates: bool = True):
        super().__init__()
        self.settings, self.rerank, self.mining, self.keep_candidates = settings, rerank, mining, keep_candidates

    def expand(self, candidates):
        prompt_hashes = (load_prompt("query_likelihood", self.rerank.ql_prompt_version).hash,
                         load_prompt("relevance_classification", self.rerank.rc_prompt_version).hash)
        pair_items = candidates | "Pairs" >> beam.FlatMap(_pairs, self.settings.model_key, prompt_hashes,
                                                          self.rerank)
        split = pair_items | "Journal" >> LookupJournal(self.settings.journal_folder, "score", _pair_key)
        order = self.rerank.score_order
        groups = (split.todo
                  | "KeyByGroup" >> beam.Map(_group_key, order)
                  | ("ByPassage" if order == "passage" else "PairsByQuery") >> beam.GroupByKey()
                  | "Group" >> beam.Map(_group))
        total = groups | "CountTodo" >> beam.combiners.Count.Globally()
        fresh = (groups
                 | "Batch" >> fixed_batches(self.settings.batch_size)
                 | "Score" >> beam.ParDo(_ScorePairsFn(self.settings, self.rerank),
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


def _pair_key(item: PairItem) -> str:
    return item.key
