"""What the DirectRunner holds, stage by stage, while the whole job runs.

    .venv/bin/python bench/stage_memory.py [--passages 100000] [--num-neighbors 4] [--index-shard-size 50000]
        [--result stage_memory]

The job (stub LLM in its own process, the tiny random encoder, as bench/scale.py) runs in this
process on the DirectRunner (FnApiRunner). Before and after every bundle it records the process
RSS and the bytes held in the runner's PCollection buffers, by PCollection: a ListBuffer holds
encoded elements (measured exactly); a GroupingBuffer holds decoded values (estimated by
encoding a sample of them with the value coder). Writes bench/results/stage_memory.json.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import tempfile
import time
import weakref
from collections import defaultdict
from pathlib import Path

from common import CACHE, emit

LIVE: "weakref.WeakSet" = weakref.WeakSet()
SAMPLE = 200


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def buffer_bytes(buf) -> int:
    from apache_beam.runners.portability.fn_api_runner import execution

    if isinstance(buf, execution.ListBuffer):
        return sum(len(b) for b in buf._inputs)
    table = getattr(buf, "_table", None)
    if not table:
        return 0
    values = [v for vs in itertools.islice(table.values(), SAMPLE) for v in vs]
    count = sum(len(vs) for vs in table.values())
    if not values:
        return 0
    sample = values[:SAMPLE]
    per_value = sum(len(pickle.dumps(v, protocol=5)) for v in sample) / len(sample)
    keys = sum(len(k) for k in itertools.islice(table.keys(), SAMPLE)) / min(len(table), SAMPLE)
    return int(per_value * count + keys * len(table))


def instrument(records: list) -> None:
    from apache_beam.runners.portability.fn_api_runner import execution, fn_runner
    from apache_beam.runners.portability.fn_api_runner.translations import split_buffer_id

    names: dict = {}

    def label(context, buffer_id: bytes) -> str:
        if buffer_id not in names:
            kind, ref = split_buffer_id(buffer_id)
            comps = context.pipeline_components
            proto = comps.pcollections.get(ref) if ref in comps.pcollections else comps.transforms.get(ref)
            names[buffer_id] = f"{kind}:{proto.unique_name if proto is not None else ref}"
        return names[buffer_id]

    original_get = execution.BundleContextManager.get_buffer

    def get_buffer(self, buffer_id, transform_id):
        buf = original_get(self, buffer_id, transform_id)
        buf._fret_label = label(self.execution_context, buffer_id)
        LIVE.add(buf)
        return buf

    original_copy = execution.ListBuffer.copy

    def copy(self):
        new = original_copy(self)
        new._fret_label = getattr(self, "_fret_label", "?")
        LIVE.add(new)
        return new

    original_execute = fn_runner.FnApiRunner._execute_bundle

    def held() -> dict:
        by_label: dict = defaultdict(int)
        for buf in list(LIVE):
            if not getattr(buf, "cleared", False):
                by_label[buf._fret_label] += buffer_bytes(buf)
        return {k: v for k, v in by_label.items() if v}

    def execute(self, context, bundle_manager, bundle_input):
        start = time.perf_counter()
        result = original_execute(self, context, bundle_manager, bundle_input)
        records.append({"stage": bundle_manager.stage.name, "seconds": time.perf_counter() - start,
                        "rss_mib": rss_mib(), "held": held()})
        return result

    execution.BundleContextManager.get_buffer = get_buffer
    execution.ListBuffer.copy = copy
    fn_runner.FnApiRunner._execute_bundle = execute


def short(stage: str) -> str:
    """A fused stage's name -> its first transform's top two path parts."""
    first = stage.split("+")[0].removeprefix("ref_AppliedPTransform_")
    return "/".join(first.split("/")[:2])[:60]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--num-neighbors", type=int, default=4)
    parser.add_argument("--index-shard-size", type=int, default=50_000,
                        help="the job's --index_shard_size: smaller gives many shards at a small corpus")
    parser.add_argument("--result", default="stage_memory", help="bench/results/<result>.json")
    args = parser.parse_args()
    from scale import stub_process, write_corpus

    from beam_jobs.fret_job import run
    from pipeline.llm.server import free_port
    from pipeline.testing.tiny_encoder import build_tiny_encoder

    encoder = build_tiny_encoder(CACHE / "tiny-encoder-bench")
    port = free_port()
    stub = stub_process(port)
    records: list = []
    instrument(records)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = Path(tmp) / "corpus.jsonl"
            write_corpus(corpus, args.passages)
            start = time.perf_counter()
            run(["--input", str(corpus), "--output", f"{tmp}/out", "--llm_url", f"http://127.0.0.1:{port}",
                 "--llm_model", "stub-llm", "--embedder", str(encoder), "--num_neighbors", str(args.num_neighbors),
                 "--progress", "false", "--near_dup_threshold", "0",
                 "--index_shard_size", str(args.index_shard_size)], save_main_session=False)
            elapsed = time.perf_counter() - start
    finally:
        stub.kill()
    rows = []
    for r in records:
        total = sum(r["held"].values())
        top = sorted(r["held"].items(), key=lambda kv: -kv[1])[:3]
        rows.append({"after stage": short(r["stage"]), "s": round(r["seconds"], 1), "RSS MiB": round(r["rss_mib"]),
                     "held MiB": round(total / 2**20, 1),
                     "largest held": "; ".join(f"{k.split(':', 1)[1][:50]} {v / 2**20:.1f}" for k, v in top)})
    peak = max(records, key=lambda r: r["rss_mib"])
    summary = {"passages": args.passages, "num_neighbors": args.num_neighbors,
               "index_shard_size": args.index_shard_size, "seconds": elapsed,
               "peak_rss_mib": peak["rss_mib"], "peak_after_stage": peak["stage"],
               "held_at_peak_mib": {k: v / 2**20 for k, v in sorted(peak["held"].items(), key=lambda kv: -kv[1])},
               "max_held_mib": max(sum(r["held"].values()) for r in records) / 2**20}
    emit(args.result, rows, ["after stage", "s", "RSS MiB", "held MiB", "largest held"], summary)


if __name__ == "__main__":
    sys.exit(main())
