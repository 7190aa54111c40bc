"""Training examples -> the formats other trainers read. Row in, record(s) out; no I/O here.

- sentence-transformers: columns anchor, positive, negative_1..k (the order its losses expect)
- FlagEmbedding (BGE) fine-tuning JSONL: query, pos, neg, pos_scores, neg_scores, prompt
- BEIR: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (fields, never formatted)

The first two write texts in a text format (pipeline/text_format.py): plain by default, or
Gecko's, for a trainer that should see what `fret train --text-format gecko` sees.
"""

from __future__ import annotations

from typing import Iterator, Optional

from pipeline.text_format import PLAIN, TextFormat
from schemas.exports import BeirDoc, BeirQuery, FlagEmbeddingRow, sentence_transformers_columns

FORMATS = ("sentence-transformers", "flagembedding", "beir")


def _document(ref: dict, text_format: TextFormat) -> str:
    return text_format.document(ref.get("title") or "", ref["text"])


def sentence_transformers_row(row: dict, num_negatives: int, text_format: TextFormat = PLAIN) -> Optional[dict]:
    """None when the example has fewer hard negatives than asked: every row needs every column."""
    negatives = row.get("hard_negatives") or []
    if len(negatives) < num_negatives:
        return None
    texts = [text_format.query(row["task"], row["query"]), _document(row["positive"], text_format)]
    texts += [_document(n, text_format) for n in negatives[:num_negatives]]
    return dict(zip(sentence_transformers_columns(num_negatives), texts))


def flagembedding_row(row: dict, text_format: TextFormat = PLAIN) -> FlagEmbeddingRow:
    negatives = row.get("hard_negatives") or []
    return FlagEmbeddingRow(
        query=text_format.query(row["task"], row["query"]),
        pos=[_document(row["positive"], text_format)],
        neg=[_document(n, text_format) for n in negatives],
        pos_scores=[float(row["positive_fused"])], neg_scores=[float(n["fused"]) for n in negatives],
        prompt=row["task"],
    )


def beir_records(row: dict, seen_docs: set[str]) -> tuple[BeirQuery, list[BeirDoc], tuple[str, str, int]]:
    """The query, the documents not yet written (positive and negatives), and the qrel line.
    `seen_docs` holds ids only, so memory grows with the corpus ids, not its texts."""
    docs = []
    for ref in [row["positive"], *(row.get("hard_negatives") or [])]:
        if ref["id"] not in seen_docs:
            seen_docs.add(ref["id"])
            docs.append(BeirDoc(id=ref["id"], title=ref.get("title") or "", text=ref["text"]))
    query = BeirQuery(id=row["query_id"], text=row["query"], metadata={"task": row["task"]})
    return query, docs, (row["query_id"], row["positive"]["id"], 1)


def beir_lines(rows) -> Iterator[tuple[str, str]]:
    """(file, line) pairs for corpus.jsonl, queries.jsonl and the qrels file, in one pass."""
    seen: set[str] = set()
    for row in rows:
        query, docs, qrel = beir_records(row, seen)
        for doc in docs:
            yield "corpus", doc.model_dump_json(by_alias=True)
        yield "queries", query.model_dump_json(by_alias=True)
        yield "qrels", "\t".join(map(str, qrel))
