"""LLM stage 1: a task and a query for each seed passage."""

from __future__ import annotations

import functools
from typing import Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from beam_jobs.common import NS, OUTCOME
from beam_jobs.llm_stage import LLMBatchDoFn, failure_reason, journaled_llm_stage
from pipeline import journal
from pipeline.accounting import Outcome, unit_id
from pipeline.generation import GenerationConfig, generate_queries
from pipeline.llm.types import ClientConfig
from pipeline.prompts import load_prompt
from pipeline.reliability import FailurePolicy
from schemas import DeadLetter, Passage


def _emit_generated(passage: Passage, records):
    for record in records:
        if isinstance(record, DeadLetter):
            yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(unit_id(passage), "dead_lettered", record))
        else:
            yield record, passage


class _GenerateFn(LLMBatchDoFn):
    STAGE = "generate"
    PROGRESS = "generate (passages)"

    def __init__(self, client, shared, progress, journal_folder, failure, config: GenerationConfig):
        super().__init__(client, shared, progress, journal_folder, failure)
        self._config = config
        self.generated = Metrics.counter(NS, "queries_generated")
        self.parse_failures = Metrics.counter(NS, "generation_failures")

    def _request(self, batch: list[tuple[str, Passage]]):
        config, passages = self._config, [p for _, p in batch]
        return lambda client: generate_queries(client, passages, config)

    def _outputs(self, batch: list[tuple[str, Passage]], results):
        config = self._config
        per_passage = config.queries_per_passage  # results come passage by passage, sample by sample
        finished = []
        for i, (key, _) in enumerate(batch):
            records = [r for _, r in results[i * per_passage:(i + 1) * per_passage]]
            finished.append((key, records, failure_reason(records)))
        self._settle(finished)
        for (_, passage), (_, records, _) in zip(batch, finished):
            for record in records:
                (self.parse_failures if isinstance(record, DeadLetter) else self.generated).inc()
            yield from _emit_generated(passage, records)


def _replay_generated(done):
    passage, payload = done
    yield from _emit_generated(passage, journal.decode(payload))


class GenerateQueries(beam.PTransform):
    """Passage -> {"queries": (QueryRecord, seed Passage), "outcome": dead letters, "reused": journal hits}."""

    def __init__(self, client: ClientConfig, config: GenerationConfig, batch_size: int = 64, progress: bool = False,
                 journal_folder: Optional[str] = None, failure: FailurePolicy = FailurePolicy()):
        super().__init__()
        self.client, self.config, self.batch_size, self.progress = client, config, batch_size, progress
        self.journal_folder, self.failure = journal_folder, failure

    def expand(self, passages):
        key_fn = functools.partial(journal.generation_key, self.client.model,
                                   load_prompt("query_generation", self.config.prompt_version).hash, self.config)
        dofn = _GenerateFn(self.client, Shared(), self.progress, self.journal_folder, self.failure, self.config)
        return journaled_llm_stage(passages, self.journal_folder, "generate", key_fn, self.batch_size, "Generate",
                                    dofn, "queries", _replay_generated)
