"""LLM stage 3 (optional): Gemini Embedding's auto-rater drops low-quality examples."""

from __future__ import annotations

import asyncio
import functools
from typing import Union

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs.common import NS, OUTCOME
from beam_jobs.llm_stage import LLMBatchDoFn, StageSettings, journaled_llm_stage
from pipeline import filtering, journal
from pipeline.accounting import Outcome, filtered
from pipeline.generation import LLM_REASONS
from pipeline.ingest import dead_letter
from pipeline.prompts import load_prompt
from schemas import DeadLetter, QualityRating


def _apply_rating(example, unit: str, rating: Union[QualityRating, DeadLetter], config: filtering.RaterConfig):
    if isinstance(rating, DeadLetter):
        if config.keep_unrated:
            yield example, unit  # kept on request, with quality = null
        else:  # an example nobody checked is not a checked example: it is not written
            yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(unit, "dead_lettered", rating))
    elif rating.score < config.min_score:
        yield beam.pvalue.TaggedOutput(OUTCOME, filtered(
            unit, example.example_id, "filter", "low_quality",
            f"auto-rater score {rating.score} < {config.min_score}: {rating.reason}"))
    else:
        yield example.model_copy(update={"quality": float(rating.score)}), unit


def _rating_failure(example, result) -> DeadLetter:
    return dead_letter(example.seed_passage_id, "rate", LLM_REASONS.get(result.reason or "", "llm_bad_response"),
                       f"auto-rater failed for example {example.example_id}: {result.detail}", result.text)


class _RateFn(LLMBatchDoFn):
    STAGE = "rate"
    PROGRESS = "rate (examples)"

    def __init__(self, settings: StageSettings, config: filtering.RaterConfig):
        super().__init__(settings)
        self._config = config
        self.rated = Metrics.counter(NS, "examples_rated")
        self.rater_failures = Metrics.counter(NS, "rater_failures")
        self.low_quality = Metrics.counter(NS, "filtered_low_quality")

    def _request(self, batch):
        config, items = self._config, [item for _, item in batch]
        return lambda client: _rate_all(client, items, config)

    def _outputs(self, batch, results):
        config, items = self._config, [item for _, item in batch]
        ratings = [r.value if r.ok else _rating_failure(example, r) for (example, _), r in zip(items, results)]
        self._settle([(key, [rating], None if r.ok else rating.reason)
                      for (key, _), rating, r in zip(batch, ratings, results)])
        for (example, unit), rating in zip(items, ratings):
            (self.rater_failures if isinstance(rating, DeadLetter) else self.rated).inc()
            for out in _apply_rating(example, unit, rating, config):
                if isinstance(out, beam.pvalue.TaggedOutput) and not isinstance(rating, DeadLetter):
                    self.low_quality.inc()
                yield out


def _replay_rating(done, config):
    (example, unit), payload = done
    (rating,) = journal.decode(payload)
    yield from _apply_rating(example, unit, rating, config)


async def _rate_all(client, batch, config):
    return await asyncio.gather(*(filtering.rate_example(client, e.task, e.query, e.positive.title,
                                                         e.positive.text, config) for e, _ in batch))


class RateExamples(beam.PTransform):
    """Gemini Embedding's LLM auto-rater: drop examples rated below a threshold, keeping the reason."""

    def __init__(self, settings: StageSettings, config: filtering.RaterConfig):
        super().__init__()
        self.settings, self.config = settings, config

    def expand(self, examples):
        key_fn = functools.partial(_rate_key, self.settings.model_key, load_prompt("quality_rater").hash,
                                   self.config)
        dofn = _RateFn(self.settings, self.config)
        return journaled_llm_stage(examples, self.settings, "rate", key_fn, "Rate", dofn, "examples", _replay_rating,
                                   self.config)


def _rate_key(model, prompt_hash, config, item):
    return journal.rate_key(model, prompt_hash, config, item[0])
