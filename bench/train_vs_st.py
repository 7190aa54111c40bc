"""`fret train` settings vs sentence-transformers' trainer (MultipleNegativesRankingLoss +
MatryoshkaLoss, plain text), on two real retrieval sets, several seeds, measured side by side.

    .venv/bin/python bench/train_vs_st.py [--sets pydoc,manpages] [--seeds 0 1 2]
        [--settings defaults "plain-lr5e-5:text_format=plain,lr=5e-5"]

Sets: `pydoc` (samples/pydoc-retrieval) and `manpages` (scripts/make_manpages_retrieval.py,
built here on first use). Each set's train split becomes the training pairs, its test split is
evaluated at the full size and at 64 dimensions. A setting is `name:field=value,...` of
TrainConfig overrides (`defaults` = none); every setting tried is kept in the results, with
every run, not only the best. The peer trains on plain text with lr 5e-5 and warmup 10% as its
documentation recommends. Prints a table per set and one JSON line; writes
bench/results/train_vs_st.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

from common import CACHE, RESULTS, ROOT

from pipeline.embedding import resolve_model_path
from pipeline.text_format import PLAIN, resolve
from pipeline.train.data import beir_to_triples, write_beir_as_examples
from pipeline.train.evaluate import evaluate
from pipeline.train.trainer import TrainConfig, train

SETS = {
    "pydoc": (ROOT / "samples" / "pydoc-retrieval", "Given a one-line summary, find the Python documentation it summarises"),
    "manpages": (CACHE / "manpages-retrieval", "Given a one-line summary, find the manual page it summarises"),
}
DIMS = [None, 64]


def ensure_set(name: str) -> Path:
    folder = SETS[name][0]
    if name == "manpages" and not (folder / "corpus.jsonl").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_manpages_retrieval.py"), "--output", str(folder)],
                       check=True)
    return folder


def parse_setting(text: str) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    hints = typing.get_type_hints(TrainConfig)
    overrides = {}
    for pair in filter(None, body.split(",")):
        key, _, value = pair.partition("=")
        kind = hints[key]
        if key == "mrl_dims":
            overrides[key] = tuple(int(d) for d in value.split("/") if d)
        elif kind is bool:
            overrides[key] = value.lower() in ("1", "true", "yes")
        elif kind in (int, float):
            overrides[key] = kind(value)
        else:
            overrides[key] = value
    return name, overrides


def scores(model, folder: Path, task: str, text_format) -> dict:
    metrics = evaluate(model, folder, "test", dims=DIMS, text_format=text_format)
    return {"full": metrics["full"]["ndcg@10"], "64": metrics["64"]["ndcg@10"], "format": metrics["format"]["name"]}


def ours(data: Path, out: Path, folder: Path, task: str, seed: int, overrides: dict) -> dict:
    config = TrainConfig(data=str(data), output=str(out), eval_task=task, seed=seed, progress=False, **overrides)
    summary = train(config)
    return {"pairs_per_s": summary["pairs_per_s"], **scores(summary["model"], folder, task, "auto")}


def peer(folder: Path, task: str, out: Path, seed: int, args) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    triples = beir_to_triples(folder, "train", task, PLAIN)
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = 128
    dataset = Dataset.from_dict({"anchor": [t.query for t in triples], "positive": [t.positive for t in triples]})
    dims = sorted({model.get_embedding_dimension(), 256, 128, 64}, reverse=True)
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=1 / 0.05), dims)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "work"), num_train_epochs=1, per_device_train_batch_size=args.batch_size,
        learning_rate=5e-5, warmup_ratio=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES,
        report_to=[], save_strategy="no", logging_steps=10, seed=seed, dataloader_drop_last=True, use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    pairs = (len(dataset) // args.batch_size) * args.batch_size
    model.save(str(out / "model"))
    return {"pairs_per_s": pairs / seconds, **scores(str(out / "model"), folder, task, resolve("plain", None, task))}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in ("full", "64", "pairs_per_s"):
        values = [r[key] for r in runs]
        out[key] = {"mean": statistics.fmean(values), "sd": statistics.pstdev(values)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="pydoc,manpages")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--settings", nargs="+", default=["defaults"])
    parser.add_argument("--no-peer", action="store_true", help="skip the sentence-transformers trainer")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="fret-bench-"))
    settings = [parse_setting(s) for s in args.settings]
    result = {"bench": "train_vs_st", "seeds": args.seeds, "batch_size": args.batch_size, "sets": {},
              "defaults": {f.name: f.default for f in dataclasses.fields(TrainConfig)
                           if f.default is not dataclasses.MISSING}}
    for set_name in args.sets.split(","):
        ensure_set(set_name)
        folder, task = SETS[set_name]
        data = work / f"{set_name}.parquet"
        write_beir_as_examples(folder, "train", task, data)
        entry = {"train_pairs": len(beir_to_triples(folder, "train", task)),
                 "base": {fmt: scores("all-MiniLM-L6-v2", folder, task, resolve(fmt, None, task))
                          for fmt in ("plain", "gecko")},
                 "settings": {}}
        if not args.no_peer:
            runs = [dict(seed=s, **peer(folder, task, work / f"{set_name}-st-{s}", s, args)) for s in args.seeds]
            entry["sentence_transformers"] = {"runs": runs, **summarise(runs)}
        for name, overrides in settings:
            overrides = {"batch_size": args.batch_size, **overrides}
            runs = [dict(seed=s, **ours(data, work / f"{set_name}-{name}-{s}", folder, task, s, overrides))
                    for s in args.seeds]
            entry["settings"][name] = {"overrides": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in overrides.items()}, "runs": runs, **summarise(runs)}
        result["sets"][set_name] = entry
        _print_table(set_name, entry)
    print(json.dumps(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_vs_st.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _print_table(set_name: str, entry: dict) -> None:
    print(f"\n{set_name}: {entry['train_pairs']} training pairs; nDCG@10 mean ± sd over seeds")
    print(f"{'':34}{'full':>16}{'64 dims':>16}{'pairs/s':>10}")
    for fmt, s in entry["base"].items():
        print(f"{'base model, ' + fmt:34}{s['full']:16.4f}{s['64']:16.4f}")
    rows = ([("sentence-transformers", entry["sentence_transformers"])] if "sentence_transformers" in entry else [])
    rows += [(f"fret {name}", s) for name, s in entry["settings"].items()]
    for label, s in rows:
        print(f"{label:34}{s['full']['mean']:9.4f} ±{s['full']['sd']:.4f}{s['64']['mean']:9.4f} ±{s['64']['sd']:.4f}"
              f"{s['pairs_per_s']['mean']:10.1f}")


if __name__ == "__main__":
    sys.exit(main())
