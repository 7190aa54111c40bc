"""How many scoring requests one worker process can issue, against a server that answers at once.

    .venv/bin/python bench/client_vs_stub.py [--requests 4000] [--concurrency 64]

The stub LLM (pipeline/testing/stub_llm.py, constant logprobs) runs in its own process; this
process runs fret's LLMClient as the job's workers do, on the job's real prompts (QL with echo
logprobs, RC with first-token label logprobs; rendered from the sample passages). Reported per
kind: requests/s and this process's CPU time per request (the client's cost, whatever the
server's). On 2 cores the stub takes CPU too, so requests/s is a floor for a dedicated client.
Target (issue 15): >= 1,000 scoring requests/s from one worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

from common import ROOT, emit, rerank_items

LABELS = [" Highly Relevant", " Somewhat Relevant", " Not Relevant"]
SERVE = """
import sys, threading
from pipeline.testing.stub_llm import StubLLM
stub = StubLLM(logprob_fn=lambda before, token: -1.0).start()
stub.requests = type("Discard", (list,), {"append": lambda self, item: None})()  # keep no bodies
print(stub.base_url, flush=True)
sys.stdin.read()
"""


def requests(n: int):
    from pipeline.prompts import load_prompt
    from pipeline.rerank import ql_request, rc_prompt

    items = rerank_items(max(1, n // 20), 20)
    ql, rc = load_prompt("query_likelihood"), load_prompt("relevance_classification")
    pairs = [(q, c) for q, _, cands in items for c in cands]
    return ([ql_request(ql, q, c, 4000) for q, c in pairs][:n], [rc_prompt(rc, q, c, 4000) for q, c in pairs][:n])


async def run(base_url: str, kind: str, payloads, concurrency: int) -> tuple[float, float, int]:
    from pipeline.llm.client import LLMClient
    from pipeline.llm.types import ClientConfig

    config = ClientConfig(base_urls=(base_url,), model="stub-llm", max_concurrency=concurrency, timeout_s=120)
    async with LLMClient(config) as client:
        await client.label_first_tokens(LABELS)
        cpu, wall = time.process_time(), time.perf_counter()
        if kind == "ql":
            results = await asyncio.gather(*(client.query_likelihood(*p) for p in payloads))
        else:
            results = await asyncio.gather(*(client.label_logprobs(p, LABELS, "first_token") for p in payloads))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    failed = sum(not r.ok for r in results)
    return wall, cpu, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    ql, rc = requests(args.requests)
    server = subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        base_url = server.stdout.readline().strip()
        rows = []
        for kind, payloads in (("ql", ql), ("rc", rc)):
            asyncio.run(run(base_url, kind, payloads[:200], args.concurrency))  # warm-up: connections, caches
            wall, cpu, failed = asyncio.run(run(base_url, kind, payloads, args.concurrency))
            rows.append({"kind": kind, "requests": len(payloads), "failed": failed,
                         "requests_per_s": round(len(payloads) / wall, 1),
                         "client_cpu_ms_per_request": round(1000 * cpu / len(payloads), 3),
                         "cpu_bound_requests_per_s": round(len(payloads) / cpu, 1) if cpu else None})
    finally:
        server.stdin.close()
        server.wait(30)
    worst = min(r["requests_per_s"] for r in rows)
    emit("client_vs_stub", rows, ["kind", "requests", "failed", "requests_per_s", "client_cpu_ms_per_request",
                                  "cpu_bound_requests_per_s"],
         {"concurrency": args.concurrency, "target_requests_per_s": 1000, "met": worst >= 1000})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
