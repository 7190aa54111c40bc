"""`fret eval`'s nDCG@10 against sentence-transformers' InformationRetrievalEvaluator on the same
model, the same texts and binary qrels (issue 36): both read the model at its own length.

    .venv/bin/python bench/eval_equals_st.py [--beir samples/pydoc-retrieval] [--models all-MiniLM-L6-v2 ...]

Prints one row per model and dimension; writes bench/results/eval_equals_st.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import RESULTS, ROOT

from pipeline.embedding import resolve_model_path
from pipeline.text_format import PLAIN
from pipeline.train.evaluate import evaluate, load_beir


def st_ndcg(model_path: str, folder: Path, dim) -> float:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    corpus, queries, qrels = load_beir(folder, "test")
    relevant = {q: {d for d, s in docs.items() if s > 0} for q, docs in qrels.items()}
    relevant = {q: docs for q, docs in relevant.items() if docs and q in queries}
    model = SentenceTransformer(resolve_model_path(model_path), device="cpu")
    evaluator = InformationRetrievalEvaluator(
        {q: PLAIN.query("", queries[q]) for q in relevant}, {d: PLAIN.document(*corpus[d]) for d in corpus},
        relevant, truncate_dim=dim, write_csv=False, batch_size=64)
    scores = evaluator(model)
    return scores[next(k for k in scores if k.endswith("cosine_ndcg@10"))], model.max_seq_length


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beir", type=Path, default=ROOT / "samples" / "pydoc-retrieval")
    parser.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2"])
    args = parser.parse_args()
    rows = []
    for model in args.models:
        ours = evaluate(model, args.beir, "test", dims=[None, 64], text_format="plain")
        for dim, key in ((None, "full"), (64, "64")):
            theirs, length = st_ndcg(model, args.beir, dim)
            row = {"model": model, "dims": key, "fret_eval": ours[key]["ndcg@10"], "st_ir_evaluator": theirs,
                   "difference": ours[key]["ndcg@10"] - theirs, "fret_tokens": ours["max_seq_length"]["tokens"],
                   "st_tokens": length}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (RESULTS / "eval_equals_st.json").write_text(json.dumps({"beir": str(args.beir), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
