"""Given queries (--queries): read the user's rows, join their texts and positives to the corpus,
and hand (QueryRecord, seed) pairs to retrieval as generation would. Glue only: the rules are
in pipeline/given_queries.py."""

from __future__ import annotations

import functools

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from beam_jobs.common import NS, OUTCOME
from beam_jobs.read import is_parquet, load_splitter, ReadLines, ReadParquetRows
from pipeline import given_queries as gq
from pipeline import ingest
from pipeline.accounting import Outcome
from pipeline.embedding import count_tokens
from pipeline.ingest import SplitConfig, dead_letter
from schemas import DeadLetter, GivenQuery, InputPassage, PassageRef


def beir_folder(patterns: str, layout: str) -> str:
    """The BEIR folder --queries names ("" when the rows are in files): a folder holding
    queries.jsonl is read as BEIR with --queries_layout auto."""
    path = patterns.strip().rstrip("/")
    if layout == "beir":
        return path
    looks_like_files = "," in path or any(c in path for c in "*?[") or path.endswith(ROW_FILE_SUFFIXES)
    if layout == "auto" and not looks_like_files and FileSystems.exists(f"{path}/queries.jsonl"):
        return path
    return ""


ROW_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".pq", ".gz")


def _dead(source: str, letter: DeadLetter) -> Outcome:
    return Outcome(source, "dead_lettered", letter)


class _ParseRows(beam.DoFn):
    def __init__(self, layout: str):
        self._layout = layout
        self.read = Metrics.counter(NS, "query_rows_read")
        self.bad = Metrics.counter(NS, "query_rows_dead_lettered")

    def process(self, element):
        source, raw = element
        self.read.inc()
        parsed = (gq.parse_line(raw, source, self._layout) if isinstance(raw, bytes)
                  else gq.parse_row(raw, source, self._layout))
        if isinstance(parsed, DeadLetter):
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(OUTCOME, _dead(source, parsed))
        else:
            yield parsed


class _SplitGivenTexts(beam.DoFn):
    """A row's texts split as corpus records are (one splitter, beam_jobs.read.load_splitter);
    a title that fills the budget dead-letters the row, as it does a corpus record."""

    def __init__(self, embedder: str, split: SplitConfig, trust_remote_code: bool):
        self._embedder, self._split, self._trust = embedder, split, trust_remote_code
        self._shared = Shared()
        self.split_rows = Metrics.counter(NS, "given_texts_split")

    def setup(self):
        tokenizer, self._budget = load_splitter(self._embedder, self._split, self._shared, self._trust)
        self._count = functools.partial(count_tokens, tokenizer)

    def _chunks(self, ref: PassageRef, source: str) -> list[PassageRef]:
        record = InputPassage(id=ref.id, title=ref.title, text=ref.text)
        chunks = [PassageRef(id=p.id, title=p.title, text=p.text)
                  for p in ingest.split_passage(record, source, self._count, self._budget)]
        if len(chunks) > 1:
            self.split_rows.inc()
        return chunks or [ref]

    def process(self, query: GivenQuery):
        try:
            yield gq.split_given(query, lambda ref: self._chunks(ref, query.source))
        except ingest.TitleTooLong as exc:
            letter = dead_letter(query.source, "split", "title_too_long", f"a text given with the row: {exc}",
                                 query.model_dump(), query.source)
            yield beam.pvalue.TaggedOutput(OUTCOME, _dead(query.source, letter))


def _read_files(pbegin, label: str, patterns: list[str]):
    return (pbegin
            | f"{label}Patterns" >> beam.Create(patterns)
            | f"{label}Match" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
            | f"{label}Paths" >> beam.Map(lambda m: m.path)
            | f"{label}OnePerPath" >> beam.Distinct()
            | f"{label}Open" >> fileio.ReadMatches())


def _beir_queries(element):
    source, raw = element
    parsed = gq.beir_query(raw, source)
    if isinstance(parsed, DeadLetter):
        # a broken line of queries.jsonl: its own unit (it may or may not be in the split)
        yield beam.pvalue.TaggedOutput(OUTCOME, _dead(source, parsed))
    else:
        query_id, text = parsed
        yield query_id, (source, text)


def _qrels(element):
    source, raw = element
    parsed = gq.qrel(raw, source)
    if isinstance(parsed, DeadLetter):
        yield beam.pvalue.TaggedOutput(OUTCOME, _dead(source, parsed))
    elif parsed is not None:
        query_id, corpus_id, score = parsed
        yield query_id, (corpus_id, score, source)


def _beir_join(element):
    query_id, grouped = element
    for made in gq.beir_given(query_id, list(grouped["text"]), list(grouped["qrels"])):
        if isinstance(made, GivenQuery):
            yield made
        else:
            yield beam.pvalue.TaggedOutput(OUTCOME, _dead(*made))


class ReadGivenQueries(beam.PTransform):
    """--queries -> {"given": GivenQuery, OUTCOME: a dead letter per unreadable row}. A row (a
    BEIR query with a positive qrel) is an accounting unit."""

    def __init__(self, patterns: str, layout: str = "auto", split: str = "train", input_format: str = "auto",
                 embedder: str = "all-MiniLM-L6-v2", text_split: SplitConfig = SplitConfig(),
                 trust_remote_code: bool = False):
        super().__init__()
        self.patterns, self.layout, self.split, self.input_format = patterns, layout, split, input_format
        self.splitter = _SplitGivenTexts(embedder, text_split, trust_remote_code)

    @classmethod
    def of(cls, opts) -> "ReadGivenQueries":
        """--queries as the job's options name it: one definition for one pipeline and waves."""
        from beam_jobs import options as opt

        return cls(opts.queries, opts.queries_layout, opts.queries_split, opts.input_format, opts.embedder,
                   opt.split_config(opts), opts.trust_remote_code)

    def expand(self, pbegin):
        folder = beir_folder(self.patterns, self.layout)
        if folder:
            return self._beir(pbegin, folder)
        files = (_read_files(pbegin, "Queries", [p.strip() for p in self.patterns.split(",") if p.strip()])
                 | "QueriesByFormat" >> beam.Partition(
                     lambda f, n: 1 if is_parquet(f.metadata.path, self.input_format) else 0, 2))
        rows = ((files[0] | "QueryLines" >> beam.ParDo(ReadLines()),
                 files[1] | "QueryParquetRows" >> beam.ParDo(ReadParquetRows()))
                | "QueryRows" >> beam.Flatten())
        parsed = rows | "ParseQueryRows" >> beam.ParDo(_ParseRows(self.layout)).with_outputs(OUTCOME, main="given")
        split = parsed.given | "SplitGivenTexts" >> beam.ParDo(self.splitter).with_outputs(OUTCOME, main="given")
        outcomes = (parsed[OUTCOME], split[OUTCOME]) | "QueryRowOutcomes" >> beam.Flatten()
        return {"given": split.given, OUTCOME: outcomes}

    def _beir(self, pbegin, folder: str):
        texts = (_read_files(pbegin, "BeirQueries", [f"{folder}/queries.jsonl"])
                 | "BeirQueryLines" >> beam.ParDo(ReadLines())
                 | "ParseBeirQueries" >> beam.FlatMap(_beir_queries).with_outputs(OUTCOME, main="texts"))
        qrels = (_read_files(pbegin, "BeirQrels", [f"{folder}/qrels/{self.split}.tsv"])
                 | "BeirQrelLines" >> beam.ParDo(ReadLines())
                 | "ParseQrels" >> beam.FlatMap(_qrels).with_outputs(OUTCOME, main="qrels"))
        joined = ({"text": texts.texts, "qrels": qrels.qrels}
                  | "JoinQrels" >> beam.CoGroupByKey()
                  | "BeirGiven" >> beam.FlatMap(_beir_join).with_outputs(OUTCOME, main="given"))
        outcomes = (texts[OUTCOME], qrels[OUTCOME], joined[OUTCOME]) | "BeirOutcomes" >> beam.Flatten()
        return {"given": joined.given, OUTCOME: outcomes}


def _new_passages(element):
    """A text key with given texts: a new corpus passage unless the corpus holds the text."""
    _, grouped = element
    if list(grouped["corpus"]):
        return
    refs = sorted(grouped["given"], key=lambda rs: (rs[1], rs[0].id))
    if refs:
        ref, source = refs[0]
        yield gq.joined_passage(ref, source)


def _attach(element, default_task: str):
    """(key, {"pool": passages, "query": given queries}) -> (QueryRecord, seed), or a dead letter."""
    (kind, _), grouped = element
    queries = list(grouped["query"])
    if not queries:
        return
    passages = sorted(grouped["pool"], key=lambda p: (p.chunk, p.id))
    for query in queries:
        if passages:
            yield gq.query_record(query, passages[0], default_task), passages[0]
        else:  # a positive id not in the corpus (a text positive always has a passage: it joined)
            yield beam.pvalue.TaggedOutput(OUTCOME, _dead(query.source, gq.missing_positive(query)))


def _aliases_of_query(element):
    _, grouped = element
    kept = list(grouped["kept"])
    if kept:
        for query_id in set(grouped["query"]):
            yield query_id, (element[0], kept[0])


def _with_aliases(element):
    _, grouped = element
    aliases = dict(grouped["alias"])
    for query in grouped["query"]:
        yield gq.resolve_aliases(query, aliases)


class ResolveAliases(beam.PTransform):
    """(given queries, (id, kept id) of each dropped duplicate) -> the queries, their positive and
    known positive ids that named a dropped duplicate resolved to the kept copy (gq.resolve_aliases).
    Two joins on ids: no side holds the other whole."""

    def expand(self, pcolls):
        given, aliases = pcolls
        named = given | "IdsNamed" >> beam.FlatMap(lambda q: [(i, q.query_id) for i in gq.ids_named(q)])
        found = ({"query": named, "kept": aliases}
                 | "MatchAliases" >> beam.CoGroupByKey()
                 | "AliasesOfQuery" >> beam.FlatMap(_aliases_of_query))
        return ({"query": given | "ByQueryId" >> beam.Map(lambda q: (q.query_id, q)), "alias": found}
                | "GroupAliases" >> beam.CoGroupByKey()
                | "Resolve" >> beam.FlatMap(_with_aliases))


class JoinGivenToCorpus(beam.PTransform):
    """(corpus passages, given queries, aliases of dropped duplicates) -> {"pool": the corpus with
    the given texts it lacked,
    "queries": (QueryRecord, seed passage or None), "joined": the texts that joined (Passages),
    OUTCOME}.

    Waves join on keys alone: the corpus comes as gq.CorpusRef (keys_of=gq.ref_keys), a joined
    text enters the pool as one (to_pool=gq.corpus_ref), and each query's seed is a CorpusRef
    that the seed's wave later turns back into its passage."""

    def __init__(self, default_task: str, keys_of=gq.corpus_keys, to_pool=None):
        super().__init__()
        self.default_task, self.keys_of, self.to_pool = default_task, keys_of, to_pool

    def expand(self, pcolls):
        passages, given, aliases = pcolls
        given = (given, aliases) | "ResolveAliases" >> ResolveAliases()
        keys_of = self.keys_of
        texts = given | "GivenTexts" >> beam.FlatMap(lambda q: [(k, (r, q.source)) for k, r in gq.given_texts(q)])
        by_text = passages | "CorpusByText" >> beam.FlatMap(lambda p: [(k, True) for kind, k in keys_of(p)
                                                                        if kind == "text"])
        joined = ({"corpus": by_text, "given": texts}
                  | "MatchTexts" >> beam.CoGroupByKey()
                  | "NewPassages" >> beam.FlatMap(_new_passages))
        new = joined if self.to_pool is None else joined | "JoinedRefs" >> beam.Map(self.to_pool)
        pool = (passages, new) | "Pool" >> beam.Flatten()
        with_key = given | "PositiveKey" >> beam.Map(lambda q: (gq.positive_key(q), q))
        keyed = (with_key
                 | "HasPositive" >> beam.Filter(lambda kq: kq[0] is not None))
        none = (with_key
                | "NoPositive" >> beam.Filter(lambda kq: kq[0] is None)
                | "TopFusedLater" >> beam.Map(lambda kq, task: (gq.query_record(kq[1], None, task), None),
                                              self.default_task))
        pool_keys = pool | "PoolKeys" >> beam.FlatMap(lambda p: [(k, p) for k in keys_of(p)])
        seeded = ({"pool": pool_keys, "query": keyed}
                  | "FindPositives" >> beam.CoGroupByKey()
                  | "Attach" >> beam.FlatMap(_attach, self.default_task).with_outputs(OUTCOME, main="queries"))
        queries = (seeded.queries, none) | "GivenQueries" >> beam.Flatten()
        return {"pool": pool, "queries": queries, "joined": joined, OUTCOME: seeded[OUTCOME]}


def given_stage(p, opts, corpus, aliases, keys_of=gq.corpus_keys, to_pool=None) -> dict:
    """--queries read and joined to the corpus: the one wiring of both plans (the one pipeline
    joins passages; waves join keys, with keys_of=gq.ref_keys and to_pool=gq.corpus_ref).
    -> {"attached": JoinGivenToCorpus's outputs, "units": the rows' PCollections, "outcomes": their
    dead letters, "counts": the manifest's counts of the stage}."""
    from beam_jobs.write import count_as

    given = p | "ReadGivenQueries" >> ReadGivenQueries.of(opts)
    attached = (corpus, given["given"], aliases) | "JoinGivenToCorpus" >> JoinGivenToCorpus(
        opts.queries_task, keys_of=keys_of, to_pool=to_pool)
    return {"attached": attached, "units": [given["given"], given[OUTCOME]],
            "outcomes": [given[OUTCOME], attached[OUTCOME]],
            "counts": [count_as(given["given"], "queries_given"), count_as(attached["joined"], "given_texts_joined"),
                       count_as(attached["queries"], "given_queries_to_retrieve")]}
