"""Read seed passages from JSONL/Parquet, split them to the embedder's budget, and deduplicate."""

from __future__ import annotations

import functools

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from beam_jobs.common import NS, OUTCOME, SharedBox
from pipeline import ingest, passage_dedupe
from pipeline.accounting import Outcome
from pipeline.embedding import count_tokens
from pipeline.given_queries import id_aliases
from pipeline.ingest import SplitConfig, dead_letter, embedder_budget
from schemas import DeadLetter


class ReadLines(beam.DoFn):
    """Yield (source 'path:line', raw bytes) for each non-blank line of a JSONL file."""

    def __init__(self):
        self.blank = Metrics.counter(NS, "blank_lines")

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        with readable.open() as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    self.blank.inc()
                    continue
                yield f"{path}:{number}", line.rstrip(b"\r\n")


class ReadParquetRows(beam.DoFn):
    def process(self, readable: fileio.ReadableFile):
        import pyarrow.parquet as pq

        path = readable.metadata.path
        with readable.open() as f:
            number = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    number += 1
                    yield f"{path}:row{number}", row


def load_splitter(embedder: str, split: SplitConfig, shared: Shared, trust_remote_code: bool = False):
    """(the embedder's tokenizer, the split config at its budget): what splitting a text needs, in
    a DoFn's setup. The corpus and the given texts are split by this one definition."""
    from pipeline.embedding import import_model_libraries, resolve_model_path

    import_model_libraries()  # Beam's multi_threading mode runs setups in parallel threads
    from transformers import AutoTokenizer

    path = resolve_model_path(embedder)
    tokenizer = shared.acquire(lambda: SharedBox(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)),
                               tag=f"tokenizer:{path}").value
    return tokenizer, embedder_budget(split, tokenizer, path)


class _ParseAndSplit(beam.DoFn):
    """Raw record -> Passages (split by the embedder's token budget), or an outcome with a reason."""

    def __init__(self, embedder: str, split: SplitConfig, shared: Shared, trust_remote_code: bool = False,
                 fields: ingest.InputFields = ingest.DEFAULT_FIELDS):
        self._embedder, self._split, self._shared, self._fields = embedder, split, shared, fields
        self._trust_remote_code = trust_remote_code
        self.read = Metrics.counter(NS, "records_read")
        self.bad = Metrics.counter(NS, "records_dead_lettered")
        self.passages = Metrics.counter(NS, "passages")
        self.split_records = Metrics.counter(NS, "records_split")

    def setup(self):
        self._tokenizer, self._split_here = load_splitter(self._embedder, self._split, self._shared,
                                                          self._trust_remote_code)
        self._count = functools.partial(count_tokens, self._tokenizer)

    def process(self, element):
        source, raw = element
        self.read.inc()
        record = (ingest.parse_jsonl_line(raw, source, self._fields) if isinstance(raw, bytes)
                  else ingest.validate_record(raw, source, self._fields))
        if isinstance(record, DeadLetter):
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(source, "dead_lettered", record))
            return
        try:
            passages = ingest.split_passage(record, source, self._count, self._split_here)
        except ingest.TitleTooLong as exc:
            self.bad.inc()
            letter = dead_letter(record.id or source, "split", "title_too_long", str(exc), record.model_dump(), source)
            yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(source, "dead_lettered", letter))
            return
        if not passages:
            self.bad.inc()
            letter = dead_letter(record.id or source, "split", "empty_text",
                                 "nothing is left of the text once control characters are removed",
                                 record.model_dump(), source)
            yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(source, "dead_lettered", letter))
            return
        if len(passages) > 1:
            self.split_records.inc()
        self.passages.inc(len(passages))
        yield from passages


class ReadSeedPassages(beam.PTransform):
    """Seed passages from JSONL/Parquet globs -> Passage, plus outcomes for unreadable records."""

    def __init__(self, patterns: str, input_format: str = "auto", embedder: str = "all-MiniLM-L6-v2",
                 split: SplitConfig = SplitConfig(), trust_remote_code: bool = False, spread: bool = True,
                 fields: ingest.InputFields = ingest.DEFAULT_FIELDS):
        super().__init__()
        self.fields = fields
        self.patterns = [p.strip() for p in patterns.split(",") if p.strip()]
        # spread: reshuffle the records over workers (one file is one reader). The DirectRunner
        # holds a reshuffled PCollection whole, so a plan of waves streams instead.
        self.trust_remote_code, self.spread = trust_remote_code, spread
        if not self.patterns:
            raise ValueError("--input is empty: give one or more JSONL/Parquet paths or globs")
        self.input_format, self.embedder, self.split = input_format, embedder, split

    def expand(self, pbegin):
        files = (pbegin
                 | "Patterns" >> beam.Create(self.patterns)
                 | "Match" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
                 # overlapping globs match a file twice; reading it twice would count its records twice
                 | "Paths" >> beam.Map(lambda m: m.path)
                 | "OnePerPath" >> beam.Distinct()
                 | "Open" >> fileio.ReadMatches()
                 | "ByFormat" >> beam.Partition(lambda f, n: 1 if is_parquet(f.metadata.path, self.input_format)
                                                else 0, 2))
        lines = files[0] | "ReadJsonl" >> beam.ParDo(ReadLines())
        rows = files[1] | "ReadParquet" >> beam.ParDo(ReadParquetRows())
        records = (lines, rows) | "Records" >> beam.Flatten()
        if self.spread:
            records = records | "Spread" >> beam.Reshuffle()
        return (records
                | "ParseSplit" >> beam.ParDo(_ParseAndSplit(self.embedder, self.split, Shared(), self.trust_remote_code,
                                                            self.fields))
                .with_outputs(OUTCOME, main="passages"))


def is_parquet(path: str, input_format: str) -> bool:
    if input_format != "auto":
        return input_format == "parquet"
    return path.endswith((".parquet", ".pq"))


DROPS, ALIASES = "drops", "aliases"


def _resolve(element, resolver, aliases_of):
    """Members sharing an id or a text -> the kept ones, (member, Drop) for each one dropped, and
    (id, kept id) for each id a dropped duplicate text answered to (aliases_of(member): its keys)."""
    _, members = element
    kept, drops = resolver(members)
    yield from kept
    for member, drop in drops:
        yield beam.pvalue.TaggedOutput(DROPS, (member, drop))
        if drop.kept_id and aliases_of is not None:
            for alias in id_aliases(aliases_of(member), drop.kept_id):
                yield beam.pvalue.TaggedOutput(ALIASES, alias)


class DeduplicatePassages(beam.PTransform):
    """One passage per id (conflicting texts under one id are dropped as conflicts) and per text,
    by pipeline.passage_dedupe's rule -> {"kept", DROPS: (member, Drop), ALIASES: (id of a dropped
    duplicate text, the kept copy's id)}. The one definition for both plans: the one pipeline
    deduplicates passages (key: passage_key), waves deduplicate small keys without the texts
    (beam_jobs.given_waves.dedupe_member, key: member_key). `keys_of(member)`: the keys a
    positive looks it up by (gq.corpus_keys), for the aliases."""

    def __init__(self, key=passage_dedupe.passage_key, keys_of=None):
        super().__init__()
        self.key, self.keys_of = key, keys_of

    def expand(self, members):
        key = self.key
        by_id = (members
                 | "KeyById" >> beam.Map(lambda m: (key(m).id, m))
                 | "GroupById" >> beam.GroupByKey()
                 | "ResolveIds" >> beam.FlatMap(_resolve, functools.partial(passage_dedupe.resolve_id_group, key=key),
                                                None)
                 .with_outputs(DROPS, main="kept"))
        by_text = (by_id.kept
                   | "KeyByText" >> beam.Map(lambda m: (key(m).content, m))
                   | "GroupByText" >> beam.GroupByKey()
                   | "ResolveTexts" >> beam.FlatMap(_resolve, functools.partial(passage_dedupe.resolve_content_group,
                                                                                key=key), self.keys_of)
                   .with_outputs(DROPS, ALIASES, main="kept"))
        drops = (by_id[DROPS], by_text[DROPS]) | "Drops" >> beam.Flatten()
        return {"kept": by_text.kept, DROPS: drops, ALIASES: by_text[ALIASES]}
