"""The false-negative audit of a written example: which of its negatives are a known positive of
its query, a chunk of one, or a duplicate of one. It reads the row alone (its positive, its
known positive ids and text keys, its extra positives), not the miner's decision, so a rule the
miner failed to apply shows here; the manifest sums it over the run and it must be 0."""

from __future__ import annotations

import collections

from pipeline.given_queries import is_text_key, text_key
from pipeline.mining import document_of

WRITTEN_RULES = ("known_positive", "chunk_of_a_positive", "duplicate_of_a_positive")


def audit_example(example) -> collections.Counter:
    """Counts for one TrainingExample (or a row dict): negatives_written, written_negative_<rule>
    for each negative that breaks a rule, never_negative_<rule> (neighbours the miner kept out),
    extra_positives."""
    field = example.get if isinstance(example, dict) else lambda name: getattr(example, name, None)

    def get(record, name):
        return record[name] if isinstance(record, dict) else getattr(record, name)

    positive, negatives = field("positive"), field("hard_negatives") or []
    known = set(field("known_positive_ids") or [])
    extras = field("extra_positives") or []
    ids = {get(positive, "id"), *(get(e, "id") for e in extras), *(k for k in known if not is_text_key(k))}
    documents = {document_of(i) for i in ids}
    texts = {text_key(get(positive, "text")), *(text_key(get(e, "text")) for e in extras),
             *(k for k in known if is_text_key(k))}
    counts = collections.Counter(negatives_written=len(negatives), extra_positives=len(extras))
    for negative in negatives:
        key, pid = text_key(get(negative, "text")), get(negative, "id")
        if pid in known or key in known:
            counts["written_negative_known_positive"] += 1
        elif document_of(pid) in documents:
            counts["written_negative_chunk_of_a_positive"] += 1
        elif key in texts:
            counts["written_negative_duplicate_of_a_positive"] += 1
    kept_out = field("never_negative") or {}
    if not isinstance(kept_out, dict):  # a map column, as Parquet reads it back: key/value entries
        kept_out = {e["key"]: e["value"] for e in kept_out}
    for rule, n in kept_out.items():
        counts[f"never_negative_{rule}"] += n
    return counts


def false_negative_share(counts: dict) -> float | None:
    """The share of written negatives that break a rule (None when no negative was written)."""
    written = counts.get("negatives_written", 0)
    if not written:
        return None
    return sum(counts.get(f"written_negative_{rule}", 0) for rule in WRITTEN_RULES) / written


def describe(counts: dict) -> str:
    """One line for `fret inspect` and the dataset card."""
    share = false_negative_share(counts)
    broken = ", ".join(f"{rule} {counts[f'written_negative_{rule}']}" for rule in WRITTEN_RULES
                       if counts.get(f"written_negative_{rule}"))
    kept_out = ", ".join(f"{name.removeprefix('never_negative_')} {n}" for name, n in sorted(counts.items())
                         if name.startswith("never_negative_") and n)
    return (f"{counts.get('negatives_written', 0)} negatives written, "
            + ("none" if share is None else f"{share:.2%}") + " of them a known positive, a chunk or a duplicate of one"
            + (f" ({broken})" if broken else "") + f"; kept out by rule: {kept_out or 'none'}; "
            f"extra positives: {counts.get('extra_positives', 0)}")
