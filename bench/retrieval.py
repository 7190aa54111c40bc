"""The search over index shard files (the job's stage) vs one exact numpy search; embed stage vs ST.

    .venv/bin/python bench/retrieval.py [--sizes 10000,100000] [--query-ratio 0.1] [--embed-texts 512]

Retrieval: unit vectors (dim 384, seeded Gaussian: the search does not care where vectors come
from) for N passages and N x query-ratio queries. The Beam side runs ShardedExactSearch on the
DirectRunner (blocks of 64 passages, the job's --index-shard-size, index shards written as
files and searched one at a time per query batch) to merged top-20 lists; the reference is
pipeline.retrieval.exact_search over one matrix. Both return the same lists (checked on every
query).

Embedding: the job's embed DoFn (BatchElements + Embedder) on the DirectRunner vs
SentenceTransformer.encode on the same texts and batch size, both all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import emit, sample_passages

DIM, K, BLOCK = 384, 20, 64


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def beam_search(docs: np.ndarray, queries: np.ndarray, shard_size: int, expected: dict) -> tuple[float, int, int]:
    """Seconds, queries checked and mismatches against `expected` (counted inside the pipeline).

    The vectors reach the pipeline as in the job, produced by a DoFn (here: read from .npy
    files), not inlined into the pipeline graph, which Beam would pickle and compress."""
    import json
    import tempfile

    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter

    from beam_jobs.retrieve import ShardedExactSearch
    from schemas import Passage

    tmp = tempfile.mkdtemp()
    np.save(f"{tmp}/docs.npy", docs)
    np.save(f"{tmp}/queries.npy", queries)
    with open(f"{tmp}/expected.json", "w") as f:
        json.dump(expected, f)

    def passage_block(start, folder):
        matrix = np.load(f"{folder}/docs.npy", mmap_mode="r")[start:start + BLOCK]
        return ([Passage(id=f"d{i}", text="x", source_id="", chunk=0) for i in range(start, start + len(matrix))],
                np.ascontiguousarray(matrix))

    def query_vectors(start, folder):
        block = np.load(f"{folder}/queries.npy", mmap_mode="r")[start:start + BLOCK]
        return [(f"q{start + i}", np.array(v)) for i, v in enumerate(block)]

    class Check(beam.DoFn):
        def __init__(self, folder):
            self.folder = folder
            self.checked, self.wrong = Metrics.counter("bench", "checked"), Metrics.counter("bench", "wrong")

        def setup(self):
            with open(f"{self.folder}/expected.json") as f:
                self.expected = json.load(f)

        def process(self, kv):
            qid, top = kv
            self.checked.inc()
            self.wrong.inc(int([pid for _, pid, _, _ in top] != self.expected[qid]))

    start = time.perf_counter()
    p = beam.Pipeline(runner="DirectRunner")
    index = (p | "BlockStarts" >> beam.Create(list(range(0, len(docs), BLOCK)))
             | "LoadBlocks" >> beam.Map(passage_block, tmp))
    qs = (p | "QueryStarts" >> beam.Create(list(range(0, len(queries), BLOCK)))
          | "LoadQueries" >> beam.FlatMap(query_vectors, tmp))
    ((index, qs) | ShardedExactSearch(K, shard_size, f"{tmp}/index") | beam.ParDo(Check(tmp)))
    result = p.run()
    result.wait_until_finish()
    elapsed = time.perf_counter() - start
    counts = {name: sum(c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"])
              for name in ("checked", "wrong")}
    return elapsed, counts["checked"], counts["wrong"]


def numpy_search(docs: np.ndarray, queries: np.ndarray) -> tuple[float, dict]:
    from pipeline.retrieval import exact_search

    ids = [f"d{i}" for i in range(len(docs))]
    start = time.perf_counter()
    hits = exact_search(queries, docs, ids, K)
    elapsed = time.perf_counter() - start
    return elapsed, {f"q{i}": [h.passage_id for h in row] for i, row in enumerate(hits)}


def embed_beam(texts_passages) -> float:
    import apache_beam as beam

    from beam_jobs.retrieve import Embed

    start = time.perf_counter()
    with beam.Pipeline(runner="DirectRunner") as p:
        p | beam.Create(texts_passages, reshuffle=False) | Embed("all-MiniLM-L6-v2", BLOCK, "passages")
    return time.perf_counter() - start


def embed_st(texts) -> float:
    from sentence_transformers import SentenceTransformer

    from pipeline.embedding import resolve_model_path

    start = time.perf_counter()  # cold, like a worker: the model load counts on both sides
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    model.encode(texts, batch_size=BLOCK, normalize_embeddings=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--query-ratio", type=float, default=0.1)
    parser.add_argument("--shard-size", type=int, default=50_000, help="the job's --index-shard-size default")
    parser.add_argument("--embed-texts", type=int, default=960)
    args = parser.parse_args()

    from pipeline.embedding import passage_text

    rows, ratios = [], {}
    for n in (int(s) for s in args.sizes.split(",") if s):
        docs, queries = unit_vectors(n, 0), unit_vectors(max(1, int(n * args.query_ratio)), 1)
        np_s, np_hits = numpy_search(docs, queries)
        beam_s, checked, wrong = beam_search(docs, queries, args.shard_size, np_hits)
        assert checked == len(queries) and wrong == 0, f"sharded search differs on {wrong} of {checked} queries"
        ratio = beam_s / np_s
        ratios[f"retrieval_{n}"] = ratio
        rows.append({"what": f"retrieval N={n} Q={len(queries)}", "job stage s": beam_s, "reference s": np_s,
                     "job/reference time": ratio})

    base = sample_passages(args.embed_texts)  # the 320 sample passages, repeated with new ids if more are asked
    passages = [p.model_copy(update={"id": f"{p.id}-{i}"}) for i in range(-(-args.embed_texts // len(base)))
                for p in base][:args.embed_texts]
    texts = [passage_text(p.title, p.text) for p in passages]
    st_s = embed_st(texts)
    beam_s = embed_beam(passages)
    ratios["embedding_throughput"] = st_s / beam_s
    rows.append({"what": f"embed {len(texts)} passages (texts/s)", "job stage s": beam_s, "reference s": st_s,
                 "job/reference time": beam_s / st_s, "job texts/s": len(texts) / beam_s,
                 "ST texts/s": len(texts) / st_s})
    emit("retrieval", rows, ["what", "job stage s", "reference s", "job/reference time", "job texts/s", "ST texts/s"],
         {"ratios": ratios, "targets": {"retrieval": "job/reference time <= 2",
                                         "embedding_throughput": "job/ST throughput >= 0.8"}})


if __name__ == "__main__":
    main()
