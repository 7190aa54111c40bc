"""`fret ablate`: did relabelling pay off on my data? Gecko's Figure 4 as a command.

From one run's examples (with their scored candidates) it derives eight training sets, the seed
positive or the LLM's positive crossed with no hard negative, the lowest-ranked candidate,
a random one, or one from a fused-rank window; it trains each with the same seeds, base model
and budget, and evaluates each on a BEIR folder next to the base model (zero-shot).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Iterable, Iterator, Optional

from pipeline.mining import MiningConfig, mine_negatives
from schemas import CandidateScore
from schemas.arrow import from_row

POSITIVES = ("seed", "llm")
NEGATIVES = ("none", "lowest", "random", "rank_window")
# Model names of LLMs without real weights: their relabelling is noise, and the table says so.
RANDOM_LLMS = {"tiny-llm": "fret demo's random-weight tiny Llama", "stub-llm": "the scripted test stub"}


@dataclasses.dataclass(frozen=True)
class Variant:
    positive: str  # seed | llm
    negatives: str  # none | lowest | random | rank_window

    @property
    def name(self) -> str:
        return f"{self.positive}+{self.negatives}"


VARIANTS = tuple(Variant(p, n) for p in POSITIVES for n in NEGATIVES)


def _ref(c: CandidateScore) -> dict:
    return {"id": c.passage_id, "title": c.title, "text": c.text}


def variant_rows(rows: Iterable[dict], variant: Variant, window: tuple[int, int] = (10, 20),
                 mining_seed: int = 0) -> Iterator[dict]:
    """Rows in the example layout (task, query, positive, hard_negatives) for one variant."""
    config = MiningConfig(strategy="lowest" if variant.negatives == "none" else variant.negatives,
                          num_negatives=0 if variant.negatives == "none" else 1, window=window, seed=mining_seed)
    for row in rows:
        if not row.get("candidates"):
            raise ValueError(f"example {row.get('example_id')} has no candidates: fret ablate needs a run "
                             "written with --keep-candidates true (the default)")
        candidates = [c if isinstance(c, CandidateScore) else from_row(CandidateScore, c) for c in row["candidates"]]
        seed = next((c for c in candidates if c.is_seed), None)
        if seed is None:
            raise ValueError(f"example {row.get('example_id')}: no candidate is the seed passage")
        positive = seed if variant.positive == "seed" else min(candidates, key=lambda c: c.fused_rank)
        negatives = mine_negatives(candidates, positive, row["query_id"], config)
        yield {"task": row["task"], "query": row["query"], "positive": _ref(positive),
               "hard_negatives": [_ref(n) for n in negatives]}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def markdown_table(result: dict) -> str:
    """Rows: positive; columns: negatives; cells nDCG@10 mean ± sd over seeds; zero-shot below."""
    lines = [f"nDCG@10 on {result['beir']} ({result['split']}), mean ± sd over seeds {result['seeds']}; "
             f"{result['examples']} examples from {result['run']}; base model {result['base_model']}, "
             f"{result['steps']} training steps per variant", ""]
    if result.get("llm_warning"):
        lines += [f"**The LLM of this run was {result['llm_warning']}: its positives and negatives carry no "
                  f"signal, so differences between the rows are noise.**", ""]
    lines.append("| positive | " + " | ".join(f"{n} negative" if n != "none" else "no negative" for n in NEGATIVES)
                 + " |")
    lines.append("|---|" + "---|" * len(NEGATIVES))
    for p in POSITIVES:
        cells = []
        for n in NEGATIVES:
            s = result["variants"][Variant(p, n).name]["ndcg@10"]
            cells.append(f"{s['mean']:.4f} ± {s['sd']:.4f}")
        lines.append(f"| {'seed passage' if p == 'seed' else 'LLM (relabelled)'} | " + " | ".join(cells) + " |")
    lines += ["", f"zero-shot (base model, no training): {result['zero_shot']:.4f}",
              f"relabelled positives (LLM positive differs from the seed): {result['relabel_rate']:.1%}"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for i, p in enumerate(POSITIVES):
        stats = [result["variants"][Variant(p, n).name]["ndcg@10"] for n in NEGATIVES]
        xs = [j + (i - 0.5) * width for j in range(len(NEGATIVES))]
        ax.bar(xs, [s["mean"] for s in stats], width, yerr=[s["sd"] for s in stats], capsize=3,
               label="seed positive" if p == "seed" else "LLM positive")
    ax.axhline(result["zero_shot"], color="grey", linestyle="--", label="zero-shot")
    lows = [s["ndcg@10"]["mean"] - s["ndcg@10"]["sd"] for s in result["variants"].values()] + [result["zero_shot"]]
    highs = [s["ndcg@10"]["mean"] + s["ndcg@10"]["sd"] for s in result["variants"].values()] + [result["zero_shot"]]
    pad = max(0.01, (max(highs) - min(lows)) * 0.5)
    ax.set_ylim(max(0.0, min(lows) - pad), min(1.0, max(highs) + pad))  # differences, not the distance from 0
    ax.set_xticks(range(len(NEGATIVES)), ["no negative", "lowest", "random", "rank window"])
    ax.set_ylabel("nDCG@10")
    title = "fret ablate" + (" (random LLM: noise)" if result.get("llm_warning") else "")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def llm_warning(llm_model: Optional[str]) -> Optional[str]:
    return RANDOM_LLMS.get((llm_model or "").rsplit("/", 1)[-1])


def write_outputs(result: dict, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "ablation.md", "json": folder / "ablation.json", "png": folder / "ablation.png"}
    paths["markdown"].write_text(markdown_table(result))
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    plot(result, paths["png"])
    return {k: str(v) for k, v in paths.items()}


def read_rows(run: str, files=None) -> Iterator[dict]:
    """The run's example rows, candidates included, one Parquet batch in memory at a time."""
    import pyarrow.parquet as pq

    from pipeline.train.data import LocalFiles, shard_files

    files = files or LocalFiles()
    for name in shard_files(run, files):
        with files.open(name) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=512):
                yield from batch.to_pylist()


def run_manifest(run: str, files=None) -> dict:
    from pipeline.train.data import LocalFiles

    files = files or LocalFiles()
    try:
        with files.open(run.rstrip("/") + "/manifest.json") as f:
            return json.loads(f.read())
    except OSError:  # Beam's BeamIOError is one too: a run without a manifest still ablates
        return {}


def ablate(run: str, beir: str, output: str, seeds: tuple[int, ...] = (0, 1, 2), split: str = "test",
           base_model: str = "all-MiniLM-L6-v2", window: tuple[int, int] = (10, 20), files=None,
           **train_overrides) -> dict:
    """Train and evaluate every variant; write ablation.md/.json/.png under `output`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.train.evaluate import evaluate
    from pipeline.train.trainer import TrainConfig, train

    out = Path(output)
    (out / "data").mkdir(parents=True, exist_ok=True)
    examples, relabelled = 0, 0
    for row in read_rows(run, files):
        examples += 1
        relabelled += bool(row.get("positive_changed"))
    if examples == 0:
        raise ValueError(f"no examples in {run}")
    manifest = run_manifest(run, files)
    # One budget in optimizer steps for every variant: a variant whose positives repeat makes
    # fewer full batches per pass, so "one epoch each" would train it less.
    batch_size, epochs = train_overrides.get("batch_size", 32), train_overrides.pop("epochs", 1)
    steps = train_overrides.pop("max_steps", None) or max(1, examples // batch_size) * epochs
    train_overrides.update(max_steps=steps, epochs=steps)  # passes repeat until the steps are done
    result = {"run": run, "beir": beir, "split": split, "seeds": list(seeds), "base_model": base_model,
              "examples": examples, "relabel_rate": relabelled / examples, "window": list(window),
              "llm_model": manifest.get("llm_model"), "llm_warning": llm_warning(manifest.get("llm_model")),
              "steps": steps,
              "train": {k: list(v) if isinstance(v, tuple) else v for k, v in train_overrides.items()},
              "zero_shot": evaluate(base_model, beir, split)["full"]["ndcg@10"], "variants": {}}
    for variant in VARIANTS:
        data = out / "data" / f"{variant.name}.parquet"
        pq.write_table(pa.Table.from_pylist(list(variant_rows(read_rows(run, files), variant, window))), data)
        runs = []
        for seed in seeds:
            config = TrainConfig(data=str(data), output=str(out / "runs" / variant.name / f"seed-{seed}"), overwrite=True,
                                 base_model=base_model, seed=seed, hard_negatives=variant.negatives != "none",
                                 progress=False, **train_overrides)
            model = train(config)["model"]
            runs.append({"seed": seed, "ndcg@10": evaluate(model, beir, split)["full"]["ndcg@10"]})
        result["variants"][variant.name] = {"runs": runs, "ndcg@10": spread([r["ndcg@10"] for r in runs])}
    result["files"] = write_outputs(result, out)
    return result
