"""Records of the export formats other trainers read (`fret export`)."""

from __future__ import annotations

from pydantic import Field

from schemas.records import Record


class FlagEmbeddingRow(Record):
    """FlagEmbedding's fine-tuning JSONL (BGE): one query, positives, hard negatives, an instruction."""

    query: str
    pos: list[str]
    neg: list[str]
    pos_scores: list[float] = Field(..., description="teacher scores of pos (fret export --teacher-score; fused "
                                                     "RRF by default), for distillation")
    neg_scores: list[float] = Field(..., description="teacher scores of neg, the same score")
    prompt: str = Field(..., description="the query instruction: the generated task")
    type: str = "normal"


class BeirDoc(Record):
    """A line of BEIR's corpus.jsonl."""

    id: str = Field(..., serialization_alias="_id")
    title: str = ""
    text: str


class BeirQuery(Record):
    """A line of BEIR's queries.jsonl; the task travels in metadata."""

    id: str = Field(..., serialization_alias="_id")
    text: str
    metadata: dict[str, str] = Field(default_factory=dict)


EXPORT_RECORDS = (FlagEmbeddingRow, BeirDoc, BeirQuery)


# sentence-transformers' data collator takes a column of this name as the loss's labels.
LABEL_COLUMN = "label"


def sentence_transformers_columns(num_negatives: int) -> list[str]:
    """Column order is the contract for sentence-transformers losses: anchor, positive, negatives.
    The optional teacher scores follow as LABEL_COLUMN: a list of floats, positive first."""
    return ["anchor", "positive"] + [f"negative_{i}" for i in range(1, num_negatives + 1)]
