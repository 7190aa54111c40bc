"""Does `fret train --seed S` give the same model every time, at the bench's size? (issue 36, defect 4)

    .venv/bin/python bench/determinism.py [--set pydoc] [--seed 0] [--runs 2] [--hog-runs 1] [--peer]

On one set's train split with one hard negative mined at base-model ranks 3..10 (bench/train_vs_st.py's
`negatives=3-10`), each run is a fresh process:
- the training data is built in each run's own process (as each bench invocation did), and its bytes
  are compared;
- `fret train` at its defaults (one epoch, batch 32), `--runs` times on a quiet machine and `--hog-runs`
  times beside a CPU hog (a busy loop on each core); the weights are compared bit for bit and the first
  step whose loss differs is named;
- with --peer, sentence-transformers' trainer (MNRL + Matryoshka, lr 5e-5) the same way.
Prints one line per run and a verdict; writes bench/results/determinism.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, ROOT

RUN = r"""
import hashlib, json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import train_vs_st as b
from pipeline.train.model import Encoder
folder, task = b.SETS[{set!r}]
b.ensure_set({set!r})
data = b.training_data(folder, task, "3-10", __import__("pathlib").Path({data!r}))
out = __import__("pathlib").Path({out!r})
if {peer!r}:
    class A: batch_size = 32
    b.peer(data, folder, task, out, {seed!r}, A())
    model = str(out / "model")
    losses = []
else:
    from pipeline.train.trainer import TrainConfig, train
    model = train(TrainConfig(data=str(data), output=str(out), eval_task=task, seed={seed!r}, progress=False,
                              log_every=1))["model"]
    losses = [r["loss"] for r in map(json.loads, open(out / "train_log.jsonl")) if "loss" in r]
state = Encoder(model, device="cpu").state_dict()
digest = hashlib.sha256(b"".join(v.cpu().numpy().tobytes() for _, v in sorted(state.items()))).hexdigest()
import torch
print("RESULT" + json.dumps({{"data": hashlib.sha256(open(data, "rb").read()).hexdigest(), "weights": digest,
                              "losses": losses, "threads": torch.get_num_threads(),
                              "model": model}}))
"""


def one_run(set_name: str, seed: int, peer: bool, work: Path, index: int) -> dict:
    out = work / f"run-{index}"
    code = RUN.format(root=str(ROOT), bench=str(ROOT / "bench"), set=set_name, data=str(out / "data.parquet"),
                      out=str(out / "train"), seed=seed, peer=peer)
    out.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.rsplit("RESULT", 1)[1])


def max_weight_diff(a: str, b: str) -> float:
    from pipeline.train.model import Encoder

    sa, sb = Encoder(a, device="cpu").state_dict(), Encoder(b, device="cpu").state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="pydoc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=2, help="quiet runs")
    parser.add_argument("--hog-runs", type=int, default=1, help="runs beside a busy loop on every core")
    parser.add_argument("--peer", action="store_true", help="sentence-transformers' trainer instead of fret's")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fret-determinism-"))
    runs = []
    for i in range(args.runs + args.hog_runs):
        hog = i >= args.runs
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)] \
            if hog else []
        try:
            result = one_run(args.set, args.seed, args.peer, work, i)
        finally:
            for h in hogs:
                h.kill()
        result["hog"] = hog
        runs.append(result)
        print(f"run {i} ({'beside a CPU hog' if hog else 'quiet'}): data {result['data'][:12]} weights "
              f"{result['weights'][:12]} threads {result['threads']} steps {len(result['losses'])}", flush=True)
    first = runs[0]
    report = {"set": args.set, "seed": args.seed, "trainer": "sentence-transformers" if args.peer else "fret",
              "runs": [{k: r[k] for k in ("hog", "data", "weights", "threads")} for r in runs],
              "same_data": all(r["data"] == first["data"] for r in runs),
              "same_weights": all(r["weights"] == first["weights"] for r in runs),
              "max_weight_diff": max(max_weight_diff(first["model"], r["model"]) for r in runs[1:]) if runs[1:] else 0}
    diverged = [next((s for s, (a, b) in enumerate(zip(first["losses"], r["losses"]), start=1) if a != b), None)
                for r in runs[1:]]
    report["first_step_whose_loss_differs"] = diverged
    print(json.dumps(report, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "determinism.json"
    stored = json.loads(path.read_text()) if path.exists() else []
    stored.append(report)
    path.write_text(json.dumps(stored, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
