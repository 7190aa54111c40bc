"""Training examples -> the formats other trainers read. Row in, record(s) out; no I/O here.

- sentence-transformers: columns anchor, positive, negative_1..k (the order its losses expect) and
  `label`: the teacher's scores [positive, negative_1..k], which MarginMSELoss (it takes the
  differences itself) and DistillKLDivLoss read, and MultipleNegativesRankingLoss ignores
- FlagEmbedding (BGE) fine-tuning JSONL: query, pos, neg, pos_scores, neg_scores, prompt
- BEIR: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (fields, never formatted)

The first two write texts in a text format (pipeline/text_format.py): plain by default, or
Gecko's, for a trainer that should see what `fret train --text-format gecko` sees.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional

from pipeline.text_format import PLAIN, TextFormat
from schemas.exports import LABEL_COLUMN, BeirDoc, BeirQuery, FlagEmbeddingRow, sentence_transformers_columns

FORMATS = ("sentence-transformers", "flagembedding", "beir")
# The teacher's score of a (query, passage) pair, as the job kept it: the fused RRF score that
# ranked the candidates, QL's log P(query | passage), RC's expected relevance (in [0, 2]: labels 0, 1, 2), or a
# served cross-encoder's score (a run with --scores ce).
TEACHER_SCORES = ("fused", "ql", "rc", "ce")


class MissingScore(ValueError):
    """The run did not compute the teacher score asked for (--scores left it out)."""


def teacher_scores(row: dict, negatives: list[dict], score: str) -> list[float]:
    """[score(query, positive), score(query, negative_1), ...] for the negatives given."""
    if score not in TEACHER_SCORES:
        raise ValueError(f"unknown teacher score {score!r}; one of {TEACHER_SCORES}")
    values = [row.get(f"positive_{score}")] + [n.get(score) for n in negatives]
    if any(v is None or not math.isfinite(v) for v in values):
        raise MissingScore(f"example {row.get('example_id')} has no {score} score: the run did not compute it "
                           "(its --scores); pick another --teacher-score")
    return [float(v) for v in values]


def _document(ref: dict, text_format: TextFormat) -> str:
    return text_format.document(ref.get("title") or "", ref["text"])


def sentence_transformers_row(row: dict, num_negatives: int, text_format: TextFormat = PLAIN,
                              teacher_score: Optional[str] = "fused") -> Optional[dict]:
    """None when the example has fewer hard negatives than asked: every row needs every column.
    With a teacher score, the row's `label` holds it for the positive and each negative kept."""
    negatives = (row.get("hard_negatives") or [])[:num_negatives]
    if len(negatives) < num_negatives:
        return None
    texts = [text_format.query(row["task"], row["query"]), _document(row["positive"], text_format)]
    texts += [_document(n, text_format) for n in negatives]
    converted = dict(zip(sentence_transformers_columns(num_negatives), texts))
    if teacher_score:
        converted[LABEL_COLUMN] = teacher_scores(row, negatives, teacher_score)
    return converted


def flagembedding_row(row: dict, text_format: TextFormat = PLAIN, teacher_score: str = "fused") -> FlagEmbeddingRow:
    """`pos` is the positive, then the extra positives (FlagEmbedding samples one per step)."""
    negatives, extras = row.get("hard_negatives") or [], row.get("extra_positives") or []
    scores = teacher_scores(row, [*extras, *negatives], teacher_score)
    return FlagEmbeddingRow(
        query=text_format.query(row["task"], row["query"]),
        pos=[_document(row["positive"], text_format), *(_document(e, text_format) for e in extras)],
        neg=[_document(n, text_format) for n in negatives],
        pos_scores=scores[:1 + len(extras)], neg_scores=scores[1 + len(extras):],
        prompt=row["task"],
    )


def beir_records(row: dict, seen_docs: set[str]) -> tuple[BeirQuery, list[BeirDoc], list[tuple[str, str, int]]]:
    """The query, the documents not yet written (positives and negatives), and the qrel lines: the
    positive's and each extra positive's. `seen_docs` holds ids only, so memory grows with the
    corpus ids, not its texts."""
    docs = []
    positives = [row["positive"], *(row.get("extra_positives") or [])]
    for ref in [*positives, *(row.get("hard_negatives") or [])]:
        if ref["id"] not in seen_docs:
            seen_docs.add(ref["id"])
            docs.append(BeirDoc(id=ref["id"], title=ref.get("title") or "", text=ref["text"]))
    query = BeirQuery(id=row["query_id"], text=row["query"], metadata={"task": row["task"]})
    return query, docs, [(row["query_id"], p["id"], 1) for p in positives]


def beir_lines(rows) -> Iterator[tuple[str, str]]:
    """(file, line) pairs for corpus.jsonl, queries.jsonl and the qrels file, in one pass."""
    seen: set[str] = set()
    for row in rows:
        query, docs, qrels = beir_records(row, seen)
        for doc in docs:
            yield "corpus", doc.model_dump_json(by_alias=True)
        yield "queries", query.model_dump_json(by_alias=True)
        for qrel in qrels:
            yield "qrels", "\t".join(map(str, qrel))
