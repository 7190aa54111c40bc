"""A served cross-encoder as a third ranking (--scores ce): one request scores every candidate of
a query. Three APIs, through the LLM's client layer (retries, failover, the concurrency bound):

- rerank: vLLM's (and Cohere's, Jina's) `POST /rerank` {model, query, documents} ->
  {"results": [{index, relevance_score}]}
- score: vLLM's `POST /score` {model, text_1, text_2: [...]} -> {"data": [{index, score}]}
- tei: Hugging Face TEI's `POST /rerank` {query, texts} -> [{index, score}]

vLLM and TEI answer the sigmoid of the model's logit for a one-label cross-encoder, which is what
sentence-transformers' CrossEncoder.predict gives by default.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Union

from pipeline.embedding import passage_text
from pipeline.generation import LLM_REASONS
from pipeline.rerank import letter_for
from pipeline.llm.types import LLMResult
from schemas import CrossEncoderScores, DeadLetter, QueryRecord

RERANKER_APIS = ("rerank", "score", "tei")


def request(api: str, model: str, query: str, documents: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """(path under the base URL, body) for one query and its documents."""
    if api == "rerank":
        return "rerank", {"model": model, "query": query, "documents": list(documents)}
    if api == "score":
        return "score", {"model": model, "text_1": query, "text_2": list(documents)}
    if api == "tei":
        return "rerank", {"query": query, "texts": list(documents), "raw_scores": False}
    raise ValueError(f"unknown reranker API {api!r}; one of {RERANKER_APIS}")


def parse(api: str, payload: Any, n: int) -> list[float]:
    """The documents' scores in input order; ValueError when the answer is not n finite scores."""
    if api == "rerank":
        items, field = (payload or {}).get("results"), "relevance_score"
    elif api == "score":
        items, field = (payload or {}).get("data"), "score"
    else:
        items, field = payload, "score"
    if not isinstance(items, list) or len(items) != n:
        raise ValueError(f"expected {n} scores, got {len(items) if isinstance(items, list) else 'none'}")
    scores = [math.nan] * n
    for item in items:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < n or not math.isnan(scores[index]):
            raise ValueError(f"bad or repeated index in {item!r}")
        scores[index] = float(item[field])
    if not all(math.isfinite(s) for s in scores):
        raise ValueError("a score is not finite")
    return scores


async def score_candidates(client, api: str, model: str, query: QueryRecord, candidates
                           ) -> Union[CrossEncoderScores, DeadLetter]:
    """One request: the cross-encoder's score of (query text, each candidate as retrieval embeds it)."""
    documents = [passage_text(c.title, c.text) for c in candidates]
    path, body = request(api, model, query.query, documents)
    result = LLMResult()
    payload = await client._call(path, body, result, api="/")
    if payload is None:
        return letter_for(query, LLM_REASONS.get(result.reason or "", "llm_bad_response"),
                          f"the cross-encoder failed: {result.detail}")
    try:
        scores = parse(api, payload, len(documents))
    except (ValueError, TypeError, KeyError) as exc:
        return letter_for(query, "llm_bad_response", f"the cross-encoder's answer: {exc}")
    return CrossEncoderScores(query_id=query.query_id, passage_ids=[c.passage_id for c in candidates], scores=scores)
