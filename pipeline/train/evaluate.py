"""nDCG@10 and Recall@10/100 on a BEIR-format folder, at every Matryoshka dimension.

Exact search, corpus encoded in chunks with a running top-k per query, so memory holds one
chunk of the corpus and the queries' top-k lists, never the whole corpus matrix.
"""

from __future__ import annotations

import csv
import functools
import heapq
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline import retrieval
from pipeline.text_format import ResolvedFormat, resolve

CHUNK = 4096
DESCRIPTIONS = ("format", "max_seq_length")  # the keys of evaluate()'s result that are not a size's metrics


def write_beir(folder: str | Path, corpus: dict, queries: dict, qrels: dict, split: str = "test") -> Path:
    """The reverse of load_beir: corpus {id: (title, text)}, queries {id: text} and qrels {qid: {did:
    score}} written as a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), in the
    dicts' order."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for d, (title, text) in corpus.items():
            f.write(json.dumps({"_id": d, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for q, text in queries.items():
            f.write(json.dumps({"_id": q, "text": text}) + "\n")
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, docs in qrels.items():
            for d, score in docs.items():
                f.write(f"{q}\t{d}\t{score}\n")
    return folder


def load_beir(folder: str | Path, split: str = "test"):
    """(corpus {id: (title, text)}, queries {id: text}, qrels {qid: {did: score}}) of one split."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        raise ValueError(f"{qrels_path} not found: a BEIR folder has corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader, None)
        for row in reader:
            if len(row) >= 3:
                qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    corpus = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                corpus[str(r["_id"])] = (r.get("title") or "", r["text"])
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if str(r["_id"]) in qrels:
                    queries[str(r["_id"])] = r["text"]
    return corpus, queries, qrels


def ndcg_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k as trec_eval, BEIR and MTEB compute it: the gain is the relevance grade itself
    (not 2^rel - 1). For one query in a loop; `_metrics` scores whole runs with pytrec_eval."""
    dcg = sum(max(relevant.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    positives = {d for d, r in relevant.items() if r > 0}
    return len(positives & set(ranked[:k])) / len(positives) if positives else 0.0


def trec_metrics(qids: Sequence[str], ranked: Sequence[Sequence[str]], qrels: dict) -> dict[str, list[float]]:
    """Per-query nDCG@10, Recall@10 and Recall@100 from pytrec_eval (trec_eval's code, as BEIR
    uses it). The run gives each list descending scores, so trec_eval keeps our order; a query
    that retrieved nothing scores 0, as it does in BEIR."""
    import pytrec_eval

    measures = {"ndcg_cut.10", "recall.10,100"}
    run = {q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in zip(qids, ranked) if r}
    judged = {q: {d: int(g) for d, g in qrels[q].items()} for q in qids}
    scores = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(run) if run else {}
    names = {"ndcg@10": "ndcg_cut_10", "recall@10": "recall_10", "recall@100": "recall_100"}
    return {name: [scores.get(q, {}).get(key, 0.0) for q in qids] for name, key in names.items()}


def search(encode_queries, encode_docs, query_texts: list[str], doc_ids: list[str], doc_texts: list[str],
           k: int = 100, dims: Sequence[Optional[int]] = (None,)) -> dict[Optional[int], list[list[str]]]:
    """Exact top-k by inner product at each size in `dims` (None: full), encoding every text once:
    a Matryoshka size is the first `dim` components, renormalised. The corpus is encoded and
    scanned one chunk at a time, so memory holds one chunk and the running top-k lists."""
    q_full = encode_queries(query_texts)  # (Q, d)
    queries = {dim: _truncate(q_full, dim) for dim in dims}
    best: dict = {dim: [[] for _ in query_texts] for dim in dims}
    for start in range(0, len(doc_texts), CHUNK):
        d_full = encode_docs(doc_texts[start:start + CHUNK])  # (c, d)
        chunk_ids = doc_ids[start:start + CHUNK]
        for dim in dims:
            # The job's own search and merge: the same scores and the same tie-break (score, then id).
            hits = retrieval.search_shard(queries[dim], _truncate(d_full, dim), chunk_ids, k)
            best[dim] = [retrieval.merge_topk([kept, new], k) for kept, new in zip(best[dim], hits)]
    return {dim: [[h.passage_id for h in hits] for hits in best[dim]] for dim in dims}


def _truncate(vectors: np.ndarray, dim: Optional[int]) -> np.ndarray:
    if dim is None or dim >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dim]  # (n, dim)
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def evaluate(model, folder: str | Path, split: str = "test", task: Optional[str] = None,
             dims: Optional[Sequence[Optional[int]]] = None, batch_size: int = 64,
             scoring: str = "single", text_format: str | ResolvedFormat = "auto",
             max_seq_length: Optional[int] = None) -> dict[str, dict[str, float]]:
    """Metrics per dimension ("full" and each truncated size) for an Encoder or a model path;
    scoring="xtr" ranks with XTR's multi-vector token retrieval instead. `text_format` "auto"
    uses the format the model records (plain when it records none); the result's "format"
    says which was used. A model path is read at its own max_seq_length unless one is given;
    the result's "max_seq_length" says which."""
    from pipeline.train.model import Encoder

    encoder = model if isinstance(model, Encoder) else Encoder(str(model), max_seq_length=max_seq_length)
    resolved = text_format if isinstance(text_format, ResolvedFormat) else resolve(
        text_format, None if isinstance(model, Encoder) else model, task)
    fmt = resolved.format
    corpus, queries, qrels = load_beir(folder, split)
    doc_ids = sorted(corpus)
    doc_texts = [fmt.document(*corpus[d]) for d in doc_ids]
    qids = sorted(queries)
    query_texts = [fmt.query(resolved.task, queries[q]) for q in qids]
    results: dict = {"format": {"name": fmt.name, "source": resolved.source, "task": resolved.task},
                     "max_seq_length": {"tokens": encoder.max_seq_length,
                                        "source": "the model's own" if max_seq_length is None else "given"}}
    if scoring == "xtr":
        results["xtr"] = _metrics(qids, xtr_search(encoder, query_texts, doc_ids, doc_texts), qrels)
        return results
    sizes = list(dict.fromkeys(None if dim is None or dim >= encoder.dim else dim for dim in dims or [None]))
    encode = functools.partial(encoder.encode, batch_size=batch_size)
    ranked = search(encode, encode, query_texts, doc_ids, doc_texts, k=100, dims=sizes)
    for dim in sizes:
        results["full" if dim is None else str(dim)] = _metrics(qids, ranked[dim], qrels)
    return results


def _metrics(qids: list[str], ranked: list[list[str]], qrels: dict) -> dict[str, float]:
    per_query = trec_metrics(qids, ranked, qrels)
    return {**{name: float(np.mean(values)) if values else 0.0 for name, values in per_query.items()},
            "queries": len(qids)}


def xtr_search(encoder, query_texts: list[str], doc_ids: list[str], doc_texts: list[str], k_prime: int = 1000,
               k: int = 100, batch_size: int = 32) -> list[list[str]]:
    """XTR inference (Lee et al. 2023): each query token retrieves its top-k' document tokens;
    a document's score averages, over query tokens, the best retrieved similarity to it, with a
    missing one imputed by that query token's lowest retrieved score m_i."""
    import torch

    def token_vectors(texts):
        out = []
        encoder.eval()
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                feats = encoder(encoder.tokenize(texts[start:start + batch_size]))
                vecs = torch.nn.functional.normalize(feats["token_embeddings"], dim=-1)
                for v, m in zip(vecs, feats["attention_mask"].bool()):
                    out.append(v[m].float().cpu().numpy())
        return out

    queries = token_vectors(query_texts)
    # Running top-k' (score, doc index) per query token, scanning the corpus one chunk at a time.
    best: list[list[list[tuple[float, int]]]] = [[[] for _ in q] for q in queries]
    for start in range(0, len(doc_texts), CHUNK):
        docs = token_vectors(doc_texts[start:start + CHUNK])
        owners = np.concatenate([np.full(len(d), start + i) for i, d in enumerate(docs)])
        matrix = np.concatenate(docs)  # (tokens in chunk, d)
        for qi, q in enumerate(queries):
            sims = q @ matrix.T  # (Lq, T)
            take = min(k_prime, sims.shape[1])
            top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
            for ti, cols in enumerate(top):
                merged = best[qi][ti] + [(float(sims[ti, c]), int(owners[c])) for c in cols]
                best[qi][ti] = heapq.nlargest(k_prime, merged)
    ranked = []
    for per_token in best:
        lowest = [min(s for s, _ in hits) if hits else 0.0 for hits in per_token]  # m_i
        candidates = {d for hits in per_token for _, d in hits}
        scores = {}
        for d in candidates:
            total = 0.0
            for ti, hits in enumerate(per_token):
                found = [s for s, owner in hits if owner == d]
                total += max(found) if found else lowest[ti]
            scores[d] = total / max(1, len(per_token))
        order = sorted(scores, key=lambda d: (-scores[d], doc_ids[d]))[:k]
        ranked.append([doc_ids[d] for d in order])
    return ranked
