"""Write records as Parquet shards and the manifest that accounts for every seed passage."""

from __future__ import annotations

import apache_beam as beam

from pipeline import accounting
from pipeline.llm.usage import UsageMeter


class _MergingCombine(beam.CombineFn):
    """A CombineFn over accumulators that merge in place (`first.merge(other)`)."""

    def merge_accumulators(self, accs):
        first, *rest = list(accs)
        for other in rest:
            first.merge(other)
        return first


class ManifestCombine(_MergingCombine):
    """Outcome and example events -> the manifest's accumulator."""

    def create_accumulator(self):
        return accounting.ManifestAccumulator()

    def add_input(self, acc, event):
        kind, value = event
        if kind == "outcome":
            acc.add_outcome(value)
        else:
            acc.add_example(value)
        return acc

    def extract_output(self, acc):
        return acc


def summarize(final_outcomes, examples):
    """The manifest's accumulator (one element) from every resolved outcome and written example:
    the one definition for the one pipeline, each wave and remine. Applied in the caller's scope."""
    from pipeline.accounting import example_stats

    events = ((final_outcomes | "OutcomeEvents" >> beam.Map(lambda o: ("outcome", o)),
               examples | "ExampleEvents" >> beam.Map(lambda e: ("example", example_stats(e))))
              | "Events" >> beam.Flatten())
    return events | "Summarize" >> beam.CombineGlobally(ManifestCombine())


class SumTokens(_MergingCombine):
    """UsageMeters of every LLM batch -> one UsageMeter for the manifest."""

    def create_accumulator(self):
        return UsageMeter()

    def add_input(self, acc, meter):
        return acc.merge(meter)

    def extract_output(self, acc):
        return acc


def count_as(pcoll, name: str):
    """The manifest's count `name`: one (name, number of elements) pair."""
    return (pcoll | f"Count{name}" >> beam.combiners.Count.Globally()
            | f"Name{name}" >> beam.Map(lambda n, name: (name, n), name))


class ResolveOutcomes(beam.PTransform):
    """All per-query outcomes -> exactly one outcome per seed passage."""

    def expand(self, outcomes):
        return (outcomes
                | "KeyByUnit" >> beam.Map(lambda o: (o.unit_id, o))
                | "GroupByUnit" >> beam.GroupByKey()
                | "OnePerUnit" >> beam.MapTuple(lambda _, unit_outcomes: accounting.resolve_unit(unit_outcomes)))


class WriteRecords(beam.PTransform):
    """Records of one schema -> zstd Parquet shards with compliant nested types."""

    def __init__(self, model, prefix: str, num_shards: int = 0):
        super().__init__()
        self.model, self.prefix, self.num_shards = model, prefix, num_shards

    def expand(self, records):
        from schemas.arrow import to_row

        return (records
                | "ToRow" >> beam.Map(to_row)
                | "Parquet" >> beam.io.WriteToParquet(
                    self.prefix, schema=self.model.arrow_schema(), codec="zstd", use_compliant_nested_type=True,
                    file_name_suffix=".parquet", num_shards=self.num_shards,
                    shard_name_template="-SSSSS-of-NNNNN"))


def write_manifest(acc, stage_counts: dict, expected_inputs: int, meter: UsageMeter, path: str, meta: dict):
    from beam_jobs.journal import write_atomically

    # the requests behind the tokens: made, failed, retried, and QL's re-sends by reason
    calls = {(f"llm_{name}" if name in ("requests", "failures", "retries") else name): n
             for name, n in sorted(meter.calls.items())}
    manifest = accounting.build_manifest(acc, stage_counts={**stage_counts, **calls}, expected_inputs=expected_inputs,
                                         tokens=meter.usage(), **meta)
    # whole or not at all, as every other file: a reader never sees half a manifest
    write_atomically(path, manifest.model_dump_json(indent=2).encode("utf-8"))
    return manifest
