"""`fret train` settings vs sentence-transformers' trainer (MultipleNegativesRankingLoss +
MatryoshkaLoss, plain text), on two real retrieval sets, several seeds, measured side by side.

    .venv/bin/python bench/train_vs_st.py [--sets pydoc,manpages] [--seeds 0 1 2]
        [--settings defaults "plain-lr5e-5:text_format=plain,lr=5e-5"]

Sets: `pydoc` (samples/pydoc-retrieval) and `manpages` (scripts/make_manpages_retrieval.py,
built here on first use). Each set's train split becomes the training pairs, its test split is
evaluated at the full size and at 64 dimensions. A setting is `name:field=value,...` of
TrainConfig overrides (`defaults` = none), plus `negatives=lo-hi`: one hard negative per pair,
mined by the base model at ranks lo..hi among the training documents (the job's retrieval and
rank-window mining, without an LLM; default `none`). A setting whose name starts with `st` runs
the peer instead: sentence-transformers' trainer, plain text, lr 5e-5 (or its `lr=`) and warmup
10% as its documentation recommends (`st` itself, on the plain pairs, runs unless --no-peer). Every setting
tried is kept with every run, not only the best; results of earlier invocations are merged by
set and setting name. Prints a table per set and one JSON line; writes
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
from typing import Optional

from common import CACHE, RESULTS, ROOT

from pipeline.embedding import resolve_model_path
from pipeline.text_format import PLAIN, resolve
from pipeline.train.data import beir_example_rows, row_to_triple
from pipeline.train.evaluate import evaluate
from pipeline.train.trainer import TrainConfig, train

SETS = {
    "pydoc": (ROOT / "samples" / "pydoc-retrieval", "Given a one-line summary, find the Python documentation it summarises"),
    "manpages": (CACHE / "manpages-retrieval", "Given a one-line summary, find the manual page it summarises"),
}
DIMS = [None, 64]
PEER_LR = 5e-5  # sentence-transformers' documented lr; the issue's peer


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
        if key == "negatives":  # the training data, not the trainer: none or base-model ranks lo-hi
            overrides[key] = value
            continue
        kind = hints[key]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # Optional[X] -> X
        if key in ("mrl_dims", "mrl_weights"):
            number = int if key == "mrl_dims" else float
            overrides[key] = tuple(number(d) for d in value.split("/") if d)
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


def mine_base_negatives(rows: list[dict], window: tuple[int, int], k: int = 1) -> list[dict]:
    """The job's mining without the LLM: the base model retrieves among the training split's own
    documents (the test documents stay unseen), and the negatives are taken from ranks lo..hi of
    what it found, the positive excluded, as `--mining rank_window` does with fused ranks."""
    from pipeline.embedding import Embedder, passage_text
    from pipeline.retrieval import exact_search

    docs = {r["positive"]["id"]: r["positive"] for r in rows}
    doc_ids = sorted(docs)
    embedder = Embedder("all-MiniLM-L6-v2")  # its own length, as the job's embedder
    doc_vectors = embedder.encode([passage_text(docs[d]["title"], docs[d]["text"]) for d in doc_ids])
    hits = exact_search(embedder.encode([r["query"] for r in rows]), doc_vectors, doc_ids, window[1] + 1)
    mined = []
    for row, found in zip(rows, hits):
        others = [h.passage_id for h in found if h.passage_id != row["positive"]["id"]]
        chosen = others[window[0] - 1:window[1]][:k]
        mined.append({**row, "hard_negatives": [dict(docs[d]) for d in chosen]})
    return mined


# mine_hard_negatives' defaults for one negative with a margin: range_max = 0 + 1 x 10 + 1 positive
MHN_NEGATIVES, MHN_RELATIVE_MARGIN, MHN_RANGE_MAX = 1, 0.05, 11


def train_split_folder(folder: Path, task: str, dest: Path) -> Path:
    """The train split as a BEIR folder over its own documents (the test documents stay unseen)."""
    rows = beir_example_rows(folder, "train", task)
    if not (dest / "queries.jsonl").exists():
        from pipeline.train.evaluate import load_beir, write_beir

        _, queries, qrels = load_beir(folder, "train")
        docs = {r["positive"]["id"]: r["positive"] for r in rows}
        write_beir(dest, {d: (docs[d]["title"], docs[d]["text"]) for d in sorted(docs)},
                   {q: queries[q] for q in sorted(qrels)}, {q: dict(sorted(qrels[q].items())) for q in sorted(qrels)},
                   "train")
    return dest


def fret_retrieval_rows(folder: Path, task: str, work: Path) -> list[dict]:
    """The job without an LLM: --scores retrieval --relabel never, the hardest neighbour within
    mine_hard_negatives' window that its 5% relative margin keeps (the same budget: one negative)."""
    from tests.jobkit import read_output

    split = train_split_folder(folder, task, work / "train-split")
    out = work / "fret-retrieval-job"
    if not (out / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "beam_jobs.fret_job", "--input", str(split / "corpus.jsonl"),
                        "--queries", str(split), "--queries_task", task, "--output", str(out), "--overwrite",
                        "--llm_url", "http://127.0.0.1:9", "--scores", "retrieval", "--relabel", "never",
                        "--negative_strategy", "top", "--num_negatives", str(MHN_NEGATIVES),
                        "--negative_relative_margin", str(MHN_RELATIVE_MARGIN), "--negative_range",
                        f"0,{MHN_RANGE_MAX}", "--num_neighbors", "20", "--near_dup_threshold", "0", "--progress",
                        "false"],
                       cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return read_output(out)["examples"]


def mine_hard_negatives_rows(rows: list[dict]) -> list[dict]:
    """sentence-transformers' mine_hard_negatives on the same embedder and texts, relative margin
    0.05, one negative, top sampling, exact search; its negatives mapped back to their documents."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from pipeline.embedding import passage_text

    docs = {r["positive"]["id"]: r["positive"] for r in rows}
    text_of = {d: passage_text(doc["title"], doc["text"]) for d, doc in docs.items()}
    doc_of = {t: d for d, t in text_of.items()}
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    pairs = Dataset.from_dict({"query": [r["query"] for r in rows],
                               "positive": [text_of[r["positive"]["id"]] for r in rows]})
    mined = mine_hard_negatives(pairs, model, corpus=sorted(text_of.values()), relative_margin=MHN_RELATIVE_MARGIN,
                                num_negatives=MHN_NEGATIVES, sampling_strategy="top", output_format="triplet",
                                verbose=False)
    negative = {(m["query"], m["positive"]): m["negative"] for m in mined}
    # a pair it found no negative for has no triplet: its output leaves the pair out, and so does this
    return [{**r, "hard_negatives": [dict(docs[doc_of[negative[key]]])]} for r in rows
            if (key := (r["query"], text_of[r["positive"]["id"]])) in negative]


def training_data(folder: Path, task: str, negatives: str, path: Path) -> Path:
    """`none`: the split's pairs as they are; `lo-hi`: one negative mined at base-model ranks lo..hi;
    `fret-retrieval`: the job's own mining without an LLM (fret_retrieval_rows); `mhn`:
    sentence-transformers' mine_hard_negatives at the same settings (mine_hard_negatives_rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        rows = beir_example_rows(folder, "train", task)
        if negatives == "fret-retrieval":
            rows = fret_retrieval_rows(folder, task, path.parent / f"{path.stem}-work")
        elif negatives == "mhn":
            rows = mine_hard_negatives_rows(rows)
        elif negatives != "none":
            lo, hi = (int(x) for x in negatives.split("-"))
            rows = mine_base_negatives(rows, (lo, hi))
        if negatives == "fret-retrieval":
            pq.write_table(pa.Table.from_pylist([{k: r[k] for k in ("task", "query", "positive", "hard_negatives")}
                                                 for r in rows]), path)
        else:
            pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def ours(data: Path, out: Path, folder: Path, task: str, seed: int, overrides: dict,
         checkout: Optional[Path] = None) -> dict:
    """fret train; with `checkout`, that checkout's trainer (an earlier commit) in a subprocess,
    so that before and after run side by side on the same data and settings."""
    settings = dict(data=str(data), output=str(out), eval_task=task, seed=seed, progress=False, **overrides)
    if checkout is None:
        summary = train(TrainConfig(**settings))
    else:
        code = ("import json, sys; from pipeline.train.trainer import TrainConfig, train; "
                "print('SUMMARY' + json.dumps(train(TrainConfig(**json.loads(sys.argv[1])))))")
        done = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], cwd=checkout, check=True,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(checkout)})
        summary = json.loads(done.stdout.rsplit("SUMMARY", 1)[1])
    return {"pairs_per_s": summary["pairs_per_s"], **scores(summary["model"], folder, task, "auto")}


def peer(data: Path, folder: Path, task: str, out: Path, seed: int, args, lr: float = PEER_LR) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    import pyarrow.parquet as pq

    triples = [row_to_triple(row, text_format=PLAIN) for row in pq.read_table(data).to_pylist()]
    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    # the peer at its defaults: the model's own max_seq_length (256 for all-MiniLM-L6-v2)
    columns = {"anchor": [t.query for t in triples], "positive": [t.positive for t in triples]}
    if all(t.negatives for t in triples):
        columns["negative"] = [t.negatives[0] for t in triples]
    dataset = Dataset.from_dict(columns)
    dims = sorted({model.get_embedding_dimension(), 256, 128, 64}, reverse=True)
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=1 / 0.05), dims)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "work"), num_train_epochs=1, per_device_train_batch_size=args.batch_size,
        learning_rate=lr, warmup_ratio=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES,
        report_to=[], save_strategy="no", logging_steps=10, seed=seed, dataloader_drop_last=True, use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    pairs = (len(dataset) // args.batch_size) * args.batch_size
    model.save(str(out / "model"))
    return {"pairs_per_s": pairs / seconds, **scores(str(out / "model"), folder, task, resolve("plain", None, task))}


def commit() -> str:
    """The code a run measured (dirty: uncommitted changes too). Stored rows once moved between
    invocations with the same seed and data: the code had changed, not the machine's load
    (bench/determinism.py: the same weights bit for bit, quiet and beside a CPU hog)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipeline", "beam_jobs", "bench"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return f"{head}{'-dirty' if dirty else ''}"


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in ("full", "64", "pairs_per_s"):
        values = [r[key] for r in runs]
        out[key] = {"mean": statistics.fmean(values), "sd": statistics.pstdev(values)}
    return out


def merged(path: Path, result: dict) -> dict:
    """The new runs over the stored ones, by set, setting and seed: a seed run again replaces its
    old run, other seeds are kept, and each setting's summary is taken over all its runs."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return result
    if old.get("bench") != result["bench"] or old.get("batch_size") != result["batch_size"]:
        return result
    for set_name, entry in result["sets"].items():
        kept = old.setdefault("sets", {}).setdefault(set_name, {"settings": {}})
        for key in ("train_pairs", "base"):
            if key in entry:
                kept[key] = entry[key]
        for name, setting in entry["settings"].items():
            runs = {r["seed"]: r for r in kept["settings"].get(name, {}).get("runs", [])}
            runs.update({r["seed"]: r for r in setting["runs"]})
            runs = [runs[seed] for seed in sorted(runs)]
            kept["settings"][name] = {"overrides": setting["overrides"], "runs": runs, **summarise(runs)}
    old["defaults"] = result["defaults"]
    old["seeds"] = sorted({r["seed"] for e in old["sets"].values() for st in e["settings"].values()
                           for r in st["runs"]})
    return old


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="pydoc,manpages")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--settings", nargs="+", default=["defaults"])
    parser.add_argument("--no-peer", action="store_true", help="skip the sentence-transformers trainer")
    parser.add_argument("--no-base", action="store_true", help="skip evaluating the base model (kept from before)")
    parser.add_argument("--show", action="store_true", help="print the stored results' tables and stop")
    parser.add_argument("--before", type=Path, default=None,
                        help="a checkout of an earlier commit (git worktree add DIR REV): settings named before* "
                             "train with its trainer; every setting then runs seed by seed, side by side")
    args = parser.parse_args(argv)
    if args.show:
        for set_name, entry in json.loads((RESULTS / "train_vs_st.json").read_text())["sets"].items():
            _print_table(set_name, entry)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="fret-bench-"))
    settings = [parse_setting(s) for s in args.settings]
    result = {"bench": "train_vs_st", "seeds": args.seeds, "batch_size": args.batch_size, "sets": {},
              "defaults": {f.name: f.default for f in dataclasses.fields(TrainConfig)
                           if f.default is not dataclasses.MISSING}}
    if not args.no_peer:
        settings.insert(0, ("st", {}))
    for set_name in args.sets.split(","):
        ensure_set(set_name)
        folder, task = SETS[set_name]
        entry = {"train_pairs": len(beir_example_rows(folder, "train", task)), "settings": {}}
        if not args.no_base:
            entry["base"] = {fmt: scores("all-MiniLM-L6-v2", folder, task, resolve(fmt, None, task))
                             for fmt in ("plain", "gecko")}
        # seed-major: each seed's settings run one after another, under the same load, and a sweep
        # that stops early keeps whole seeds of every setting
        order = [(s, [seed]) for seed in args.seeds for s in settings]
        for (name, given), seeds in order:
            overrides = dict(given)
            negatives = overrides.pop("negatives", "none")
            data = training_data(folder, task, negatives, work / f"{set_name}-negatives-{negatives}.parquet")
            if name.startswith("st"):  # the sentence-transformers trainer
                lr = overrides.pop("lr", PEER_LR)  # the one peer setting a name may change
                if overrides:
                    raise SystemExit(f"{name}: the peer takes only negatives= and lr=, not {sorted(overrides)}")
                runs = [dict(seed=s, commit=commit(), **peer(data, folder, task, work / f"{set_name}-{name}-{s}", s,
                                                             args, lr))
                        for s in seeds]
                recorded = {"negatives": negatives, **({"lr": lr} if lr != PEER_LR else {})}
            else:
                recorded = {"batch_size": args.batch_size, **overrides}
                checkout = args.before if name.startswith("before") else None
                runs = [dict(seed=s, commit=commit(), **ours(data, work / f"{set_name}-{name}-{s}", folder, task, s,
                                                             recorded, checkout)) for s in seeds]
                recorded = {"negatives": negatives, **recorded}
            kept = entry["settings"].get(name, {}).get("runs", [])
            runs = kept + runs
            entry["settings"][name] = {"overrides": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in recorded.items()}, "runs": runs, **summarise(runs)}
            print(f"{set_name} {name}: {json.dumps(entry['settings'][name]['runs'])}", flush=True)
            result["sets"][set_name] = entry
            save(result)  # after every setting: a long sweep that stops keeps what it measured
        _print_table(set_name, entry)
    print(json.dumps(result))
    return 0


def save(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "train_vs_st.json"
    stored = merged(path, result)  # merged() reads result, never changes it
    path.write_text(json.dumps(stored, indent=2) + "\n")


def _print_table(set_name: str, entry: dict) -> None:
    print(f"\n{set_name}: {entry['train_pairs']} training pairs; nDCG@10 mean ± sd over seeds (n)")
    print(f"{'':34}{'full':>16}{'64 dims':>16}{'pairs/s':>10}")
    for fmt, s in entry.get("base", {}).items():
        print(f"{'base model, ' + fmt:34}{s['full']:16.4f}{s['64']:16.4f}")
    rows = [(name if name.startswith("st") else f"fret {name}", s) for name, s in entry["settings"].items()]
    for label, s in rows:
        print(f"{label:34}{s['full']['mean']:9.4f} ±{s['full']['sd']:.4f}{s['64']['mean']:9.4f} ±{s['64']['sd']:.4f}"
              f"{s['pairs_per_s']['mean']:10.1f}  ({len(s['runs'])})")


if __name__ == "__main__":
    sys.exit(main())
