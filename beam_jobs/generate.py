"""LLM stage 1: a task and a query for each seed passage."""

from __future__ import annotations

import functools

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs.common import NS, OUTCOME
from beam_jobs.llm_stage import LLMBatchDoFn, StageSettings, failure_reason, journaled_llm_stage
from pipeline import journal
from pipeline.accounting import Outcome, unit_id
from pipeline.generation import GenerationConfig, generate_queries
from pipeline.prompts import load_prompt
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

    def __init__(self, settings: StageSettings, config: GenerationConfig):
        super().__init__(settings)
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

    def __init__(self, settings: StageSettings, config: GenerationConfig):
        super().__init__()
        self.settings, self.config = settings, config

    def expand(self, passages):
        key_fn = functools.partial(journal.generation_key, self.settings.model_key,
                                   load_prompt("query_generation", self.config.prompt_version).hash, self.config)
        dofn = _GenerateFn(self.settings, self.config)
        return journaled_llm_stage(passages, self.settings, "generate", key_fn, "Generate", dofn, "queries",
                                   _replay_generated)


def generation_stage(passages, llm: StageSettings, opts) -> dict:
    """Queries the LLM writes for each seed passage: the one wiring of both plans (the one
    pipeline's passages, a wave's). -> {"queries", "outcomes", "tokens", "reused", "counts"}: lists
    of PCollections for the caller's outcomes, token meters and manifest counts."""
    from beam_jobs import options as opt
    from beam_jobs.common import TOKENS
    from beam_jobs.write import count_as

    generated = passages | "GenerateQueries" >> GenerateQueries(llm, opt.generation_config(opts))
    return {"queries": generated["queries"], "outcomes": [generated[OUTCOME]], "tokens": [generated[TOKENS]],
            "reused": [count_as(generated["reused"], "journal_hits_generate")],
            "counts": [count_as(generated["queries"], "queries_generated")]}
