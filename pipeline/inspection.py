"""What is in a FRet dataset: streaming statistics and a readable rendering of example rows.

Pure Python over row dicts (as pyarrow's to_pylist gives them); beam_jobs/outputs.py reads them."""

from __future__ import annotations

import dataclasses
import math
import random
import textwrap
from collections import Counter
from typing import Iterable

from pipeline.accounting import reservoir_add
from pipeline.audit import audit_example
from pipeline.audit import describe as describe_audit

SAMPLE = 20_000  # values kept per distribution (reservoir): memory stays flat on any dataset size
STATS_COLUMNS = ["task", "query", "positive_changed", "positive_ql", "positive_rc", "positive_fused",
                 "hard_negatives", "positive", "known_positive_ids", "extra_positives", "never_negative"]


@dataclasses.dataclass
class DatasetStats:
    rows: int = 0
    relabelled: int = 0
    tasks: Counter = dataclasses.field(default_factory=Counter)
    negative_fused_ranks: Counter = dataclasses.field(default_factory=Counter)
    negative_retrieval_ranks: Counter = dataclasses.field(default_factory=Counter)
    negatives_per_example: Counter = dataclasses.field(default_factory=Counter)
    values: dict = dataclasses.field(default_factory=lambda: {k: [] for k in ("ql", "rc", "fused", "query_words")})
    audit: Counter = dataclasses.field(default_factory=Counter)  # pipeline.audit, from the rows themselves
    _rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(0), repr=False)

    def add(self, row: dict) -> None:
        self.rows += 1
        self.relabelled += int(bool(row["positive_changed"]))
        self.tasks[row["task"]] += 1
        negatives = row.get("hard_negatives") or []
        self.audit.update(audit_example(row))
        self.negatives_per_example[len(negatives)] += 1
        for n in negatives:
            self.negative_fused_ranks[n["fused_rank"]] += 1
            self.negative_retrieval_ranks[n["retrieval_rank"]] += 1
        for name, value in (("ql", row["positive_ql"]), ("rc", row["positive_rc"]), ("fused", row["positive_fused"]),
                            ("query_words", len(row["query"].split()))):
            if math.isfinite(float(value)):  # QL or RC is NaN when the run's --scores left it out
                reservoir_add(self.values[name], float(value), self.rows, SAMPLE, self._rng)

    @property
    def relabel_rate(self) -> float:
        return self.relabelled / self.rows if self.rows else 0.0


def collect(rows: Iterable[dict]) -> DatasetStats:
    stats = DatasetStats()
    for row in rows:
        stats.add(row)
    return stats


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_example(row: dict, width: int = 100) -> str:
    """One example as a human reads it: task, query, positive, negatives, scores, relabelled or not."""
    pos = row["positive"]
    lines = [
        f"example {row['example_id']}  (query {row['query_id']})",
        f"  task      {_clip(row['task'], width)}",
        f"  query     {_clip(row['query'], width)}",
        f"  positive  [{pos['id']}] {_clip((pos.get('title') or '') + ' | ' + pos['text'], width)}",
        f"            QL {row['positive_ql']:.3f}  RC {row['positive_rc']:.3f}  fused {row['positive_fused']:.3f}"
        + ("   RELABELLED from seed " + row["seed_passage_id"] if row["positive_changed"] else "   (the seed)"),
    ]
    for x in row.get("extra_positives") or []:
        lines.append(f"  extra positive [{x['id']}] fused rank {x['fused_rank']}, score {x['score']:.3f}: "
                     f"{_clip(x['text'], width - 40)}")
    for n in row.get("hard_negatives") or []:
        lines.append(f"  negative  [{n['id']}] fused rank {n['fused_rank']}, retrieval rank {n['retrieval_rank']}, "
                     f"QL {n['ql']:.3f} RC {n['rc']:.3f}: {_clip(n['text'], width - 40)}")
    return "\n".join(lines)


KIND_ORDER = ("generate", "ql", "rc", "rate")


def token_bill(manifest: dict) -> list[dict]:
    """Tokens per written example by request kind (from the manifest's `tokens`), plus a total row.
    Empty for manifests written before tokens were counted."""
    tokens, written = manifest.get("tokens") or {}, manifest.get("written") or 0
    per = written or 1
    kinds = sorted(tokens, key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER), k))
    rows = []
    for kind in kinds + (["total"] if tokens else []):
        usages = [tokens[kind]] if kind != "total" else list(tokens.values())
        sent, computed, completion, requests, reported = (sum(u.get(f, 0) for u in usages) for f in (
            "prompt_sent", "prompt_computed", "completion", "requests", "cache_reported"))
        rows.append({"kind": kind, "requests": requests, "prompt_sent": sent / per, "prompt_computed": computed / per,
                     "completion": completion / per, "computed_share": computed / sent if sent else None,
                     "cache_reported": reported == requests})
    return rows


def format_token_bill(manifest: dict) -> list[str]:
    rows = token_bill(manifest)
    if not rows:
        return ["  LLM tokens: not recorded in this manifest"]
    lines = [f"  LLM tokens per written example ({manifest.get('written') or 0} examples; journal replays cost none):",
             f"    {'kind':<9}{'requests':>10}{'prompt sent':>13}{'computed':>11}{'share':>7}{'completion':>12}"]
    for r in rows:
        share = "" if r["computed_share"] is None else f"{r['computed_share']:.0%}"
        lines.append(f"    {r['kind']:<9}{r['requests']:>10}{r['prompt_sent']:>13.1f}{r['prompt_computed']:>11.1f}"
                     f"{share:>7}{r['completion']:>12.1f}" + ("" if r["cache_reported"] else "  (no cache counts: "
                                                               "computed = sent)"))
    return lines


def outcome_reasons(manifest: dict) -> dict[str, list[tuple[str, int]]]:
    """{"filtered" | "dead_lettered": [(reason, count), ...] most frequent first} from the manifest."""
    reasons: dict[str, list[tuple[str, int]]] = {}
    for key, count in sorted(manifest.get("counts", {}).items(), key=lambda kv: (-kv[1], kv[0])):
        if key.startswith("outcome:"):
            _, status, reason = key.split(":", 2)
            reasons.setdefault(status, []).append((reason, count))
    return reasons


def format_summary(output: str, manifest: dict, shard_counts: dict, row_counts: dict, schema_text: str,
                   stats: DatasetStats, examples: list[dict], top_tasks: int = 10) -> str:
    parts = [f"{output}",
             f"  run {manifest.get('run_id')}  model {manifest.get('llm_model')}  embedder {manifest.get('embedder')}",
             f"  {manifest.get('accounting') or ''}".rstrip()]
    for part, shards in shard_counts.items():
        parts.append(f"  {part:<13} {row_counts[part]:>9} rows in {shards} shard(s)")
    parts.append(f"  relabel rate  {stats.relabel_rate:.1%} ({stats.relabelled} of {stats.rows})")
    parts.append(f"  false-negative audit  {describe_audit(stats.audit)}")
    for status, reasons in outcome_reasons(manifest).items():
        parts.append(f"  {status.replace('_', '-')} by reason:")
        parts.extend(f"    {n:>7}  {reason}" for reason, n in reasons)
    parts.extend(format_token_bill(manifest))
    parts.append("  task mix:")
    for task, n in stats.tasks.most_common(top_tasks):
        parts.append(f"    {n:>7}  {_clip(task, 90)}")
    if len(stats.tasks) > top_tasks:
        parts.append(f"    ... {len(stats.tasks) - top_tasks} more tasks")
    parts.append("  examples schema:")
    parts.extend("    " + line for line in schema_text.splitlines())
    for row in examples:
        parts.append("")
        parts.append(textwrap.indent(render_example(row), "  "))
    return "\n".join(parts)
