"""Scale curve of the whole job: wall time per passage and peak RSS at growing corpus sizes.

    .venv/bin/python bench/scale.py [--sizes 30000,300000] [--num-neighbors 4]

The LLM is the scripted stub (instant answers, its own process) and the embedder a tiny
random-weight BERT, so that the pipeline itself is measured, not the models. Each size runs the
real job (`python -m beam_jobs.fret_job`, DirectRunner) in a fresh process; peak RSS is that
process's maximum resident set (wait4). Writes bench/results/scale.json and scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CACHE, RESULTS, ROOT, emit

WORDS = ("river stone copper lantern harbor meadow signal engine garden winter silver market forest "
         "bridge thunder candle orchard compass glacier violet anchor canyon ember falcon quarry").split()


def write_corpus(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(40))
            f.write(json.dumps({"id": f"s{i}", "title": f"Note {i}", "text": f"Record {i}. {words}."}) + "\n")


def stub_process(port: int) -> subprocess.Popen:
    """The stub in its own process, so its memory and CPU are not the job's."""
    code = f"""
import hashlib, json, sys, time
sys.path.insert(0, {str(ROOT)!r})
from pipeline.testing.stub_llm import StubLLM
def gen(prompt):
    digest = hashlib.sha1(prompt.rsplit("<passage>", 1)[1].encode()).hexdigest()[:12]
    return json.dumps({{"task": "Given a query, find the passage", "query": "query " + digest}})
stub = StubLLM(generate_fn=gen, port={port}, record=False).start()  # millions of requests: keep none
print("ready", flush=True)
while True:
    time.sleep(3600)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def run_job(corpus: Path, out: Path, url: str, encoder: Path, neighbors: int,
            wave_size: int = 0) -> tuple[float, int, dict]:
    cmd = [sys.executable, "-m", "beam_jobs.fret_job", "--input", str(corpus), "--output", str(out),
           "--llm_url", url, "--llm_model", "stub-llm", "--embedder", str(encoder), "--num_neighbors",
           str(neighbors), "--progress", "false", "--near_dup_threshold", "0", "--wave_size", str(wave_size)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    log = proc.stdout.read().decode(errors="replace")
    if status != 0:
        raise RuntimeError(f"job failed:\n{log[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return elapsed, usage.ru_maxrss * 1024, manifest  # ru_maxrss is in KiB on Linux


def phase_totals(phase_seconds: dict[str, float]) -> dict[str, float]:
    """A run in waves: seconds per phase, summed over its waves ("finish-w00003" counts as finish)."""
    totals: dict[str, float] = {}
    for name, seconds in phase_seconds.items():
        key = f"{name.split('-w')[0]} s"
        totals[key] = totals.get(key, 0.0) + seconds
    return totals


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["passages"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(sizes, [r["ms/passage"] for r in rows], "o-")
    a.set(xscale="log", xlabel="seed passages", ylabel="wall ms per passage", title="time per passage")
    b.plot(sizes, [r["peak RSS MiB"] for r in rows], "o-")
    b.set(xscale="log", xlabel="seed passages", ylabel="peak RSS (MiB)", title="peak memory of the job")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="30000,300000")
    parser.add_argument("--num-neighbors", type=int, default=4)
    parser.add_argument("--wave-size", type=int, default=0, help="the job's --wave_size (0: one pipeline)")
    parser.add_argument("--result", default="scale", help="name of the JSON and PNG in bench/results/")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline.llm.server import free_port
    from pipeline.testing.tiny_encoder import build_tiny_encoder

    encoder = build_tiny_encoder(CACHE / "tiny-encoder-bench")
    port = free_port()
    stub = stub_process(port)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in (int(s) for s in args.sizes.split(",")):
                corpus = Path(tmp) / f"corpus-{n}.jsonl"
                write_corpus(corpus, n)
                elapsed, rss, manifest = run_job(corpus, Path(tmp) / f"out-{n}", f"http://127.0.0.1:{port}",
                                                 encoder, args.num_neighbors, args.wave_size)
                assert manifest["inputs"] == n, manifest["accounting"]
                rows.append({"passages": n, "seconds": elapsed, "ms/passage": 1000 * elapsed / n,
                             "peak RSS MiB": rss / 2**20, "written": manifest["written"],
                             **phase_totals(manifest.get("phase_seconds", {})),
                             "phases": manifest.get("phase_seconds", {})})
                print(rows[-1], flush=True)
    finally:
        stub.kill()
    per = [r["ms/passage"] for r in rows]
    summary = {"num_neighbors": args.num_neighbors, "wave_size": args.wave_size,
               "ms_per_passage_ratio_last_to_previous": per[-1] / per[-2] if len(per) > 1 else None,
               "rss_ratio_last_to_previous": rows[-1]["peak RSS MiB"] / rows[-2]["peak RSS MiB"]
               if len(rows) > 1 else None}
    phases = [k for k in ("plan s", "prepare s", "filter s", "finish s") if k in rows[0]]
    emit(args.result, rows, ["passages", "seconds", "ms/passage", "peak RSS MiB", "written", *phases], summary)
    plot(rows, RESULTS / f"{args.result}.png")


if __name__ == "__main__":
    main()
