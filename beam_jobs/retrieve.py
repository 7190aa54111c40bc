"""Embed passages and queries, then an exact top-N search over index shard files."""

from __future__ import annotations

import functools
import math
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from beam_jobs.common import NS, TOKENS, SharedBox
from beam_jobs.index_files import IndexShard, read_shard, write_shard
from beam_jobs.journal import EMBED_STAGE, LookupJournal, write_vectors
from pipeline import retrieval
from pipeline.accounting import embedder_refused, query_unit, unit_id
from pipeline.journal import embedding_key
from pipeline.embedding import EMBED_BATCH_TOKENS, passage_text
from pipeline.given_queries import GIVEN_SOURCE
from pipeline.llm.embeddings import RemoteEmbedder, ServedEmbedder, load_embedder
from pipeline.progress import Progress
from pipeline.rerank import build_candidates


REFUSED = "refused"  # the tag of Embed's texts the endpoint refused: (item, why)


class _EmbedFn(beam.DoFn):
    """A batch of passages -> one (passages, matrix) block; a batch of queries -> (item, vector) each.
    Passage vectors travel as blocks: one pickled matrix per batch instead of one array per passage.
    With a journal folder, each passage block's vectors are journaled before they go on. A served
    embedder's refused texts go to REFUSED and its token usage to TOKENS."""

    def __init__(self, embedder: str, batch_size: int, shared: Shared, kind: str, progress: bool,
                 trust_remote_code: bool = False, journal_folder: Optional[str] = None,
                 batch_tokens: int = EMBED_BATCH_TOKENS, journal_name: str = ""):
        self._name, self._batch_size, self._shared, self._kind, self._progress = (
            embedder, batch_size, shared, kind, progress)
        self._journal_name = journal_name or str(embedder)
        self._batch_tokens = batch_tokens
        self._trust_remote_code, self._journal_folder = trust_remote_code, journal_folder
        self.embedded = Metrics.counter(NS, f"{kind}_embedded")
        self.refused = Metrics.counter(NS, f"{kind}_refused_by_embedder")

    def setup(self):
        name, batch_size, trust, tokens = self._name, self._batch_size, self._trust_remote_code, self._batch_tokens
        if isinstance(name, ServedEmbedder):  # its client is shared per process already; teardown releases it
            self._embedder = RemoteEmbedder(name)
            return
        self._embedder = self._shared.acquire(lambda: SharedBox(load_embedder(name, batch_size, trust, tokens)),
                                              tag=f"embedder:{name!r}").value

    def teardown(self):
        if isinstance(self._embedder, RemoteEmbedder):
            self._embedder.close()

    def process(self, batch, total: Optional[int] = None):
        Progress.begin(f"embed ({self._kind})", self._progress)
        if self._kind == "passages":
            texts = [passage_text(p.title, p.text) for p in batch]
        else:
            texts = [q.query for q, _ in batch]
        refused: dict[int, str] = {}
        if isinstance(self._embedder, RemoteEmbedder):
            vectors, refused, meter = self._embedder.encode_some(texts, f"embed_{self._kind}")
            yield beam.pvalue.TaggedOutput(TOKENS, meter)
        else:
            vectors = np.asarray(self._embedder.encode(texts), dtype=np.float32)
        if refused:
            self.refused.inc(len(refused))
            for i, why in sorted(refused.items()):
                yield beam.pvalue.TaggedOutput(REFUSED, (batch[i], why))
            batch = [item for i, item in enumerate(batch) if i not in refused]
            texts = [text for i, text in enumerate(texts) if i not in refused]
        if self._kind == "passages" and self._journal_folder and texts:
            write_vectors(self._journal_folder, [embedding_key(self._journal_name, t) for t in texts], vectors)
        self.embedded.inc(len(batch))
        Progress.add(f"embed ({self._kind})", len(batch) + len(refused), self._progress, total)
        if self._kind == "passages":
            if batch:
                yield list(batch), vectors
        else:
            yield from zip(batch, vectors)


EMBED_WINDOW = 16  # encode batches per DoFn call: sentence-transformers sorts a call's texts by length,
# so a wider window pads less (measured in bench/retrieval.py: a window of one batch ran at 0.64x of encode)


class Embed(beam.PTransform):
    """Passages -> {"vectors": (passages, matrix) blocks, REFUSED: (passage, why), TOKENS: usage},
    or (query, passage) pairs -> {"vectors": ((query, passage), vector), REFUSED: ((query, passage),
    why), TOKENS}. Only a served embedder refuses texts and reports tokens."""

    def __init__(self, embedder: str, batch_size: int, kind: str, shared: Optional[Shared] = None,
                 progress: bool = False, trust_remote_code: bool = False, journal_folder: Optional[str] = None,
                 total: Optional[beam.PCollection] = None, batch_tokens: int = EMBED_BATCH_TOKENS,
                 journal_name: str = ""):
        super().__init__()
        self.batch_tokens = batch_tokens  # a local embedder's padded tokens per batch
        # the embedder as journal keys name it (beam_jobs.identities); "": its name
        self.journal_name = journal_name or str(embedder)
        self.embedder, self.batch_size, self.kind, self.shared = embedder, batch_size, kind, shared or Shared()
        self.progress, self.trust_remote_code, self.journal_folder = progress, trust_remote_code, journal_folder
        self.total = total  # the items' count when the caller has it already (progress ETAs)

    def expand(self, items):
        window = self.batch_size * EMBED_WINDOW
        dofn = _EmbedFn(self.embedder, self.batch_size, self.shared, self.kind, self.progress,
                        self.trust_remote_code, self.journal_folder, self.batch_tokens, self.journal_name)
        batches = items | "Window" >> beam.BatchElements(min_batch_size=window, max_batch_size=window)
        extra = {"total": _count_unless_given(self.total, items, "CountItems")} if self.progress else {}
        out = batches | "Encode" >> beam.ParDo(dofn, **extra).with_outputs(REFUSED, TOKENS, main="vectors")
        return {"vectors": out.vectors, REFUSED: out[REFUSED], TOKENS: out[TOKENS]}


def _count_unless_given(given: Optional[beam.PCollection], items: beam.PCollection, label: str):
    """The items' count as a side input for a progress line's ETA; the caller's count when it has one."""
    total = given if given is not None else items | label >> beam.combiners.Count.Globally()
    return beam.pvalue.AsSingleton(total)


def _passage_key(passage, embedder) -> str:
    return embedding_key(str(embedder), passage_text(passage.title, passage.text))


def _reused_block(batch):
    """(passage, journaled float32 bytes) pairs -> one (passages, matrix) block, as Embed yields."""
    return [p for p, _ in batch], np.stack([np.frombuffer(v, dtype="<f4") for _, v in batch]).astype(np.float32)


class EmbedPassagesOnce(beam.PTransform):
    """Passages -> {"blocks": (passages, matrix) blocks, "embedded": passages embedded now,
    "reused": (passage, vector) pairs read back from the journal, REFUSED: (passage, why), TOKENS}.
    Vectors a killed run already journaled are reused (keyed by embedder and text), so --resume
    embeds no passage twice. A refused passage is in no block (and journaled nowhere: a resume
    asks again)."""

    def __init__(self, embed: Embed):
        super().__init__()
        self.embed = embed  # its journal_folder is where vectors are looked up and written

    def expand(self, passages):
        key = functools.partial(_passage_key, embedder=self.embed.journal_name)
        lookup = passages | "LookupVectors" >> LookupJournal(self.embed.journal_folder, EMBED_STAGE, key, "vector")
        todo = lookup.todo | "ToEmbed" >> beam.Map(lambda kv: kv[1])
        window = self.embed.batch_size * EMBED_WINDOW
        reused_blocks = (lookup.done
                         | "ReusedWindow" >> beam.BatchElements(min_batch_size=window, max_batch_size=window)
                         | "ReusedBlock" >> beam.Map(_reused_block))
        embedded = todo | "Embed" >> self.embed
        blocks = ((embedded["vectors"], reused_blocks) | "AllBlocks" >> beam.Flatten())
        return {"blocks": blocks, "embedded": embedded["vectors"] | "EmbeddedNow" >> beam.FlatMap(lambda b: b[0]),
                "reused": lookup.done, REFUSED: embedded[REFUSED], TOKENS: embedded[TOKENS]}


def _to_shards(block, num_shards: int):
    """(passages, matrix) -> (shard, (ids, titles, texts, sub-matrix)) for each shard it touches."""
    passages, matrix = block
    by_shard: dict[int, list[int]] = {}
    for row, p in enumerate(passages):
        by_shard.setdefault(retrieval.shard_of(p.id, num_shards), []).append(row)
    for shard, rows in by_shard.items():
        yield shard, ([passages[r].id for r in rows], [passages[r].title for r in rows],
                      [passages[r].text for r in rows], matrix[rows])


class _SearchIndex(beam.DoFn):
    """A batch of (key, vector) -> (key, top-k of (score, id, title, text)) over every index shard file.

    Shards are read one at a time and each query's top-k is merged as they go, so the worker
    holds one shard and the batch. The last shard read stays in memory and the next batch starts
    with it (the merge does not depend on shard order), so a batch reads one shard fewer; with
    one shard, the usual case below --index_shard_size passages, it is read once per worker."""

    def __init__(self, k: int, progress: bool, seed_of=None):
        # seed_of(key) -> a passage id whose score the query also needs (its seed: a positive outside
        # the top-k is ranked by its own cosine with --scores retrieval); the output is then
        # (key, top-k, that score or None)
        self._k, self._progress, self._seed_of = k, progress, seed_of
        self.searched = Metrics.counter(NS, "queries_searched")

    def setup(self):
        self._cached: Optional[tuple[str, IndexShard]] = None

    def _shard(self, path: str) -> IndexShard:
        if self._cached is None or self._cached[0] != path:
            self._cached = None  # let the old shard go before the next is read
            self._cached = (path, read_shard(path))
        return self._cached[1]

    def process(self, batch, shard_paths, total: Optional[int] = None):
        Progress.begin("search", self._progress)
        keys = [key for key, _ in batch]
        vectors = np.stack([v for _, v in batch]).astype(np.float32)
        best: list[list[retrieval.Hit]] = [[] for _ in keys]
        texts: list[dict[str, tuple[str, str]]] = [{} for _ in keys]
        seeds = [self._seed_of(key) for key in keys] if self._seed_of else []
        seed_scores: list[Optional[float]] = [None] * len(seeds)
        in_memory = self._cached[0] if self._cached else None
        for path in sorted(shard_paths, key=lambda p: p != in_memory):  # the shard in memory first
            shard = self._shard(path)
            for i, seed in enumerate(seeds):
                if seed is not None and seed in shard.row_of:  # scored as the search scores a hit
                    row = shard.row_of[seed]
                    seed_scores[i] = float(retrieval.exact_scores(vectors[i], shard.matrix[row:row + 1])[0])
            for i, hits in enumerate(retrieval.search_shard(vectors, shard.matrix, shard.ids, self._k)):
                best[i] = retrieval.merge_topk([best[i], hits], self._k)
                kept = {h.passage_id for h in best[i]}
                texts[i] = {pid: tt for pid, tt in texts[i].items() if pid in kept}
                texts[i].update((h.passage_id, shard.title_text(h.passage_id)) for h in hits if h.passage_id in kept)
        self.searched.inc(len(keys))
        Progress.add("search", len(keys), self._progress, total)
        for i, (key, top, found) in enumerate(zip(keys, best, texts)):
            hits = [(h.score, h.passage_id, *found[h.passage_id]) for h in top]
            yield (key, hits, seed_scores[i]) if self._seed_of else (key, hits)


class ShardedExactSearch(beam.PTransform):
    """Exact top-N over an index kept as shard files. Input: (passage blocks of (passages, matrix),
    (key, query vector)). Output: (key, top-N of (score, id, title, text)), one per query.

    The corpus is cut into shards of at most ~shard_size passages by a hash of the id and written
    to `index_folder` (beam_jobs.index_files); every query batch is then searched against every
    shard file in one step. A query is never copied per shard, and no per-query gather is held:
    the search's memory is linear in the corpus however many shards it has."""

    def __init__(self, k: int, shard_size: int, index_folder: str, query_batch_size: int = 4096,
                 progress: bool = False, total: Optional[beam.PCollection] = None):
        super().__init__()
        self.k, self.shard_size, self.index_folder = k, shard_size, index_folder
        self.query_batch_size, self.progress = query_batch_size, progress
        self.total = total  # the queries' count when the caller has it already (progress ETAs)

    def expand(self, pcolls):
        passage_blocks, query_vectors = pcolls
        shard_paths = write_index_shards(passage_blocks, self.shard_size, self.index_folder)
        return search_index_files(query_vectors, shard_paths, self.k, self.query_batch_size, self.progress,
                                  self.total)


def write_index_shards(passage_blocks, shard_size: int, index_folder: str):
    """(passages, matrix) blocks -> one element: the sorted paths of the shard files written.
    Applied in the caller's scope, so the step names stay the caller's."""
    num_shards = (passage_blocks
                  | "BlockSizes" >> beam.Map(lambda b: len(b[0]))
                  | "CountCorpus" >> beam.CombineGlobally(sum)
                  | "NumShards" >> beam.Map(lambda n, size: max(1, math.ceil(n / size)), shard_size))
    return (passage_blocks
            | "ToShards" >> beam.FlatMap(_to_shards, beam.pvalue.AsSingleton(num_shards))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.Map(write_shard, index_folder, beam.pvalue.AsSingleton(num_shards))
            | "ShardPaths" >> beam.combiners.ToList()
            | "SortPaths" >> beam.Map(sorted))


def search_index_files(query_vectors, shard_paths, k: int, query_batch_size: int = 4096, progress: bool = False,
                       total: Optional[beam.PCollection] = None, seed_of=None):
    """(key, vector) -> (key, top-k of (score, id, title, text)[, the seed's score with seed_of])
    against the shard files whose paths are the one element of `shard_paths`. Applied in the
    caller's scope."""
    batches = query_vectors | "BatchForSearch" >> beam.BatchElements(min_batch_size=query_batch_size,
                                                                       max_batch_size=query_batch_size)
    search = _SearchIndex(k, progress, seed_of)
    if not progress:
        return batches | "SearchIndex" >> beam.ParDo(search, beam.pvalue.AsSingleton(shard_paths))
    total = _count_unless_given(total, query_vectors, "CountQueries")
    return batches | "SearchIndex" >> beam.ParDo(search, beam.pvalue.AsSingleton(shard_paths), total=total)


def _candidates(item_top, k: int, refused_seeds: dict):
    """-> (query, seed, candidates); a query whose seed the embedder refused -> REFUSED, (query,
    seed, why): its positive is in no index shard, so it cannot be ranked against its neighbours."""
    (query, passage), top, seed_score = item_top
    if passage is not None and passage.id in refused_seeds:
        yield beam.pvalue.TaggedOutput(REFUSED, (query, passage, f"its seed passage {passage.id} was refused "
                                                                 f"by the embedder: {refused_seeds[passage.id]}"))
        return
    yield query, passage, build_candidates(passage, [top], k, seed_score)


def _seed_id(key) -> Optional[str]:
    return key[1].id if key[1] is not None else None


class SearchQueries(beam.PTransform):
    """((query, passage) pairs, the index's shard paths as one element[, (passage, why) the
    embedder refused]) -> {"candidates": (query, passage, candidates), REFUSED: (query, passage,
    why), TOKENS}: embed the queries, search the shard files, and add each query's seed to its
    candidates (Gecko's argmax runs over the neighbours with the seed)."""

    def __init__(self, embedder: str, num_neighbors: int = 20, embed_batch_size: int = 64,
                 query_batch_size: int = 4096, progress: bool = False, trust_remote_code: bool = False,
                 shared: Optional[Shared] = None, embed_batch_tokens: int = EMBED_BATCH_TOKENS):
        super().__init__()
        self.embed_batch_tokens = embed_batch_tokens
        self.embedder, self.k, self.embed_batch_size = embedder, num_neighbors, embed_batch_size
        self.query_batch_size, self.progress, self.trust_remote_code = query_batch_size, progress, trust_remote_code
        self.shared = shared or Shared()  # the passages' embedder, when this job loaded it already

    def expand(self, pcolls):
        queries, shard_paths, *refused_passages = pcolls
        # One count of the queries serves both progress lines: embedding them and searching for them.
        total = queries | "CountQueries" >> beam.combiners.Count.Globally() if self.progress else None
        # ((query, passage), vector) pairs: the query's record and seed travel with it through the search
        embedded = (queries
                    | "EmbedQueries" >> Embed(self.embedder, self.embed_batch_size, "queries", self.shared,
                                              self.progress, self.trust_remote_code, total=total,
                                              batch_tokens=self.embed_batch_tokens))
        top = search_index_files(embedded["vectors"], shard_paths, self.k, self.query_batch_size, self.progress,
                                 total, seed_of=_seed_id)
        refused_seeds = (refused_passages[0] if refused_passages
                         else queries.pipeline | "NoRefusedSeeds" >> beam.Create([]))
        seeds = beam.pvalue.AsDict(refused_seeds | "RefusedSeedIds" >> beam.Map(lambda pw: (pw[0].id, pw[1])))
        found = top | "Candidates" >> beam.FlatMap(_candidates, self.k, seeds).with_outputs(REFUSED, main="candidates")
        refused_queries = embedded[REFUSED] | "RefusedQueries" >> beam.Map(
            lambda item_why: (*item_why[0], f"the query was refused by the embedder: {item_why[1]}"))
        refused = (found[REFUSED], refused_queries) | "AllRefused" >> beam.Flatten()
        return {"candidates": found.candidates, REFUSED: refused, TOKENS: embedded[TOKENS]}


class RetrieveCandidates(beam.PTransform):
    """Embed passages into index shard files, then SearchQueries over them."""

    def __init__(self, embedder: str, index_folder: str, num_neighbors: int = 20, shard_size: int = 50_000,
                 embed_batch_size: int = 64, query_batch_size: int = 4096, progress: bool = False,
                 trust_remote_code: bool = False, journal_folder: Optional[str] = None,
                 embed_batch_tokens: int = EMBED_BATCH_TOKENS, journal_name: str = ""):
        super().__init__()
        self.embed_batch_tokens, self.journal_name = embed_batch_tokens, journal_name
        if num_neighbors < 1 or shard_size < 1:
            raise ValueError("num_neighbors and index_shard_size must be >= 1")
        self.embedder, self.index_folder, self.k, self.shard_size = embedder, index_folder, num_neighbors, shard_size
        self.embed_batch_size, self.query_batch_size, self.progress = embed_batch_size, query_batch_size, progress
        self.trust_remote_code, self.journal_folder = trust_remote_code, journal_folder

    def expand(self, pcolls):
        """-> {"candidates": (query, passage, candidates), "embedded": passages embedded in this run,
        "reused": passages whose journaled vectors were reused, "refused_passages": (passage, why),
        "refused_queries": (query, seed, why) for a refused query or seed, TOKENS: the embedder's}."""
        passages, queries = pcolls
        shared = Shared()
        embed = Embed(self.embedder, self.embed_batch_size, "passages", shared, self.progress,
                      self.trust_remote_code, self.journal_folder, batch_tokens=self.embed_batch_tokens,
                      journal_name=self.journal_name)
        vectors = passages | "EmbedPassages" >> EmbedPassagesOnce(embed)
        shard_paths = write_index_shards(vectors["blocks"], self.shard_size, self.index_folder)
        found = (queries, shard_paths, vectors[REFUSED]) | "Search" >> SearchQueries(
            self.embedder, self.k, self.embed_batch_size, self.query_batch_size, self.progress,
            self.trust_remote_code, shared, self.embed_batch_tokens)
        tokens = (vectors[TOKENS], found[TOKENS]) | "EmbedTokens" >> beam.Flatten()
        return {"candidates": found["candidates"], "embedded": vectors["embedded"], "reused": vectors["reused"],
                "refused_passages": vectors[REFUSED], "refused_queries": found[REFUSED], TOKENS: tokens}


def refusal_outcomes(refused_passages, refused_queries, passages_are_units: bool):
    """The embedder's refusals as dead-letter outcomes: every refused query (or query whose seed
    was refused) under its own unit, and each refused passage under its own when passages are
    units (seed passages, or corpus records beside given queries; a given text that joined the
    corpus is not one). Applied in the caller's scope."""
    queries = refused_queries | "RefusedQueryOutcomes" >> beam.Map(
        lambda qsw: embedder_refused(query_unit(qsw[0], qsw[1]), qsw[0].query_id, qsw[2], qsw[0].query))
    units = refused_passages | "RefusedPassageUnits" >> beam.Filter(
        lambda pw: passages_are_units or not pw[0].source_id.startswith(GIVEN_SOURCE))
    passages = units | "RefusedPassageOutcomes" >> beam.Map(
        lambda pw: embedder_refused(unit_id(pw[0]), pw[0].id, f"the embedder refused the passage: {pw[1]}",
                                    passage_text(pw[0].title, pw[0].text)))
    return (queries, passages) | "RefusalOutcomes" >> beam.Flatten(), units
