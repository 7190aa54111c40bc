"""Our trainer vs sentence-transformers' trainer (MultipleNegativesRankingLoss + MatryoshkaLoss)
on the same data, base model, batch size, learning rate and epochs, measured side by side.

    .venv/bin/python bench/train_vs_st.py [--batch-size 32] [--epochs 1]

Prints a table and one JSON line; writes bench/results/train_vs_st.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.embedding import resolve_model_path  # noqa: E402
from pipeline.train.data import beir_to_triples, write_beir_as_examples  # noqa: E402
from pipeline.train.evaluate import evaluate  # noqa: E402
from pipeline.train.trainer import TrainConfig, train  # noqa: E402

BEIR = ROOT / "samples" / "pydoc-retrieval"
TASK = "Given a one-line summary, find the Python documentation it summarises"


def ours(data: Path, out: Path, args) -> dict:
    # The objective sentence-transformers' MNRL computes: in-batch positives only, and its
    # trainer's default of no weight decay.
    config = TrainConfig(data=str(data), output=str(out), batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=args.warmup, epochs=args.epochs, mrl_dims=tuple(args.mrl_dims),
                         same_tower=False, hard_negatives=False, max_seq_length=args.max_seq_length,
                         weight_decay=0.0, seed=args.seed, progress=False)
    summary = train(config)
    return {"pairs_per_s": summary["pairs_per_s"], "seconds": summary["seconds"], "pairs": summary["pairs"],
            "model": summary["model"]}


def sentence_transformers_trainer(triples, out: Path, args) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
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
        report_to=[], save_strategy="no", logging_steps=10, seed=args.seed, dataloader_drop_last=True,
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="fret-bench-"))
    triples = beir_to_triples(BEIR, "train", TASK)
    data = work / "train.parquet"
    write_beir_as_examples(BEIR, "train", TASK, data)

    base = evaluate("all-MiniLM-L6-v2", BEIR, "test", TASK)["full"]["ndcg@10"]
    runs = []
    for seed in args.seeds:  # data order and dropout differ per seed: compare means, not one draw
        args.seed = seed
        a = ours(data, work / f"ours-{seed}", args)
        a["ndcg@10"] = evaluate(a["model"], BEIR, "test", TASK)["full"]["ndcg@10"]
        b = sentence_transformers_trainer(triples, work / f"st-{seed}", args)
        b["ndcg@10"] = evaluate(b["model"], BEIR, "test", TASK)["full"]["ndcg@10"]
        runs.append({"seed": seed, "fret": {k: a[k] for k in ("pairs_per_s", "ndcg@10")},
                     "sentence_transformers": {k: b[k] for k in ("pairs_per_s", "ndcg@10")}})

    def mean(side, key):
        return statistics.fmean(r[side][key] for r in runs)

    def spread(side, key):
        return statistics.pstdev(r[side][key] for r in runs)

    result = {
        "bench": "train_vs_st", "data": "samples/pydoc-retrieval train -> test", "train_pairs": len(triples),
        "batch_size": args.batch_size, "epochs": args.epochs, "seeds": args.seeds, "base_ndcg@10": base,
        "runs": runs,
        "speed_ratio": mean("fret", "pairs_per_s") / mean("sentence_transformers", "pairs_per_s"),
        "ndcg_ratio": mean("fret", "ndcg@10") / mean("sentence_transformers", "ndcg@10"),
    }
    print(f"{'mean over seeds ' + str(args.seeds):32}{'fret':>16}{'sent-trans':>16}{'ratio':>8}")
    for key, label in (("pairs_per_s", "train pairs/s"), ("ndcg@10", "nDCG@10 after training")):
        print(f"{label:32}{mean('fret', key):9.4f} ±{spread('fret', key):.4f}"
              f"{mean('sentence_transformers', key):9.4f} ±{spread('sentence_transformers', key):.4f}"
              f"{result['speed_ratio' if key == 'pairs_per_s' else 'ndcg_ratio']:8.3f}")
    print(f"(base model nDCG@10: {base:.4f})")
    print(json.dumps(result))
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "train_vs_st.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
