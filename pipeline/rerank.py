"""Gecko steps 3-5: score every candidate with QL and RC, fuse by RRF, relabel the positive."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Literal, Optional, Sequence, Union

from pipeline.fusion import QL_DECIMALS, RC_DECIMALS, expected_relevance, quantise, ranks_desc, rrf, top_label_logprob
from pipeline.generation import LLM_REASONS
from pipeline.ingest import dead_letter
from pipeline.llm.client import LLMClient
from pipeline.llm.usage import metered
from pipeline.prompts import PromptTemplate, load_prompt
from pipeline.retrieval import Hit, merge_topk
from schemas import CandidateScore, DeadLetter, Passage, QueryRecord

RCScore = Literal["expected_relevance", "top_label_logprob"]
RCMethod = Literal["exact", "first_token"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    passage_id: str
    title: str
    text: str
    is_seed: bool
    retrieval_rank: int  # 1..N; 0 for a seed passage that was not among the neighbours
    retrieval_score: Optional[float]


@dataclasses.dataclass(frozen=True)
class RerankConfig:
    rrf_k: float = 0.0  # Gecko: 0
    rc_score: RCScore = "expected_relevance"
    # first_token: one request per candidate that vLLM's prefix cache serves; exact: the
    # whole label's likelihood via echo (any server, 3 uncached requests per candidate).
    rc_method: RCMethod = "first_token"
    max_passage_chars: int = 4000
    ql_prompt_version: Optional[int] = None
    rc_prompt_version: Optional[int] = None
    ql_decimals: int = QL_DECIMALS  # QL and RC are ranked rounded to these decimals (float noise)
    rc_decimals: int = RC_DECIMALS


def build_candidates(seed: Passage, partial_hits: Sequence[Sequence[tuple[float, str, str, str]]],
                     k: int) -> list[Candidate]:
    """Merge per-shard (score, id, title, text) lists into the top-k neighbours, and add the
    seed when it is not among them: Gecko takes the argmax over the neighbours *with the seed*."""
    partials = [[Hit(-score, pid) for score, pid, _, _ in part] for part in partial_hits]
    texts = {pid: (title, text) for part in partial_hits for _, pid, title, text in part}
    top = merge_topk(partials, k)
    candidates = [Candidate(passage_id=h.passage_id, title=texts[h.passage_id][0], text=texts[h.passage_id][1],
                            is_seed=h.passage_id == seed.id, retrieval_rank=rank, retrieval_score=h.score)
                  for rank, h in enumerate(top, start=1)]
    if not any(c.is_seed for c in candidates):
        candidates.append(Candidate(passage_id=seed.id, title=seed.title, text=seed.text, is_seed=True,
                                    retrieval_rank=0, retrieval_score=None))
    return candidates


def ql_request(prompt: PromptTemplate, query: QueryRecord, c: Candidate, max_chars: int) -> tuple[str, str]:
    """(prefix, continuation): the passage comes first so its prefix is shared; the query is scored."""
    prefix = prompt.render(title=c.title or "(none)", passage=c.text[:max_chars], task=query.task)
    return prefix, " " + query.query


def rc_prompt(prompt: PromptTemplate, query: QueryRecord, c: Candidate, max_chars: int) -> str:
    """Instruction, task and query first: the N candidates of one query share a cached prefix."""
    return prompt.render(task=query.task, query=query.query, title=c.title or "(none)",
                         passage=c.text[:max_chars])


def fuse(query: QueryRecord, candidates: Sequence[Candidate], ql: Sequence[float], ql_mean: Sequence[float],
         rc: Sequence[float], rc_labels: Sequence[dict[str, float]], rrf_k: float,
         ql_decimals: int = QL_DECIMALS, rc_decimals: int = RC_DECIMALS) -> list[CandidateScore]:
    """Ranks per score (rounded to the given decimals), RRF, fused ranks; ties break toward the
    better retrieval rank (the seed first), then the passage id. The raw scores are kept."""
    tiebreak = [(c.retrieval_rank if c.retrieval_rank > 0 else 0, c.passage_id) for c in candidates]
    ql_ranks = ranks_desc(quantise(ql, ql_decimals), tiebreak)
    rc_ranks = ranks_desc(quantise(rc, rc_decimals), tiebreak)
    fused = rrf([ql_ranks, rc_ranks], k=rrf_k)
    fused_ranks = ranks_desc(fused, [(ql_ranks[i] + rc_ranks[i], tiebreak[i]) for i in range(len(candidates))])
    return [
        CandidateScore(
            passage_id=c.passage_id, title=c.title, text=c.text, is_seed=c.is_seed,
            retrieval_rank=c.retrieval_rank, retrieval_score=c.retrieval_score,
            ql=ql[i], ql_mean=ql_mean[i], rc=rc[i], rc_label_logprobs=rc_labels[i],
            ql_rank=ql_ranks[i], rc_rank=rc_ranks[i], fused=fused[i], fused_rank=fused_ranks[i],
        )
        for i, c in enumerate(candidates)
    ]


async def score_query(client: LLMClient, query: QueryRecord, candidates: Sequence[Candidate],
                      config: RerankConfig) -> Union[list[CandidateScore], DeadLetter]:
    """QL and RC for every candidate of one query. Any failed score dead-letters the query:
    a ranking with holes would silently change which passage is the positive."""
    ql_prompt = load_prompt("query_likelihood", config.ql_prompt_version)
    rc_template = load_prompt("relevance_classification", config.rc_prompt_version)
    label_names = list(rc_template.labels)
    label_texts = [rc_template.labels[n]["text"] for n in label_names]
    label_values = {n: float(rc_template.labels[n]["value"]) for n in label_names}
    top_label = max(label_values, key=label_values.get)

    rc_jobs = [metered("rc", client.label_logprobs(rc_prompt(rc_template, query, c, config.max_passage_chars),
                                                   label_texts, config.rc_method))
               for c in candidates]
    ql_jobs = [metered("ql", client.query_likelihood(*ql_request(ql_prompt, query, c, config.max_passage_chars)))
               for c in candidates]
    results = await asyncio.gather(*rc_jobs, *ql_jobs)
    rc_results, ql_results = results[:len(candidates)], results[len(candidates):]
    # Each kind's results against their own candidates: one zip over both stopped after RC.
    for kind, kind_results in (("RC", rc_results), ("QL", ql_results)):
        for c, r in zip(candidates, kind_results, strict=True):
            if not r.ok:
                return dead_letter(query.passage_id, "rerank", LLM_REASONS.get(r.reason or "", "llm_bad_response"),
                                   f"query {query.query_id}: {kind} scoring of candidate {c.passage_id} failed: "
                                   f"{r.detail}", query.query)
    rc_labels = [{n: r.logprobs[t] for n, t in zip(label_names, label_texts)} for r in rc_results]
    if config.rc_score == "expected_relevance":
        rc = [expected_relevance(lp, label_values) for lp in rc_labels]
    else:
        rc = [top_label_logprob(lp, top_label) for lp in rc_labels]
    ql = [r.logprob_sum for r in ql_results]
    ql_mean = [r.logprob_mean for r in ql_results]
    if not all(math.isfinite(v) for v in ql + rc):
        return dead_letter(query.passage_id, "rerank", "llm_bad_response",
                           f"query {query.query_id}: a score is not finite", query.query)
    return fuse(query, candidates, ql, ql_mean, rc, rc_labels, config.rrf_k, config.ql_decimals, config.rc_decimals)
