"""`fret eval` against sentence-transformers' `encode` of the same texts plus one exact search.

Both sides evaluate all-MiniLM-L6-v2 on the same BEIR folder with the same formatted texts, in
one process, alternating, each twice (the faster run of each counts). fret's side is the whole
`evaluate()` at the full size and three Matryoshka sizes; the peer's is one `encode` of queries
and corpus and one exact top-100 search, the least any evaluation must do. Both truncate at the Encoder's
max_seq_length, the model's own since issue 36 (256 for all-MiniLM-L6-v2; the stored
bench/results/eval_vs_st.json was measured at 128 and has not been rerun).

    .venv/bin/python bench/eval_vs_st.py [--beir samples/pydoc-retrieval] [--dims 256,128,64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import ROOT, emit

from pipeline.embedding import resolve_model_path
from pipeline.text_format import GECKO, resolve
from pipeline.train.evaluate import evaluate, load_beir
from pipeline.train.model import Encoder

TASK = "Given a query, find a relevant passage"


def st_side(model, query_texts, doc_texts) -> float:
    start = time.perf_counter()
    q = model.encode(query_texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    d = model.encode(doc_texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    scores = q @ d.T
    np.argsort(-scores, axis=1)[:, :100]
    return time.perf_counter() - start


def fret_side(encoder, beir, dims) -> float:
    start = time.perf_counter()
    evaluate(encoder, beir, "test", dims=dims, text_format=resolve("gecko", None, TASK))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beir", default=str(ROOT / "samples" / "pydoc-retrieval"))
    parser.add_argument("--dims", default="256,128,64")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    corpus, queries, _ = load_beir(args.beir, "test")
    query_texts = [GECKO.query(TASK, queries[q]) for q in sorted(queries)]
    doc_texts = [GECKO.document(*corpus[d]) for d in sorted(corpus)]
    path = resolve_model_path("all-MiniLM-L6-v2")
    encoder = Encoder(path, device="cpu")
    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = encoder.st.max_seq_length  # both sides truncate the same texts at the same length
    dims = [None] + [int(d) for d in args.dims.split(",") if d.strip()]
    times = {"st": [], "fret_full_only": [], "fret_all_sizes": []}
    for _ in range(args.repeats):
        times["st"].append(st_side(st, query_texts, doc_texts))
        times["fret_full_only"].append(fret_side(encoder, args.beir, [None]))
        times["fret_all_sizes"].append(fret_side(encoder, args.beir, dims))
    best = {k: min(v) for k, v in times.items()}
    rows = [{"side": k, "texts": len(query_texts) + len(doc_texts), "best_s": v, "runs_s": times[k],
             "ratio_vs_st": v / best["st"]} for k, v in best.items()]
    emit("eval_vs_st", rows, ["side", "texts", "best_s", "ratio_vs_st"],
         {"dims": args.dims, "ratio_full_only": best["fret_full_only"] / best["st"],
          "ratio_all_sizes": best["fret_all_sizes"] / best["st"], "target": 1.1})


if __name__ == "__main__":
    main()
