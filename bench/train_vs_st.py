"""Our trainer vs sentence-transformers' trainer (MultipleNegativesRankingLoss + MatryoshkaLoss)
on the same data, base model, batch size, learning rate and epochs, measured side by side.

    .venv/bin/python bench/train_vs_st.py [--batch-size 32] [--epochs 1]

Prints a table and one JSON line; writes bench/results/train_vs_st.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.embedding import resolve_model_path  # noqa: E402
from pipeline.train.data import beir_to_triples, write_triples_as_examples  # noqa: E402
from pipeline.train.evaluate import evaluate  # noqa: E402
from pipeline.train.trainer import TrainConfig, train  # noqa: E402

BEIR = ROOT / "samples" / "pydoc-retrieval"
TASK = "Given a one-line summary, find the Python documentation it summarises"


def ours(data: Path, out: Path, args) -> dict:
    config = TrainConfig(data=str(data), output=str(out), batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=args.warmup, epochs=args.epochs, mrl_dims=tuple(args.mrl_dims),
                         same_tower=False, hard_negatives=False, max_seq_length=args.max_seq_length,
                         progress=False)
    summary = train(config)
    return {"pairs_per_s": summary["pairs_per_s"], "seconds": summary["seconds"], "pairs": summary["pairs"],
            "model": summary["model"]}


def sentence_transformers_trainer(triples, out: Path, args) -> dict:
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = args.max_seq_length
    dataset = Dataset.from_dict({"anchor": [t.query for t in triples], "positive": [t.positive for t in triples]})
    dims = sorted({model.get_embedding_dimension(), *args.mrl_dims}, reverse=True)
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=1 / 0.05), dims)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st-work"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=args.warmup, batch_sampler=BatchSamplers.NO_DUPLICATES,
        report_to=[], save_strategy="no", logging_steps=10, seed=0, dataloader_drop_last=True,
        use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    pairs = (len(dataset) // args.batch_size) * args.batch_size * args.epochs
    model.save(str(out / "st-model"))
    return {"pairs_per_s": pairs / seconds, "seconds": seconds, "pairs": pairs, "model": str(out / "st-model")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--mrl-dims", type=int, nargs="*", default=[128])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="fret-bench-"))
    triples = beir_to_triples(BEIR, "train", TASK)
    data = work / "train.parquet"
    write_triples_as_examples(triples, data)

    base = evaluate("all-MiniLM-L6-v2", BEIR, "test", TASK)["full"]["ndcg@10"]
    a = ours(data, work / "ours", args)
    a["ndcg@10"] = evaluate(a["model"], BEIR, "test", TASK)["full"]["ndcg@10"]
    b = sentence_transformers_trainer(triples, work, args)
    b["ndcg@10"] = evaluate(b["model"], BEIR, "test", TASK)["full"]["ndcg@10"]

    result = {
        "bench": "train_vs_st", "data": "samples/pydoc-retrieval train -> test", "train_pairs": len(triples),
        "batch_size": args.batch_size, "epochs": args.epochs, "base_ndcg@10": base,
        "fret": {k: a[k] for k in ("pairs_per_s", "seconds", "ndcg@10")},
        "sentence_transformers": {k: b[k] for k in ("pairs_per_s", "seconds", "ndcg@10")},
        "speed_ratio": a["pairs_per_s"] / b["pairs_per_s"],
        "ndcg_ratio": a["ndcg@10"] / b["ndcg@10"],
    }
    print(f"{'':24}{'fret':>12}{'sent-trans':>12}{'ratio':>8}")
    print(f"{'train pairs/s':24}{a['pairs_per_s']:12.2f}{b['pairs_per_s']:12.2f}{result['speed_ratio']:8.3f}")
    print(f"{'nDCG@10 after training':24}{a['ndcg@10']:12.4f}{b['ndcg@10']:12.4f}{result['ndcg_ratio']:8.3f}")
    print(f"(base model nDCG@10: {base:.4f})")
    print(json.dumps(result))
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "train_vs_st.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
