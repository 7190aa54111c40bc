"""GradCache's memory: peak RSS of `fret train` at a batch of 64, and at a batch of 1,024 with
`--mini-batch-size` (and, for contrast, without), each in its own process, side by side in one run.

    .venv/bin/python bench/train_scale.py [--steps 1] [--mini-batch 64] [--no-uncached]

The data is the manpages set's training pairs (2,000; scripts/make_manpages_retrieval.py, built
on first use), with all-MiniLM-L6-v2, 128 tokens, the default Matryoshka sizes. Peak RSS is the
child's ru_maxrss. Prints one JSON line and writes bench/results/train_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT

from train_vs_st import SETS, ensure_set, training_data

CHILD = """
import json, resource, sys
from pipeline.train.trainer import TrainConfig, train
summary = train(TrainConfig(**json.loads(sys.argv[1])))
print("RESULT" + json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                             "pairs_per_s": summary["pairs_per_s"]}))
"""


def run(data: Path, out: Path, batch: int, mini_batch, steps: int) -> dict:
    settings = dict(data=str(data), output=str(out), batch_size=batch, mini_batch_size=mini_batch, max_steps=steps,
                    progress=False, warmup_steps=0)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.rsplit("RESULT", 1)[1])
    return {"batch": batch, "mini_batch": mini_batch, "steps": steps, "seconds": time.perf_counter() - start,
            **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--mini-batch", type=int, default=64)
    parser.add_argument("--no-uncached", action="store_true", help="skip the batch of 1,024 without GradCache")
    args = parser.parse_args(argv)
    folder, task = SETS["manpages"]
    ensure_set("manpages")
    work = Path(tempfile.mkdtemp(prefix="fret-scale-"))
    data = training_data(folder, task, "none", work / "pairs.parquet")
    rows = [run(data, work / "b64", 64, None, args.steps),
            run(data, work / "b1024-cached", 1024, args.mini_batch, args.steps)]
    if not args.no_uncached:
        rows.append(run(data, work / "b1024", 1024, None, args.steps))
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    result = {"bench": "train_scale", "rows": rows, "cached_1024_over_64": ratio,
              "target": "peak RSS of a batch of 1,024 under 2x that of a batch of 64"}
    for row in rows:
        print(f"batch {row['batch']:5d}  mini-batch {str(row['mini_batch']):>5}  peak RSS {row['peak_rss_mib']:8.0f} MiB"
              f"  {row['seconds']:6.0f} s")
    print(f"GradCache batch 1,024 / batch 64 peak RSS: {ratio:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
