"""Embed passages and queries, then a sharded exact top-N search."""

from __future__ import annotations

import functools
import math
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared

from beam_jobs.common import NS
from beam_jobs.journal import EMBED_STAGE, LookupJournal, write_vectors
from pipeline import retrieval
from pipeline.journal import embedding_key
from pipeline.embedding import Embedder, passage_text
from pipeline.progress import Progress
from pipeline.rerank import build_candidates


class _EmbedFn(beam.DoFn):
    """A batch of passages -> one (passages, matrix) block; a batch of queries -> (item, vector) each.
    Passage vectors travel as blocks: one pickled matrix per batch instead of one array per passage.
    With a journal folder, each passage block's vectors are journaled before they go on."""

    def __init__(self, embedder: str, batch_size: int, shared: Shared, kind: str, progress: bool,
                 trust_remote_code: bool = False, journal_folder: Optional[str] = None):
        self._name, self._batch_size, self._shared, self._kind, self._progress = (
            embedder, batch_size, shared, kind, progress)
        self._trust_remote_code, self._journal_folder = trust_remote_code, journal_folder
        self.embedded = Metrics.counter(NS, f"{kind}_embedded")

    def setup(self):
        name, batch_size, trust = self._name, self._batch_size, self._trust_remote_code
        self._embedder = self._shared.acquire(lambda: Embedder(name, batch_size=batch_size, trust_remote_code=trust),
                                              tag=f"embedder:{name}")

    def process(self, batch, total: Optional[int] = None):
        Progress.begin(f"embed ({self._kind})", self._progress)
        if self._kind == "passages":
            texts = [passage_text(p.title, p.text) for p in batch]
        else:
            texts = [q.query for q, _ in batch]
        vectors = np.asarray(self._embedder.encode(texts), dtype=np.float32)
        if self._kind == "passages" and self._journal_folder:
            write_vectors(self._journal_folder, [embedding_key(self._name, t) for t in texts], vectors)
        self.embedded.inc(len(batch))
        Progress.add(f"embed ({self._kind})", len(batch), self._progress, total)
        if self._kind == "passages":
            yield list(batch), vectors
        else:
            yield from zip(batch, vectors)


EMBED_WINDOW = 16  # encode batches per DoFn call: sentence-transformers sorts a call's texts by length,
# so a wider window pads less (measured in bench/retrieval.py: a window of one batch ran at 0.64x of encode)


class Embed(beam.PTransform):
    """Passages -> (passages, matrix) blocks, or (query, passage) pairs -> ((query, passage), vector)."""

    def __init__(self, embedder: str, batch_size: int, kind: str, shared: Optional[Shared] = None,
                 progress: bool = False, trust_remote_code: bool = False, journal_folder: Optional[str] = None):
        super().__init__()
        self.embedder, self.batch_size, self.kind, self.shared = embedder, batch_size, kind, shared or Shared()
        self.progress, self.trust_remote_code, self.journal_folder = progress, trust_remote_code, journal_folder

    def expand(self, items):
        window = self.batch_size * EMBED_WINDOW
        dofn = _EmbedFn(self.embedder, self.batch_size, self.shared, self.kind, self.progress,
                        self.trust_remote_code, self.journal_folder)
        batches = items | "Window" >> beam.BatchElements(min_batch_size=window, max_batch_size=window)
        if not self.progress:
            return batches | "Encode" >> beam.ParDo(dofn)
        total = items | "CountItems" >> beam.combiners.Count.Globally()  # for the progress line's ETA
        return batches | "Encode" >> beam.ParDo(dofn, total=beam.pvalue.AsSingleton(total))


def _passage_key(passage, embedder: str) -> str:
    return embedding_key(embedder, passage_text(passage.title, passage.text))


def _reused_block(batch):
    """(passage, journaled float32 bytes) pairs -> one (passages, matrix) block, as Embed yields."""
    return [p for p, _ in batch], np.stack([np.frombuffer(v, dtype="<f4") for _, v in batch]).astype(np.float32)


class EmbedPassagesOnce(beam.PTransform):
    """Passages -> {"blocks": (passages, matrix) blocks, "embedded": passages embedded now,
    "reused": (passage, vector) pairs read back from the journal}. Vectors a killed run already
    journaled are reused (keyed by embedder and text), so --resume embeds no passage twice."""

    def __init__(self, embed: Embed):
        super().__init__()
        self.embed = embed  # its journal_folder is where vectors are looked up and written

    def expand(self, passages):
        key = functools.partial(_passage_key, embedder=self.embed.embedder)
        lookup = passages | "LookupVectors" >> LookupJournal(self.embed.journal_folder, EMBED_STAGE, key, "vector")
        todo = lookup.todo | "ToEmbed" >> beam.Map(lambda kv: kv[1])
        window = self.embed.batch_size * EMBED_WINDOW
        reused_blocks = (lookup.done
                         | "ReusedWindow" >> beam.BatchElements(min_batch_size=window, max_batch_size=window)
                         | "ReusedBlock" >> beam.Map(_reused_block))
        blocks = ((todo | "Embed" >> self.embed, reused_blocks) | "AllBlocks" >> beam.Flatten())
        return {"blocks": blocks, "embedded": todo, "reused": lookup.done}


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
                 query_batch_size: int = 256, progress: bool = False, trust_remote_code: bool = False,
                 journal_folder: Optional[str] = None):
        super().__init__()
        if num_neighbors < 1 or shard_size < 1:
            raise ValueError("num_neighbors and index_shard_size must be >= 1")
        self.embedder, self.k, self.shard_size = embedder, num_neighbors, shard_size
        self.embed_batch_size, self.query_batch_size, self.progress = embed_batch_size, query_batch_size, progress
        self.trust_remote_code, self.journal_folder = trust_remote_code, journal_folder

    def expand(self, pcolls):
        """-> {"candidates": (query, passage, candidates), "embedded": passages embedded in this run,
        "reused": passages whose journaled vectors were reused}."""
        passages, queries = pcolls
        shared = Shared()
        embed = Embed(self.embedder, self.embed_batch_size, "passages", shared, self.progress,
                      self.trust_remote_code, self.journal_folder)
        vectors = passages | "EmbedPassages" >> EmbedPassagesOnce(embed)
        query_vectors = (queries
                         | "EmbedQueries" >> Embed(self.embedder, self.embed_batch_size, "queries", shared,
                                                   self.progress, self.trust_remote_code)
                         | "QueryVector" >> beam.Map(lambda qv: (qv[0][0].query_id, qv[1])))
        partial = ((vectors["blocks"], query_vectors)
                   | "Search" >> ShardedExactSearch(self.k, self.shard_size, self.query_batch_size))
        keyed_queries = queries | "KeyQueries" >> beam.Map(lambda qp: (qp[0].query_id, qp))
        candidates = ({"query": keyed_queries, "hits": partial}
                      | "GatherPerQuery" >> beam.CoGroupByKey()
                      | "MergeTopN" >> beam.FlatMap(_merge_candidates, self.k))
        return {"candidates": candidates, "embedded": vectors["embedded"], "reused": vectors["reused"]}
