"""README's two Beam-flag examples, run N times each against the scripted stub LLM: the
`python -m beam_jobs.fret_job ... --direct_running_mode multi_threading` command and the
`fret run --config job.yaml` example with the same `beam:` block. Both once failed (2 in 3 and
1 in 3) when two worker threads imported transformers at once.

    .venv/bin/python bench/readme_beam_commands.py [--runs 3]

Prints each run's exit code and, for a failure, its last line; writes
bench/results/readme_beam_commands.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, ROOT

from pipeline.testing.stub_llm import StubLLM


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fret-readme-beam-"))
    inp = tmp / "p.jsonl"
    inp.write_text("".join(json.dumps({"id": f"p{i}", "text": f"Passage {i} is about topic {i} and its details."})
                           + "\n" for i in range(12)))
    rows = []
    with StubLLM() as stub:
        for i in range(args.runs):
            config = tmp / f"job{i}.yaml"
            config.write_text(f"input: {inp}\noutput: {tmp / f'yaml{i}'}\nllm_url: {stub.base_url}\nnum_neighbors: 4\n"
                              "beam:\n  runner: DirectRunner\n  direct_running_mode: multi_threading\n"
                              "  direct_num_workers: 2\n")
            commands = {
                "module command": [sys.executable, "-m", "beam_jobs.fret_job", "--input", str(inp), "--output",
                                   str(tmp / f"flags{i}"), "--llm_url", stub.base_url, "--runner", "DirectRunner",
                                   "--direct_num_workers", "2", "--direct_running_mode", "multi_threading"],
                "job.yaml": [sys.executable, "-m", "beam_jobs.cli", "run", "--config", str(config)],
            }
            for name, cmd in commands.items():
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
                last = (done.stderr.strip().splitlines() or [""])[-1][:300]
                rows.append({"command": name, "run": i, "rc": done.returncode,
                             **({"last_line": last} if done.returncode else {})})
                print(f"{name} run {i}: rc {done.returncode}" + (f" ({last})" if done.returncode else ""), flush=True)
    (RESULTS / "readme_beam_commands.json").write_text(json.dumps(rows, indent=1) + "\n")
    failed = [r for r in rows if r["rc"]]
    print(f"failed {len(failed)} of {len(rows)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
