"""Composite PTransforms of the FRet job. Each step hands its work to a function in pipeline/.

Every transform that can reject elements returns a main output plus an "outcome" output of
pipeline.accounting.Outcome records, so the job can prove that every seed passage was written,
filtered or dead-lettered.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import math
from typing import Optional, Union

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.shared import Shared

from beam_jobs.journal import LookupJournal, write_entries
from pipeline import accounting, decontamination, filtering, ids, ingest, journal, retrieval
from pipeline.accounting import Outcome, filtered, unit_id
from pipeline.embedding import Embedder, count_tokens, passage_text
from pipeline.examples import build_example
from pipeline.generation import LLM_REASONS, GenerationConfig, generate_queries
from pipeline.ingest import SplitConfig, dead_letter
from pipeline.llm.blocking import BlockingLLM
from pipeline.llm.client import ClientConfig
from pipeline.mining import MiningConfig
from pipeline.progress import Progress
from pipeline.prompts import load_prompt
from pipeline.reliability import FailureGuard, FailurePolicy
from pipeline.rerank import RerankConfig, build_candidates, score_query
from schemas import DeadLetter, Passage, Provenance, QualityRating

NS = "fret"
OUTCOME = "outcome"
log = logging.getLogger("fret")


# ---------------------------------------------------------------------------- read


class _ReadLines(beam.DoFn):
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


class _ReadParquetRows(beam.DoFn):
    def process(self, readable: fileio.ReadableFile):
        import pyarrow.parquet as pq

        path = readable.metadata.path
        with readable.open() as f:
            number = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    number += 1
                    yield f"{path}:row{number}", row


class _ParseAndSplit(beam.DoFn):
    """Raw record -> Passages (split by the embedder's token budget), or an outcome with a reason."""

    def __init__(self, embedder: str, split: SplitConfig, shared: Shared, trust_remote_code: bool = False):
        self._embedder, self._split, self._shared = embedder, split, shared
        self._trust_remote_code = trust_remote_code
        self.read = Metrics.counter(NS, "records_read")
        self.bad = Metrics.counter(NS, "records_dead_lettered")
        self.passages = Metrics.counter(NS, "passages")
        self.split_records = Metrics.counter(NS, "records_split")

    def setup(self):
        from transformers import AutoTokenizer

        from pipeline.embedding import resolve_model_path

        path = resolve_model_path(self._embedder)
        trust = self._trust_remote_code
        self._tokenizer = self._shared.acquire(lambda: _Box(AutoTokenizer.from_pretrained(path, trust_remote_code=trust)),
                                               tag=f"tokenizer:{path}").value

    def _count(self, text: str) -> int:
        return count_tokens(self._tokenizer, text)

    def process(self, element):
        source, raw = element
        self.read.inc()
        record = ingest.parse_jsonl_line(raw, source) if isinstance(raw, bytes) else ingest.validate_record(raw, source)
        if isinstance(record, DeadLetter):
            self.bad.inc()
            yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(source, "dead_lettered", record))
            return
        passages = ingest.split_passage(record, source, self._count, self._split)
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


class _Box:
    """Shared.acquire needs a weak-referenceable object."""

    def __init__(self, value):
        self.value = value


class ReadSeedPassages(beam.PTransform):
    """Seed passages from JSONL/Parquet globs -> Passage, plus outcomes for unreadable records."""

    def __init__(self, patterns: str, input_format: str = "auto", embedder: str = "all-MiniLM-L6-v2",
                 split: SplitConfig = SplitConfig(), trust_remote_code: bool = False):
        super().__init__()
        self.patterns = [p.strip() for p in patterns.split(",") if p.strip()]
        self.trust_remote_code = trust_remote_code
        if not self.patterns:
            raise ValueError("--input is empty: give one or more JSONL/Parquet paths or globs")
        self.input_format, self.embedder, self.split = input_format, embedder, split

    def expand(self, pbegin):
        files = (pbegin
                 | "Patterns" >> beam.Create(self.patterns)
                 | "Match" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
                 | "Open" >> fileio.ReadMatches()
                 | "ByFormat" >> beam.Partition(lambda f, n: 1 if _is_parquet(f.metadata.path, self.input_format)
                                                else 0, 2))
        lines = files[0] | "ReadJsonl" >> beam.ParDo(_ReadLines())
        rows = files[1] | "ReadParquet" >> beam.ParDo(_ReadParquetRows())
        return ((lines, rows)
                | "Records" >> beam.Flatten()
                | "Spread" >> beam.Reshuffle()
                | "ParseSplit" >> beam.ParDo(_ParseAndSplit(self.embedder, self.split, Shared(), self.trust_remote_code))
                .with_outputs(OUTCOME, main="passages"))


def _is_parquet(path: str, input_format: str) -> bool:
    if input_format != "auto":
        return input_format == "parquet"
    return path.endswith((".parquet", ".pq"))


# ---------------------------------------------------------------------------- dedupe


def _resolve_id_group(element):
    passage_id, members = element
    members = sorted(members, key=lambda m: m.source_id)
    kept, conflicts, _ = ingest.resolve_duplicates(passage_id, [(m.source_id, m) for m in members])
    if kept is None:
        for passage, letter in zip(members, conflicts):
            yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(unit_id(passage), "dead_lettered", letter))
        return
    yield members[0]
    for dup in members[1:]:
        yield beam.pvalue.TaggedOutput(OUTCOME, filtered(unit_id(dup), dup.id, "read", "duplicate_passage",
                                                         f"same id and text as {members[0].source_id}"))


def _resolve_content_group(element):
    _, members = element
    members = sorted(members, key=lambda m: (m.id, m.source_id))
    yield members[0]
    for dup in members[1:]:
        yield beam.pvalue.TaggedOutput(OUTCOME, filtered(unit_id(dup), dup.id, "read", "duplicate_passage",
                                                         f"same text as passage {members[0].id}"))


class DeduplicatePassages(beam.PTransform):
    """One passage per id (conflicting texts under one id are dead-lettered) and per text."""

    def expand(self, passages):
        by_id = (passages
                 | "KeyById" >> beam.Map(lambda p: (p.id, p))
                 | "GroupById" >> beam.GroupByKey()
                 | "ResolveIds" >> beam.FlatMap(_resolve_id_group).with_outputs(OUTCOME, main="passages"))
        by_text = (by_id.passages
                   | "KeyByText" >> beam.Map(lambda p: (ids.passage_id(p.title, p.text), p))
                   | "GroupByText" >> beam.GroupByKey()
                   | "ResolveTexts" >> beam.FlatMap(_resolve_content_group).with_outputs(OUTCOME, main="passages"))
        outcomes = (by_id[OUTCOME], by_text[OUTCOME]) | "Outcomes" >> beam.Flatten()
        return by_text.passages, outcomes


# ---------------------------------------------------------------------------- LLM stages


class _LLMBatchDoFn(beam.DoFn):
    """Base: one BlockingLLM per worker process (shared across threads), batches pipelined.

    A batch is submitted and process() returns at once, so the next batch's requests queue up
    behind the client's semaphore while this one finishes: the server never idles at a batch
    boundary. Finished batches are emitted in order; finish_bundle drains the rest. After each
    batch its work goes to the journal (a crash loses at most the batches in flight) and the
    failure guard (a dead server stops the job early). Outputs are in the global window."""

    STAGE = ""
    BATCHES_IN_FLIGHT = 4

    def __init__(self, client: ClientConfig, shared: Shared, progress: bool, journal_folder: Optional[str],
                 failure: FailurePolicy):
        self._client_config, self._shared, self._progress = client, shared, progress
        self._journal_folder, self._failure = journal_folder, failure
        self.requests = Metrics.counter(NS, "llm_requests")
        self.failures = Metrics.counter(NS, "llm_failures")
        self.retries = Metrics.counter(NS, "llm_retries")
        self.prompt_tokens = Metrics.counter(NS, "llm_prompt_tokens")
        self.completion_tokens = Metrics.counter(NS, "llm_completion_tokens")
        self.journaled = Metrics.counter(NS, f"journaled_{self.STAGE}")

    def setup(self):
        config = self._client_config
        if config.local_server is not None:
            from pipeline.llm.local_server import ensure_local_server

            ensure_local_server(config.local_server)  # the machine's one server; started by the first caller
        self._llm = self._shared.acquire(lambda: BlockingLLM(config),
                                         tag=f"llm:{config.base_urls}:{config.model}").retain()
        hint = (f"Check the LLM server ({', '.join(config.base_urls)}), then re-run with --resume: finished LLM "
                f"work is kept in {self._journal_folder}." if self._journal_folder else "Check the LLM server.")
        self._guard = FailureGuard(self.STAGE, self._failure, hint)
        self._llm.wait_ready(timeout_s=max(60.0, config.timeout_s))  # before the first batch is sent
        self._seen_stats = self._llm.stats.snapshot()

    def teardown(self):
        self._llm.release()

    def start_bundle(self):
        self._pending: collections.deque = collections.deque()

    def process(self, batch):
        self._pending.append((batch, self._llm.submit(self._request(batch))))
        yield from self._finished(wait=len(self._pending) > self.BATCHES_IN_FLIGHT)

    def finish_bundle(self):
        while self._pending:
            for out in self._finished(wait=True):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
                else:
                    yield GlobalWindows.windowed_value(out)

    def _finished(self, wait: bool):
        """Journal and emit every batch that is done, in whatever order they finish: one slow
        batch must not keep the finished ones out of the journal. With `wait`, block for one."""
        if wait:
            concurrent.futures.wait([f for _, f in self._pending], return_when=concurrent.futures.FIRST_COMPLETED)
        for item in [item for item in self._pending if item[1].done()]:
            self._pending.remove(item)
            yield from self._complete(*item)

    def _complete(self, batch, future):
        results = future.result()
        now = self._llm.stats.snapshot()
        # Deltas of a client shared by threads are approximate per batch; the totals are right.
        for counter, name in ((self.requests, "requests"), (self.failures, "failures"), (self.retries, "retries"),
                              (self.prompt_tokens, "prompt_tokens"), (self.completion_tokens, "completion_tokens")):
            counter.inc(max(0, now[name] - self._seen_stats[name]))
        self._seen_stats = now
        return self._outputs(batch, results)

    def _request(self, batch):
        """The batch's work: a function of the async client that returns one result per item."""
        raise NotImplementedError

    def _outputs(self, batch, results):
        """Journal, judge and emit one finished batch."""
        raise NotImplementedError

    def _settle(self, finished: list[tuple[str, list, Optional[str]]]) -> None:
        """(journal key, result records, failure reason or None) per item: journal first, then judge."""
        if self._journal_folder:
            entries = [journal.entry(self.STAGE, key, records) for key, records, _ in finished
                       if records and journal.worth_keeping(records)]
            write_entries(self._journal_folder, self.STAGE, entries)
            self.journaled.inc(len(entries))
        self._guard.record(reason for _, _, reason in finished)


def _fixed_batches(size: int) -> beam.BatchElements:
    """Full batches from the start: BatchElements' adaptive sizing begins at 1, which starves
    the server of concurrent requests; LLM latency, not Beam overhead, sets the pace here."""
    return beam.BatchElements(min_batch_size=size, max_batch_size=size)


def _failure_reason(records) -> Optional[str]:
    return next((r.reason for r in records if isinstance(r, DeadLetter)), None)


def _emit_generated(passage: Passage, records):
    for record in records:
        if isinstance(record, DeadLetter):
            yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(unit_id(passage), "dead_lettered", record))
        else:
            yield record, passage


class _GenerateFn(_LLMBatchDoFn):
    STAGE = "generate"

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
            finished.append((key, records, _failure_reason(records)))
        self._settle(finished)
        Progress.add("generate (passages)", len(batch), self._progress)
        for (_, passage), (_, records, _) in zip(batch, finished):
            for record in records:
                (self.parse_failures if isinstance(record, DeadLetter) else self.generated).inc()
            yield from _emit_generated(passage, records)


def _replay_generated(done):
    passage, payload = done
    yield from _emit_generated(passage, journal.decode(payload))


def _journaled_llm_stage(items, journal_folder, stage: str, key_fn, batch_size: int, label: str, dofn,
                         main: str, replay, *replay_args) -> dict:
    """The shape of every LLM stage: items whose work is in the journal are replayed from it, the
    rest go to the LLM in fixed batches. Returns {main, "outcome", "reused": the replayed items}."""
    split = items | "Journal" >> LookupJournal(journal_folder, stage, key_fn)
    fresh = (split.todo
             | "Batch" >> _fixed_batches(batch_size)
             | label >> beam.ParDo(dofn).with_outputs(OUTCOME, main=main))
    replayed = split.done | "Replay" >> beam.FlatMap(replay, *replay_args).with_outputs(OUTCOME, main=main)
    return {main: (fresh[main], replayed[main]) | f"Merge{main.title()}" >> beam.Flatten(),
            OUTCOME: (fresh[OUTCOME], replayed[OUTCOME]) | "MergeOutcomes" >> beam.Flatten(),
            "reused": split.done}


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
        return _journaled_llm_stage(passages, self.journal_folder, "generate", key_fn, self.batch_size, "Generate",
                                    dofn, "queries", _replay_generated)


# ---------------------------------------------------------------------------- query filters


def _exact_dedupe(element):
    _, members = element
    members = sorted(members, key=lambda qp: qp[0].query_id)
    yield members[0]
    for query, passage in members[1:]:
        yield beam.pvalue.TaggedOutput(OUTCOME, filtered(unit_id(passage), query.query_id, "filter",
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
            _decontaminate_query, beam.pvalue.AsSingleton(eval_index), self.decontam
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
            yield beam.pvalue.TaggedOutput(OUTCOME, filtered(unit_id(passage), query.query_id, "filter",
                                                             "near_duplicate_query"))
        else:
            yield query, passage


def _decontaminate_query(qp, eval_index, config):
    query, passage = qp
    hit = decontamination.contamination([query.query], eval_index, config, whole_text=True)
    if hit:
        yield beam.pvalue.TaggedOutput(OUTCOME, filtered(unit_id(passage), query.query_id, "filter",
                                                         "decontaminated", f"query {hit}"))
    else:
        yield qp


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


# ---------------------------------------------------------------------------- embed + retrieve


class _EmbedFn(beam.DoFn):
    """A batch of passages -> one (passages, matrix) block; a batch of queries -> (item, vector) each.
    Passage vectors travel as blocks: one pickled matrix per batch instead of one array per passage."""

    def __init__(self, embedder: str, batch_size: int, shared: Shared, kind: str, progress: bool,
                 trust_remote_code: bool = False):
        self._name, self._batch_size, self._shared, self._kind, self._progress = (
            embedder, batch_size, shared, kind, progress)
        self._trust_remote_code = trust_remote_code
        self.embedded = Metrics.counter(NS, f"{kind}_embedded")

    def setup(self):
        name, batch_size, trust = self._name, self._batch_size, self._trust_remote_code
        self._embedder = self._shared.acquire(lambda: Embedder(name, batch_size=batch_size, trust_remote_code=trust),
                                              tag=f"embedder:{name}")

    def process(self, batch):
        if self._kind == "passages":
            texts = [passage_text(p.title, p.text) for p in batch]
        else:
            texts = [q.query for q, _ in batch]
        vectors = np.asarray(self._embedder.encode(texts), dtype=np.float32)
        self.embedded.inc(len(batch))
        Progress.add(f"embed ({self._kind})", len(batch), self._progress)
        if self._kind == "passages":
            yield list(batch), vectors
        else:
            yield from zip(batch, vectors)


EMBED_WINDOW = 16  # encode batches per DoFn call: sentence-transformers sorts a call's texts by length,
# so a wider window pads less (measured in bench/retrieval.py: a window of one batch ran at 0.64x of encode)


class Embed(beam.PTransform):
    """Passages -> (passages, matrix) blocks, or (query, passage) pairs -> ((query, passage), vector)."""

    def __init__(self, embedder: str, batch_size: int, kind: str, shared: Optional[Shared] = None,
                 progress: bool = False, trust_remote_code: bool = False):
        super().__init__()
        self.embedder, self.batch_size, self.kind, self.shared = embedder, batch_size, kind, shared or Shared()
        self.progress, self.trust_remote_code = progress, trust_remote_code

    def expand(self, items):
        window = self.batch_size * EMBED_WINDOW
        return (items
                | "Window" >> beam.BatchElements(min_batch_size=window, max_batch_size=window)
                | "Encode" >> beam.ParDo(_EmbedFn(self.embedder, self.batch_size, self.shared, self.kind,
                                                  self.progress, self.trust_remote_code)))


def _to_shards(block, num_shards: int):
    """(passages, matrix) -> (shard, (ids, titles, texts, sub-matrix)) for each shard it touches."""
    passages, matrix = block
    by_shard: dict[int, list[int]] = {}
    for row, p in enumerate(passages):
        by_shard.setdefault(retrieval.shard_of(p.id, num_shards), []).append(row)
    for shard, rows in by_shard.items():
        yield shard, ([passages[r].id for r in rows], [passages[r].title for r in rows],
                      [passages[r].text for r in rows], matrix[rows])


class _SearchShard(beam.DoFn):
    """One index shard against every query batch routed to it -> (query_id, partial top-N)."""

    def __init__(self, k: int):
        self._k = k

    def process(self, element):
        _, grouped = element
        blocks = list(grouped["index"])
        if not blocks:
            return
        ids = [pid for b in blocks for pid in b[0]]
        titles = [t for b in blocks for t in b[1]]
        texts = [t for b in blocks for t in b[2]]
        matrix = np.concatenate([b[3] for b in blocks]) if len(blocks) > 1 else blocks[0][3]
        row_of = {pid: i for i, pid in enumerate(ids)}
        for qids, vectors in grouped["queries"]:
            for qid, hits in zip(qids, retrieval.search_shard(vectors, matrix, ids, self._k)):
                yield qid, [(h.score, h.passage_id, titles[row_of[h.passage_id]], texts[row_of[h.passage_id]])
                            for h in hits]


def _query_block(batch):
    """Query vectors batched for search: (ids, one matrix)."""
    return [qid for qid, _ in batch], np.stack([v for _, v in batch]).astype(np.float32)


class ShardedExactSearch(beam.PTransform):
    """Scatter-gather exact top-N. Input: (passage blocks of (passages, matrix), (query_id, vector)).
    Output: (query_id, partial top-N of (score, id, title, text)) once per index shard.

    The corpus is cut into shards of at most ~shard_size passages by a hash of the id; every query
    batch is searched against every shard, so a worker holds one shard and one query batch."""

    def __init__(self, k: int, shard_size: int, query_batch_size: int = 256):
        super().__init__()
        self.k, self.shard_size, self.query_batch_size = k, shard_size, query_batch_size

    def expand(self, pcolls):
        passage_blocks, query_vectors = pcolls
        num_shards = (passage_blocks
                      | "BlockSizes" >> beam.Map(lambda b: len(b[0]))
                      | "CountCorpus" >> beam.CombineGlobally(sum)
                      | "NumShards" >> beam.Map(lambda n, size: max(1, math.ceil(n / size)), self.shard_size))
        index = passage_blocks | "ToShards" >> beam.FlatMap(_to_shards, beam.pvalue.AsSingleton(num_shards))
        routed = (query_vectors
                  | "BatchForSearch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.query_batch_size)
                  | "QueryBlock" >> beam.Map(_query_block)
                  | "ToEveryShard" >> beam.FlatMap(lambda block, n: [(s, block) for s in range(n)],
                                                   beam.pvalue.AsSingleton(num_shards)))
        return ({"index": index, "queries": routed}
                | "JoinShards" >> beam.CoGroupByKey()
                | "SearchShards" >> beam.ParDo(_SearchShard(self.k)))


def _merge_candidates(element, k: int):
    _, grouped = element
    (query, passage), = grouped["query"]
    yield query, passage, build_candidates(passage, list(grouped["hits"]), k)


class RetrieveCandidates(beam.PTransform):
    """Embed passages and queries, then ShardedExactSearch, then merge the partial lists per query."""

    def __init__(self, embedder: str, num_neighbors: int = 20, shard_size: int = 50_000, embed_batch_size: int = 64,
                 query_batch_size: int = 256, progress: bool = False, trust_remote_code: bool = False):
        super().__init__()
        if num_neighbors < 1 or shard_size < 1:
            raise ValueError("num_neighbors and index_shard_size must be >= 1")
        self.embedder, self.k, self.shard_size = embedder, num_neighbors, shard_size
        self.embed_batch_size, self.query_batch_size, self.progress = embed_batch_size, query_batch_size, progress
        self.trust_remote_code = trust_remote_code

    def expand(self, pcolls):
        passages, queries = pcolls
        shared = Shared()
        passage_blocks = passages | "EmbedPassages" >> Embed(self.embedder, self.embed_batch_size, "passages", shared,
                                                             self.progress, self.trust_remote_code)
        query_vectors = (queries
                         | "EmbedQueries" >> Embed(self.embedder, self.embed_batch_size, "queries", shared,
                                                   self.progress, self.trust_remote_code)
                         | "QueryVector" >> beam.Map(lambda qv: (qv[0][0].query_id, qv[1])))
        partial = ((passage_blocks, query_vectors)
                   | "Search" >> ShardedExactSearch(self.k, self.shard_size, self.query_batch_size))
        keyed_queries = queries | "KeyQueries" >> beam.Map(lambda qp: (qp[0].query_id, qp))
        return ({"query": keyed_queries, "hits": partial}
                | "GatherPerQuery" >> beam.CoGroupByKey()
                | "MergeTopN" >> beam.FlatMap(_merge_candidates, self.k))


# ---------------------------------------------------------------------------- rerank + mine


def _emit_example(query, passage, records, mining: MiningConfig, provenance: Provenance, keep: bool):
    if len(records) == 1 and isinstance(records[0], DeadLetter):
        yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(unit_id(passage), "dead_lettered", records[0]))
        return
    yield build_example(query, records, mining, provenance, keep), passage


class _RerankFn(_LLMBatchDoFn):
    STAGE = "rerank"

    def __init__(self, client, shared, progress, journal_folder, failure, rerank: RerankConfig, mining: MiningConfig,
                 provenance: Provenance, keep_candidates: bool):
        super().__init__(client, shared, progress, journal_folder, failure)
        self._rerank, self._mining, self._provenance, self._keep = rerank, mining, provenance, keep_candidates
        self.scored = Metrics.counter(NS, "queries_reranked")
        self.rerank_failures = Metrics.counter(NS, "rerank_failures")
        self.relabelled = Metrics.counter(NS, "relabelled")
        self.candidates = Metrics.distribution(NS, "candidates_per_query")

    def _request(self, batch):
        config, items = self._rerank, [item for _, item in batch]
        return lambda client: _score_all(client, items, config)

    def _outputs(self, batch, results):
        items = [item for _, item in batch]
        results = [journal.as_records(r) for r in results]
        self._settle([(key, records, _failure_reason(records)) for (key, _), records in zip(batch, results)])
        Progress.add("rerank (queries)", len(batch), self._progress)
        for (query, passage, cands), records in zip(items, results):
            for out in _emit_example(query, passage, records, self._mining, self._provenance, self._keep):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    self.rerank_failures.inc()
                else:
                    self.candidates.update(len(cands))
                    self.scored.inc()
                    self.relabelled.inc(int(out[0].positive_changed))
                yield out


def _replay_rerank(done, mining, provenance, keep):
    (query, passage, _), payload = done
    yield from _emit_example(query, passage, journal.decode(payload), mining, provenance, keep)


async def _score_all(client, batch, config):
    return await asyncio.gather(*(score_query(client, q, cands, config) for q, _, cands in batch))


async def _rate_all(client, batch, config):
    return await asyncio.gather(*(filtering.rate_example(client, e.task, e.query, e.positive.title,
                                                         e.positive.text, config) for e, _ in batch))


class RerankAndMine(beam.PTransform):
    """(query, seed, candidates) -> {"examples": (TrainingExample, seed Passage), "outcome", "reused"}
    via QL + RC + RRF and mining."""

    def __init__(self, client: ClientConfig, rerank: RerankConfig, mining: MiningConfig, provenance: Provenance,
                 keep_candidates: bool = True, batch_size: int = 16, progress: bool = False,
                 journal_folder: Optional[str] = None, failure: FailurePolicy = FailurePolicy()):
        super().__init__()
        self.client, self.rerank, self.mining, self.provenance = client, rerank, mining, provenance
        self.keep_candidates, self.batch_size, self.progress = keep_candidates, batch_size, progress
        self.journal_folder, self.failure = journal_folder, failure

    def expand(self, candidates):
        prompt_hashes = (load_prompt("query_likelihood", self.rerank.ql_prompt_version).hash,
                         load_prompt("relevance_classification", self.rerank.rc_prompt_version).hash)
        key_fn = functools.partial(_rerank_key, self.client.model, prompt_hashes, self.rerank)
        dofn = _RerankFn(self.client, Shared(), self.progress, self.journal_folder, self.failure, self.rerank,
                         self.mining, self.provenance, self.keep_candidates)
        return _journaled_llm_stage(candidates, self.journal_folder, "rerank", key_fn, self.batch_size, "Score",
                                    dofn, "examples", _replay_rerank, self.mining, self.provenance,
                                    self.keep_candidates)


def _rerank_key(model, prompt_hashes, config, item):
    query, _, cands = item
    return journal.rerank_key(model, prompt_hashes, config, query, cands)


def _apply_rating(example, passage, rating: Union[QualityRating, DeadLetter], config: filtering.RaterConfig):
    if isinstance(rating, DeadLetter):
        if config.keep_unrated:
            yield example, passage  # kept on request, with quality = null
        else:  # an example nobody checked is not a checked example: it is not written
            yield beam.pvalue.TaggedOutput(OUTCOME, Outcome(unit_id(passage), "dead_lettered", rating))
    elif rating.score < config.min_score:
        yield beam.pvalue.TaggedOutput(OUTCOME, filtered(
            unit_id(passage), example.example_id, "filter", "low_quality",
            f"auto-rater score {rating.score} < {config.min_score}: {rating.reason}"))
    else:
        yield example.model_copy(update={"quality": float(rating.score)}), passage


def _rating_failure(example, result) -> DeadLetter:
    return dead_letter(example.seed_passage_id, "rate", LLM_REASONS.get(result.reason or "", "llm_bad_response"),
                       f"auto-rater failed for example {example.example_id}: {result.detail}", result.text)


class _RateFn(_LLMBatchDoFn):
    STAGE = "rate"

    def __init__(self, client, shared, progress, journal_folder, failure, config: filtering.RaterConfig):
        super().__init__(client, shared, progress, journal_folder, failure)
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
        for (example, passage), rating in zip(items, ratings):
            (self.rater_failures if isinstance(rating, DeadLetter) else self.rated).inc()
            for out in _apply_rating(example, passage, rating, config):
                if isinstance(out, beam.pvalue.TaggedOutput) and not isinstance(rating, DeadLetter):
                    self.low_quality.inc()
                yield out


def _replay_rating(done, config):
    (example, passage), payload = done
    (rating,) = journal.decode(payload)
    yield from _apply_rating(example, passage, rating, config)


class RateExamples(beam.PTransform):
    """Gemini Embedding's LLM auto-rater: drop examples rated below a threshold, keeping the reason."""

    def __init__(self, client: ClientConfig, config: filtering.RaterConfig, batch_size: int = 64,
                 progress: bool = False, journal_folder: Optional[str] = None,
                 failure: FailurePolicy = FailurePolicy()):
        super().__init__()
        self.client, self.config, self.batch_size, self.progress = client, config, batch_size, progress
        self.journal_folder, self.failure = journal_folder, failure

    def expand(self, examples):
        key_fn = functools.partial(_rate_key, self.client.model, load_prompt("quality_rater").hash, self.config)
        dofn = _RateFn(self.client, Shared(), self.progress, self.journal_folder, self.failure, self.config)
        return _journaled_llm_stage(examples, self.journal_folder, "rate", key_fn, self.batch_size, "Rate", dofn,
                                    "examples", _replay_rating, self.config)


def _rate_key(model, prompt_hash, config, item):
    return journal.rate_key(model, prompt_hash, config, item[0])


class DecontaminateExamples(beam.PTransform):
    """Drop examples whose positive quotes the evaluation set (pipeline.decontamination's rule)."""

    def __init__(self, config: decontamination.DecontamConfig):
        super().__init__()
        self.config = config

    def expand(self, pcolls):
        examples, eval_index = pcolls
        return examples | "DropContaminated" >> beam.FlatMap(
            _decontaminate_positive, beam.pvalue.AsSingleton(eval_index), self.config
        ).with_outputs(OUTCOME, main="examples")


def _decontaminate_positive(ep, eval_index, config):
    example, passage = ep
    hit = decontamination.contamination([example.positive.title, example.positive.text], eval_index, config)
    if hit:
        yield beam.pvalue.TaggedOutput(OUTCOME, filtered(unit_id(passage), example.example_id, "filter",
                                                         "decontaminated", f"positive {hit}"))
    else:
        yield ep


# ---------------------------------------------------------------------------- write


class _ManifestCombine(beam.CombineFn):
    def create_accumulator(self):
        return accounting.ManifestAccumulator()

    def add_input(self, acc, event):
        kind, value = event
        if kind == "outcome":
            acc.add_outcome(value)
        else:
            acc.add_example(value)
        return acc

    def merge_accumulators(self, accs):
        first, *rest = list(accs)
        for other in rest:
            first.merge(other)
        return first

    def extract_output(self, acc):
        return acc


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


def write_manifest(acc, stage_counts: dict, expected_inputs: int, path: str, meta: dict):
    from apache_beam.io.filesystems import FileSystems

    manifest = accounting.build_manifest(acc, stage_counts=stage_counts, expected_inputs=expected_inputs, **meta)
    data = manifest.model_dump_json(indent=2).encode("utf-8")
    with FileSystems.create(path) as f:
        f.write(data)
    return manifest
