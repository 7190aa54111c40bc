"""A Hugging Face style dataset card (README.md with YAML metadata) and its plots, as bytes.

The caller (beam_jobs) writes them next to the shards on any filesystem."""

from __future__ import annotations

import io
import json
import warnings
from typing import Optional

import yaml

from pipeline.audit import describe as describe_audit
from pipeline.inspection import DatasetStats, token_bill

PLOTS = ("scores.png", "query_length.png", "task_mix.png", "negative_ranks.png")


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def plots(stats: DatasetStats) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}

    def save(fig, name):
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # LLM-written task names may use scripts the default font lacks
            warnings.filterwarnings("ignore", message="Glyph .* missing")
            fig.tight_layout()
            fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        out[name] = buffer.getvalue()

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (name, label) in zip(axes, (("ql", "QL: log P(query | positive)"), ("rc", "RC: expected relevance"),
                                       ("fused", "fused RRF score"))):
        ax.hist(stats.values[name], bins=40, color="#4477aa")
        ax.set(title=f"positive {name.upper()}", xlabel=label, ylabel="examples")
    fig.suptitle(f"relabel rate {stats.relabel_rate:.1%}")
    save(fig, "scores.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    words = stats.values["query_words"]
    ax.hist(words, bins=range(0, int(max(words, default=1)) + 2), color="#228833")
    ax.set(title="query length", xlabel="words", ylabel="queries")
    save(fig, "query_length.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    top = stats.tasks.most_common(15)
    ax.barh([t[:60] + ("…" if len(t) > 60 else "") for t, _ in reversed(top)], [n for _, n in reversed(top)],
            color="#aa3377")
    ax.set(title=f"task mix (top {len(top)} of {len(stats.tasks)})", xlabel="examples")
    save(fig, "task_mix.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, counter, label in ((axes[0], stats.negative_fused_ranks, "fused rank"),
                               (axes[1], stats.negative_retrieval_ranks, "retrieval rank (0: the seed)")):
        ranks = sorted(counter)
        ax.bar(ranks, [counter[r] for r in ranks], color="#ccbb44")
        ax.set(title=f"hard negatives by {label}", xlabel=label, ylabel="negatives")
    save(fig, "negative_ranks.png")
    return out


def dataset_card(manifest: dict, stats: DatasetStats, row_counts: dict[str, int],
                 pretty_name: Optional[str] = None) -> str:
    """README.md: YAML metadata in the Hugging Face convention, then the card."""
    config = json.loads(manifest.get("config") or "{}")
    meta = {
        "pretty_name": pretty_name or f"FRet distilled retrieval data ({manifest.get('run_id')})",
        "task_categories": ["sentence-similarity", "text-retrieval"],
        "tags": ["fret-distill", "gecko", "synthetic", "hard-negatives", "embeddings"],
        "size_categories": [_size_category(row_counts.get("examples", 0))],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "examples/*.parquet"}]},
                    {"config_name": "dead_letters", "data_files": [{"split": "train",
                                                                    "path": "dead_letters/*.parquet"}]}],
    }
    counts = manifest.get("counts", {})
    scores = manifest.get("scores", {})
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# {meta['pretty_name']}", "",
             "Query-passage training examples distilled from an LLM with "
             "fret-distill, following Gecko's FRet recipe: "
             "the LLM writes a task and a query for each seed passage, an embedder retrieves candidates, and the "
             "LLM reranks them by query likelihood (QL) and relevance classification (RC), fused by reciprocal "
             "rank. The top passage becomes the positive (it may differ from the seed: *relabelled*), and hard "
             "negatives are mined from the ranking.", "",
             "## Contents", "",
             "| part | rows |", "|---|---|",
             *(f"| `{part}/` | {n} |" for part, n in row_counts.items()), "",
             f"- Accounting: {manifest.get('accounting') or ''}",
             f"- Relabel rate: {stats.relabel_rate:.1%} ({stats.relabelled} of {stats.rows} examples)"
             + ("; `--relabel never`: every seed or given positive was kept, the scores only mined the negatives"
                if config.get("relabel") == "never" else "; `--relabel gecko`: the top fused candidate is the positive"),
             f"- False-negative audit (README: False negatives): {describe_audit(stats.audit)}",
             f"- Distinct tasks: {len(stats.tasks)}", "",
             "## Loading", "",
             "```python", "import datasets",
             'ds = datasets.load_dataset("parquet", data_files="examples/*.parquet", split="train")', "```", "",
             "Or `fret export . --format sentence-transformers|flagembedding|beir --output DIR`.", "",
             "## Plots", "",
             "![positive scores](scores.png)", "", "![query length](query_length.png)", "",
             "![task mix](task_mix.png)", "", "![hard negative ranks](negative_ranks.png)", "",
             "## Score summaries (positives)", "",
             "| score | count | mean | std | min | p50 | max |", "|---|---|---|---|---|---|---|"]
    for name, s in scores.items():
        cells = [s.get(k) for k in ("count", "mean", "std", "min", "p50", "max")]
        lines.append(f"| {name} | " + " | ".join("" if c is None else f"{c:.4g}" if isinstance(c, float) else str(c)
                                                 for c in cells) + " |")
    lines += ["", "## Provenance", "",
              f"- LLM: `{manifest.get('llm_model')}`", f"- Embedder: `{manifest.get('embedder')}`",
              f"- Run: `{manifest.get('run_id')}`, started {manifest.get('started_at')}, finished "
              f"{manifest.get('finished_at')}" + (" (resumed)" if manifest.get("resumed") else ""),
              "- Prompts (sha256, first 16 hex digits):", "",
              "| prompt | hash |", "|---|---|",
              *(f"| {name} | `{h}` |" for name, h in sorted((manifest.get("prompts") or {}).items())), "",
              "### LLM tokens per written example", "",
              "Prompt tokens sent, prompt tokens the server computed (sent minus its prefix-cache hits) and "
              "completion tokens, by request kind; work replayed from the journal costs none.", "",
              "| kind | requests | prompt sent | prompt computed | computed share | completion |",
              "|---|---|---|---|---|---|",
              *(f"| {r['kind']} | {r['requests']} | {r['prompt_sent']:.1f} | {r['prompt_computed']:.1f} | "
                f"{'' if r['computed_share'] is None else format(r['computed_share'], '.0%')}"
                f"{'' if r['cache_reported'] else ' (no cache counts)'} | {r['completion']:.1f} |"
                for r in token_bill(manifest)), "",
              "### Counts per stage", "", "| stage | count |", "|---|---|",
              *(f"| {k} | {v} |" for k, v in counts.items()), "",
              "### Parameters", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)
