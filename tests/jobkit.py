"""Helpers for the job tests: write inputs, run the job, read every output back."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds

from beam_jobs import fret_job


def write_jsonl(path: Path, records) -> Path:
    with open(path, "wb") as f:
        for r in records:
            f.write(r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode())
            f.write(b"\n")
    return path


def run_job(input_path: Path, output: Path, llm_url: str, *extra: str) -> dict:
    fret_job.run(["--input", str(input_path), "--output", str(output), "--llm_url", llm_url,
                  "--progress", "false", *extra], save_main_session=False)
    return read_output(output)


def read_table(folder: Path):
    files = sorted(folder.glob("*.parquet"))
    return ds.dataset(files, format="parquet").to_table() if files else None


def read_output(output: Path) -> dict:
    manifest = json.loads((output / "manifest.json").read_text())
    tables = {name: read_table(output / name) for name in ("examples", "dead_letters", "filtered")}
    rows = {name: (t.to_pylist() if t is not None else []) for name, t in tables.items()}
    return {"manifest": manifest, **rows}


def small_beir(source: Path, folder: Path, n_queries: int = 30) -> Path:
    """The first queries of a BEIR test split over their own documents and 200 others."""
    from pipeline.train.evaluate import load_beir, write_beir

    corpus, queries, qrels = load_beir(source, "test")
    qids = sorted(queries)[:n_queries]
    keep = {d for q in qids for d in qrels[q]} | set(sorted(corpus)[:200])
    return write_beir(folder, {d: corpus[d] for d in sorted(keep)}, {q: queries[q] for q in qids},
                      {q: qrels[q] for q in qids}, "test")
