#!/usr/bin/env bash
# Train the larger teachers on a lent GPU (the device tool), two sizes side by side, and bring
# back the better one by the held-out third-party probe. Needs a pack (pipeline/teacher/pack.py)
# in .gpu/pack and pydantic's wheels in .whl (the GPU image has no pydantic). Writes to $OUT.
#   here:  .venv/bin/python -m pipeline.teacher.pack .gpu/pack
#   there: bash scripts/teacher_on_device.sh 270
#   here:  .venv/bin/python -m pipeline.teacher.assemble .gpu/pack OUT/best ~/.cache/fret-distill/teacher-packed
set -u
SECONDS_TRAIN=${1:-270}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
nvidia-smi -L
for preset in l8h512 l6h384; do
  timeout $((SECONDS_TRAIN + 230)) python3 -m pipeline.teacher.train_packed .gpu/pack /tmp/runs/$preset \
    --preset $preset --train-seconds "$SECONDS_TRAIN" --processes 8 > "$OUT/$preset.log" 2>&1 &
done
wait
python3 - <<'PY'
import json, os, shutil
from pathlib import Path
out = Path(os.environ["OUT"])
runs = {}
for run in sorted(Path("/tmp/runs").glob("*/teacher_packed.json")):
    summary = json.loads(run.read_text())
    runs[run.parent.name] = summary  # the losers' evaluations are in their logs
if runs:
    best = max(runs, key=lambda name: runs[name]["best_validation_rrf"])
    (out / "best").mkdir()
    for name in runs[best]["weights"] + ["teacher_packed.json"]:
        shutil.copy(Path("/tmp/runs") / best / name, out / "best" / name)
    print("best:", best, {n: r["best_validation_rrf"] for n, r in runs.items()})
PY
