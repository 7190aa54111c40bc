"""Every seed passage ends in exactly one of written / filtered / dead-lettered.

The unit is a seed passage after splitting (an input record that cannot be read counts as
one unit). A passage with several queries is written if any query became an example, else
filtered if any was filtered, else dead-lettered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
from collections import Counter
from typing import Iterable, Literal, NamedTuple, Optional, Union

from pipeline.score_sketch import ScoreSketch
from schemas import DeadLetter, FilteredRecord, Passage, RunManifest, ScoreSummary, TokenUsage, TrainingExample

Status = Literal["written", "filtered", "dead_lettered"]
_PRIORITY = {"written": 0, "filtered": 1, "dead_lettered": 2}


@dataclasses.dataclass(frozen=True)
class Outcome:
    unit_id: str  # passage id, or the input's source for records that never became a passage
    status: Status
    record: Union[None, DeadLetter, FilteredRecord] = None  # why, when not written


def resolve_unit(outcomes: Iterable[Outcome]) -> Outcome:
    """One final outcome per unit from its per-query outcomes."""
    ordered = sorted(outcomes, key=lambda o: (_PRIORITY[o.status], _sort_key(o)))
    if not ordered:
        raise ValueError("a unit needs at least one outcome")
    return ordered[0]


def _sort_key(o: Outcome) -> str:
    return o.record.detail if o.record is not None else ""


def unit_id(passage: Passage) -> str:
    """The accounting unit of a seed passage: its input record and chunk."""
    return f"{passage.source_id}#{passage.chunk}"


def query_unit(query, seed: Optional[Passage]) -> str:
    """The unit a query's outcome counts under: a given query (--queries) is its own row; a
    generated one counts under the seed passage it was generated from."""
    return getattr(query, "unit", None) or unit_id(seed)  # waves' filter: a QueryKey (a given one has a unit)


def filtered(unit: str, record_id: str, stage: str, reason: str, detail: str = "") -> Outcome:
    return Outcome(unit, "filtered", FilteredRecord(record_id=record_id, stage=stage, reason=reason,
                                                    detail=detail, created_at=dt.datetime.now(dt.timezone.utc)))


def embedder_refused(unit: str, record_id: str, detail: str, text: str = "") -> Outcome:
    """The retrieval embedder's endpoint refused a text (a passage, a query, or a query's seed)."""
    return Outcome(unit, "dead_lettered", DeadLetter(record_id=record_id, stage="retrieve", reason="embedder_refused",
                                                     detail=detail[:1000], payload=text[:1000],
                                                     created_at=dt.datetime.now(dt.timezone.utc)))


class AccountingError(RuntimeError):
    pass


class ExampleStats(NamedTuple):
    """What the manifest needs from one written example; about 1/40 of the example's bytes, so the
    runner does not hold every example a second time on its way to the manifest."""
    task: str
    relabelled: bool
    ql: float
    rc: float
    fused: float
    query_words: float
    audit: tuple = ()  # (name, count) of pipeline.audit.audit_example


def example_stats(example: TrainingExample) -> ExampleStats:
    from pipeline.audit import audit_example

    return ExampleStats(example.task, example.positive_changed, example.positive_ql, example.positive_rc,
                        example.positive_fused, float(len(example.query.split())),
                        tuple(sorted(audit_example(example).items())))


TOP_TASKS = 50
SCORES = ("ql", "rc", "fused", "query_words")


@dataclasses.dataclass
class ManifestAccumulator:
    """Mergeable run statistics (a Beam CombineFn delegates here)."""

    status: Counter = dataclasses.field(default_factory=Counter)
    reasons: Counter = dataclasses.field(default_factory=Counter)
    examples: int = 0
    relabelled: int = 0
    tasks: Counter = dataclasses.field(default_factory=Counter)
    scores: dict = dataclasses.field(default_factory=lambda: {name: ScoreSketch() for name in SCORES})
    audit: Counter = dataclasses.field(default_factory=Counter)  # the false-negative audit (pipeline.audit)

    def add_outcome(self, outcome: Outcome) -> None:
        self.status[outcome.status] += 1
        if outcome.record is not None:
            self.reasons[f"{outcome.status}:{outcome.record.reason}"] += 1

    def add_example(self, stats: ExampleStats) -> None:
        self.examples += 1
        self.relabelled += int(stats.relabelled)
        self.tasks[stats.task] += 1
        self.audit.update(dict(stats.audit))
        for name in SCORES:
            value = getattr(stats, name)
            if math.isfinite(value):  # QL or RC is NaN when --scores left it out
                self.scores[name].add(value)

    def merge(self, other: "ManifestAccumulator") -> "ManifestAccumulator":
        self.status.update(other.status)
        self.reasons.update(other.reasons)
        self.examples += other.examples
        self.relabelled += other.relabelled
        self.tasks.update(other.tasks)
        self.audit.update(other.audit)
        for name in SCORES:
            self.scores[name].merge(other.scores[name])
        return self


def reservoir_add(bucket: list, value, seen: int, capacity: int, rng: random.Random) -> None:
    """Reservoir sampling (`seen` counts this value): memory stays flat however many values come."""
    if len(bucket) < capacity:
        bucket.append(value)
    else:
        j = rng.randrange(seen)
        if j < capacity:
            bucket[j] = value


def summarize(sketch: ScoreSketch) -> ScoreSummary:
    if not sketch.count:
        return ScoreSummary(count=0)
    return ScoreSummary(count=sketch.count, mean=sketch.mean, std=sketch.std, min=sketch.min,
                        p50=sketch.quantile(0.5), max=sketch.max)


def false_negative_share(audit: dict) -> Optional[float]:
    from pipeline.audit import false_negative_share as share

    return share(audit)


def build_manifest(acc: ManifestAccumulator, *, run_id: str, started_at: dt.datetime, stage_counts: dict[str, int],
                   llm_model: str, embedder: str, prompts: dict[str, str], config: str,
                   expected_inputs: Optional[int] = None, resumed: bool = False,
                   ranking_precision: Optional[dict[str, int]] = None,
                   tokens: Optional[dict[str, TokenUsage]] = None,
                   phase_seconds: Optional[dict[str, float]] = None,
                   scoring: Optional[dict[str, str]] = None, scores_from: Optional[str] = None,
                   journal_models: Optional[dict[str, str]] = None) -> RunManifest:
    written, filtered, dead = (acc.status[s] for s in ("written", "filtered", "dead_lettered"))
    inputs = written + filtered + dead
    if expected_inputs is not None and inputs != expected_inputs:
        raise AccountingError(
            f"accounting mismatch: {expected_inputs} seed passages went in, but written ({written}) + filtered "
            f"({filtered}) + dead-lettered ({dead}) = {inputs}. This is a bug in fret-distill; please report it.")
    tasks = dict(acc.tasks.most_common(TOP_TASKS))
    if len(acc.tasks) > TOP_TASKS:
        tasks["<other>"] = sum(acc.tasks.values()) - sum(tasks.values())
    counts = dict(stage_counts)
    counts.update({f"outcome:{k}": v for k, v in sorted(acc.reasons.items())})
    counts["examples_written"] = acc.examples
    counts["examples_relabelled"] = acc.relabelled
    counts.update(sorted(acc.audit.items()))
    return RunManifest(
        run_id=run_id, started_at=started_at, finished_at=dt.datetime.now(dt.timezone.utc), counts=counts,
        inputs=inputs, written=written, filtered=filtered, dead_lettered=dead,
        relabel_rate=(acc.relabelled / acc.examples) if acc.examples else None,
        task_mix=tasks, scores={name: summarize(values) for name, values in acc.scores.items()},
        llm_model=llm_model, embedder=embedder, prompts=prompts, config=config,
        accounting=f"{inputs} inputs = {written} written + {filtered} filtered + {dead} dead-lettered"
                   + (" (checked against the input count)" if expected_inputs is not None else ""),
        resumed=resumed, ranking_precision=ranking_precision or {}, tokens=tokens or {},
        phase_seconds=phase_seconds or {}, scoring=scoring or {}, journal_models=journal_models or {},
        false_negative_share=false_negative_share(acc.audit), scores_from=scores_from,
    )
