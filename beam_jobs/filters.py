"""Query filters (exact and near duplicates) and decontamination against the evaluation set."""

from __future__ import annotations

from typing import Optional

import apache_beam as beam
from apache_beam.io import fileio

from beam_jobs.common import OUTCOME
from pipeline import decontamination, filtering
from pipeline.accounting import filtered, query_unit


def _exact_dedupe(element):
    _, members = element
    members = sorted(members, key=lambda qp: qp[0].query_id)
    yield members[0]
    for query, passage in members[1:]:
        yield beam.pvalue.TaggedOutput(OUTCOME, filtered(query_unit(query, passage), query.query_id, "filter",
                                                         "duplicate_query", f"same query as {members[0][0].query_id}"))


class FilterQueries(beam.PTransform):
    """Exact and near-duplicate queries, and queries that overlap the evaluation set."""

    def __init__(self, near_dup: Optional[filtering.NearDupConfig], decontam: decontamination.DecontamConfig):
        super().__init__()
        self.near_dup, self.decontam = near_dup, decontam

    def expand(self, pcolls):
        queries, eval_index = pcolls
        exact = (queries
                 | "KeyNormalized" >> beam.Map(lambda qp: (filtering.normalize_query(qp[0].query), qp))
                 | "GroupNormalized" >> beam.GroupByKey()
                 | "ExactDedupe" >> beam.FlatMap(_exact_dedupe).with_outputs(OUTCOME, main="queries"))
        kept, outcomes = exact.queries, [exact[OUTCOME]]
        if self.near_dup is not None:
            # Verified pairs are few (only near duplicates): they meet on one worker, where the
            # greedy pass keeps the first of each group, whatever band found the pair.
            drop = (kept
                    | "Bands" >> beam.FlatMap(_band_keys, self.near_dup)
                    | "GroupBands" >> beam.GroupByKey()
                    | "PairsInBand" >> beam.FlatMap(_pairs_in_band, self.near_dup)
                    | "DistinctPairs" >> beam.Distinct()
                    | "AllPairs" >> beam.combiners.ToList()
                    | "Greedy" >> beam.FlatMap(lambda pairs: [(q, 1) for q in filtering.near_duplicates_to_drop(pairs)]))
            near = ({"query": kept | "KeyByQueryId" >> beam.Map(lambda qp: (qp[0].query_id, qp)), "drop": drop}
                    | "JoinDrops" >> beam.CoGroupByKey()
                    | "ApplyNearDup" >> beam.FlatMap(_apply_drop).with_outputs(OUTCOME, main="queries"))
            kept, outcomes = near.queries, outcomes + [near[OUTCOME]]
        clean = kept | "Decontaminate" >> beam.FlatMap(
            _decontaminate, beam.pvalue.AsSingleton(eval_index), self.decontam, "query"
        ).with_outputs(OUTCOME, main="queries")
        return clean.queries, (outcomes + [clean[OUTCOME]]) | "Outcomes" >> beam.Flatten()


def _band_keys(qp, config):
    query = qp[0]
    return [(band, (query.query_id, query.query)) for band in filtering.minhash_bands(query.query, config)]


def _pairs_in_band(element, config):
    _, members = element
    return filtering.near_duplicate_pairs(list(members), config)


def _apply_drop(element):
    _, grouped = element
    for query, passage in grouped["query"]:
        if list(grouped["drop"]):
            yield beam.pvalue.TaggedOutput(OUTCOME, filtered(query_unit(query, passage), query.query_id, "filter",
                                                             "near_duplicate_query"))
        else:
            yield query, passage


def _decontaminate(item, eval_index, config, part: str):
    """Pass `item` on unless its `part` quotes the evaluation set: a generated query, matched as a
    whole text, in (query, passage); the positive's title and text in (example, unit)."""
    record, owner = item
    if part == "query":
        texts, whole, unit, record_id = [record.query], True, query_unit(record, owner), record.query_id
    else:
        texts, whole, unit, record_id = [record.positive.title, record.positive.text], False, owner, record.example_id
    hit = decontamination.contamination(texts, eval_index, config, whole_text=whole)
    if hit:
        yield beam.pvalue.TaggedOutput(OUTCOME, filtered(unit, record_id, "filter", "decontaminated", f"{part} {hit}"))
    else:
        yield item


class LoadEvalIndex(beam.PTransform):
    """The hashed keys of the evaluation files (an empty index when none are given), as one element."""

    def __init__(self, patterns: str, config: decontamination.DecontamConfig):
        super().__init__()
        self.patterns, self.config = patterns, config

    def expand(self, pbegin):
        config = self.config
        if not self.patterns:
            return pbegin | "NoEvalSet" >> beam.Create([decontamination.EvalIndex()])
        return (pbegin
                | "EvalFiles" >> beam.Create([p.strip() for p in self.patterns.split(",") if p.strip()])
                | "MatchEval" >> fileio.MatchAll()
                | "OpenEval" >> fileio.ReadMatches()
                | "EvalLines" >> beam.FlatMap(lambda f: f.read_utf8().splitlines())
                | "EvalText" >> beam.FlatMap(decontamination.eval_texts)
                | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
                | "Keys" >> beam.Map(decontamination.eval_keys_batch, config)
                | "Index" >> beam.CombineGlobally(_EvalIndexCombine()))


class _EvalIndexCombine(beam.CombineFn):
    """Key arrays -> one sorted unique array; compacts as it goes so duplicates never pile up."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, keys):
        acc.append(keys)
        if len(acc) >= 4096:
            acc[:] = [decontamination.EvalIndex.from_arrays(acc).keys]
        return acc

    def merge_accumulators(self, accs):
        return [decontamination.EvalIndex.from_arrays([a for acc in accs for a in acc]).keys]

    def extract_output(self, acc):
        return decontamination.EvalIndex.from_arrays(acc)


class DecontaminateExamples(beam.PTransform):
    """Drop examples whose positive quotes the evaluation set (pipeline.decontamination's rule)."""

    def __init__(self, config: decontamination.DecontamConfig):
        super().__init__()
        self.config = config

    def expand(self, pcolls):
        examples, eval_index = pcolls
        return examples | "DropContaminated" >> beam.FlatMap(
            _decontaminate, beam.pvalue.AsSingleton(eval_index), self.config, "positive"
        ).with_outputs(OUTCOME, main="examples")
