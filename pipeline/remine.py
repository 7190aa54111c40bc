"""`fret remine`: an example rebuilt from the candidate scores its run stored, under other mining
settings. No server: every score is in the row (--keep-candidates, on by default), so a sweep of
margins, strategies, --relabel and --extra-positives costs 0 LLM tokens."""

from __future__ import annotations

from pipeline.examples import build_example
from pipeline.mining import MiningConfig
from schemas import QueryRecord, TrainingExample

# The flags remine may change: how the stored scores become an example. Any other flag changes
# what was scored and needs a run.
REMINE_FLAGS = ("relabel", "negative_strategy", "num_negatives", "negative_window", "negative_margin", "margin_score",
                "negative_range", "negative_absolute_margin", "negative_relative_margin", "negative_max_score",
                "negative_min_score", "extra_positives", "extra_positive_score", "extra_positive_margin", "seed",
                "keep_candidates")


class NoCandidates(ValueError):
    """The run did not store its candidates (--keep-candidates false): there is nothing to remine."""


def query_of(example: TrainingExample) -> QueryRecord:
    """The query as the rerank stage had it, from the example's own fields."""
    return QueryRecord(query_id=example.query_id, passage_id=example.seed_passage_id, task=example.task,
                       query=example.query, knobs=example.knobs, source=example.query_source,
                       known_positive_ids=list(example.known_positive_ids),
                       positive_id_as_given=example.positive_id_as_given)


def remine(example: TrainingExample, mining: MiningConfig, keep_candidates: bool = True) -> TrainingExample:
    """The example the run would have written with `mining` (provenance aside: stamp() adds it)."""
    if not example.candidates:
        raise NoCandidates(f"example {example.example_id} stores no candidates: its run had --keep-candidates false, "
                           "so only a new run can mine it differently")
    return build_example(query_of(example), example.candidates, mining, keep_candidates, quality=example.quality)
