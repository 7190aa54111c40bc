"""Gecko steps 3-5: score every candidate with QL and RC, fuse by RRF, relabel the positive."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import re
from typing import Literal, Optional, Sequence, Union

from pipeline.fusion import (CE_DECIMALS, QL_DECIMALS, RC_DECIMALS, RETRIEVAL_DECIMALS, expected_relevance, quantise,
                             ranks_desc, rrf, top_label_logprob)
from pipeline.generation import LLM_REASONS
from pipeline.ingest import dead_letter
from pipeline.llm.client import LLMClient
from pipeline.llm.usage import metered
from pipeline.prompts import PromptTemplate, load_prompt
from pipeline.retrieval import Hit, merge_topk
from schemas import CandidateScore, DeadLetter, PairScore, Passage, QueryRecord

RCScore = Literal["expected_relevance", "top_label_logprob"]
RCMethod = Literal["exact", "first_token"]
ScoreOrder = Literal["passage", "query"]
QLPath = Literal["echo", "prefix_cache"]
# the rankings RRF can fuse: the LLM's QL and RC, a served cross-encoder, the embedder's own cosine
SCORES = ("ql", "rc", "ce", "retrieval")
LLM_SCORES = ("ql", "rc")


@dataclasses.dataclass(frozen=True)
class Candidate:
    passage_id: str
    title: str
    text: str
    is_seed: bool
    retrieval_rank: int  # 1..N; 0 for a seed passage that was not among the neighbours
    retrieval_score: Optional[float]
    ce: Optional[float] = None  # the served cross-encoder's score, when --scores has ce


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
    # passage: every pair of one passage is scored together, so its prompt prefix is computed
    # once; query: a query's candidates together (the order before passage-major scoring).
    score_order: ScoreOrder = "passage"
    # prefix_cache: QL over vLLM's token endpoint, reading the prefix cache (pipeline.llm.token_ql);
    # echo: /v1/completions with echo, which any vLLM answers and never reads the cache. The job
    # picks prefix_cache where every server has the endpoint. Both give the same values.
    ql_path: QLPath = "echo"
    # the rankings fused (any non-empty subset of SCORES); QL or RC left out is never requested
    scores: tuple[str, ...] = LLM_SCORES

    def __post_init__(self):
        if not self.scores or set(self.scores) - set(SCORES):
            raise ValueError(f"scores must be a non-empty subset of {', '.join(SCORES)}, not {self.scores}")


@dataclasses.dataclass(frozen=True)
class Prompts:
    """The two scoring templates and RC's labels, loaded once per config."""

    ql: PromptTemplate
    rc: PromptTemplate
    label_names: tuple[str, ...]
    label_texts: tuple[str, ...]
    label_values: dict

    @classmethod
    def of(cls, config: RerankConfig) -> "Prompts":
        return _prompts(config.ql_prompt_version, config.rc_prompt_version)

    @property
    def top_label(self) -> str:
        return max(self.label_values, key=self.label_values.get)


@functools.lru_cache(maxsize=16)
def _prompts(ql_version: Optional[int], rc_version: Optional[int]) -> Prompts:
    rc = load_prompt("relevance_classification", rc_version)
    names = tuple(rc.labels)
    return Prompts(ql=load_prompt("query_likelihood", ql_version), rc=rc, label_names=names,
                   label_texts=tuple(rc.labels[n]["text"] for n in names),
                   label_values={n: float(rc.labels[n]["value"]) for n in names})


def letter_record_id(query: QueryRecord) -> str:
    """What a rerank dead letter names: the seed passage a generated query came from (its input),
    or the query itself where it has none (a given query without a positive)."""
    return query.passage_id or query.query_id


def letter_for(query: QueryRecord, reason: str, detail: str) -> DeadLetter:
    """A rerank-stage dead letter of one query; its detail starts with the query's id."""
    return dead_letter(letter_record_id(query), "rerank", reason, f"query {query.query_id}: {detail}", query.query)


def restamped(letter: DeadLetter, query: QueryRecord) -> DeadLetter:
    """A journaled pair's dead letter, for the query of this run: the pair's key is its content, which
    another query with the same task and text may have journaled under its own id."""
    detail = re.sub(r"^query \S+: ", f"query {query.query_id}: ", letter.detail)
    return letter.model_copy(update={"record_id": letter_record_id(query), "detail": detail, "payload": query.query})


def build_candidates(seed: Optional[Passage], partial_hits: Sequence[Sequence[tuple[float, str, str, str]]],
                     k: int, seed_score: Optional[float] = None) -> list[Candidate]:
    """Merge per-shard (score, id, title, text) lists into the top-k neighbours, and add the
    seed when it is not among them (with `seed_score`, its cosine, when the search computed it):
    Gecko takes the argmax over the neighbours *with the seed*.
    A given query without a positive has no seed (None): its candidates are the neighbours."""
    partials = [[Hit(-score, pid) for score, pid, _, _ in part] for part in partial_hits]
    texts = {pid: (title, text) for part in partial_hits for _, pid, title, text in part}
    top = merge_topk(partials, k)
    candidates = [Candidate(passage_id=h.passage_id, title=texts[h.passage_id][0], text=texts[h.passage_id][1],
                            is_seed=seed is not None and h.passage_id == seed.id, retrieval_rank=rank,
                            retrieval_score=h.score)
                  for rank, h in enumerate(top, start=1)]
    if seed is not None and not any(c.is_seed for c in candidates):
        candidates.append(Candidate(passage_id=seed.id, title=seed.title, text=seed.text, is_seed=True,
                                    retrieval_rank=0, retrieval_score=seed_score))
    return candidates


def ql_request(prompt: PromptTemplate, query: QueryRecord, c: Candidate, max_chars: int) -> tuple[str, str]:
    """(prefix, continuation): the passage comes first so its prefix is shared; the query is scored."""
    prefix = prompt.render(title=c.title or "(none)", passage=c.text[:max_chars], task=query.task)
    return prefix, " " + query.query


def rc_prompt(prompt: PromptTemplate, query: QueryRecord, c: Candidate, max_chars: int) -> str:
    """The RC prompt of one pair. Its layout is the prompt file's: v3 (the default) puts the head
    and the passage first, so the queries that retrieved one passage share a cached prefix
    (passage-major scoring); v2 put the task and query first, for query-major scoring."""
    return prompt.render(task=query.task, query=query.query, title=c.title or "(none)",
                         passage=c.text[:max_chars])


def fuse(query: QueryRecord, candidates: Sequence[Candidate], ql: Sequence[float], ql_mean: Sequence[float],
         rc: Sequence[float], rc_labels: Sequence[dict[str, float]], rrf_k: float,
         ql_decimals: int = QL_DECIMALS, rc_decimals: int = RC_DECIMALS,
         scores: Sequence[str] = LLM_SCORES) -> list[CandidateScore]:
    """Ranks per score used (rounded to the given decimals), RRF, fused ranks; ties break toward
    the better retrieval rank (the seed first), then the passage id. The raw scores are kept; a
    score not used has no rank (and QL/RC not requested are NaN)."""
    tiebreak = [(c.retrieval_rank if c.retrieval_rank > 0 else 0, c.passage_id) for c in candidates]
    values = {"ql": quantise(ql, ql_decimals), "rc": quantise(rc, rc_decimals),
              "ce": quantise([c.ce if c.ce is not None else math.nan for c in candidates], CE_DECIMALS),
              "retrieval": quantise([c.retrieval_score if c.retrieval_score is not None else math.nan
                                     for c in candidates], RETRIEVAL_DECIMALS)}
    ranks = {name: ranks_desc(values[name], tiebreak) for name in SCORES if name in scores}
    fused = rrf(list(ranks.values()), k=rrf_k)
    rank_sum = [sum(r[i] for r in ranks.values()) for i in range(len(candidates))]
    fused_ranks = ranks_desc(fused, [(rank_sum[i], tiebreak[i]) for i in range(len(candidates))])
    none = [None] * len(candidates)
    return [
        CandidateScore(
            passage_id=c.passage_id, title=c.title, text=c.text, is_seed=c.is_seed,
            retrieval_rank=c.retrieval_rank, retrieval_score=c.retrieval_score,
            ql=ql[i], ql_mean=ql_mean[i], rc=rc[i], rc_label_logprobs=rc_labels[i],
            ql_rank=ranks.get("ql", none)[i], rc_rank=ranks.get("rc", none)[i], ce=c.ce,
            ce_rank=ranks.get("ce", none)[i], fused=fused[i], fused_rank=fused_ranks[i],
        )
        for i, c in enumerate(candidates)
    ]


async def score_pair(client: LLMClient, query: QueryRecord, c: Candidate, config: RerankConfig,
                     prompts: Optional[Prompts] = None) -> Union[PairScore, DeadLetter]:
    """QL and RC of one (query, passage) pair; the requests carry the passage as their route key,
    so a fleet sends every request that shares the passage's prefix to one server."""
    prompts = prompts or Prompts.of(config)
    route = c.passage_id
    calls = {}
    if "rc" in config.scores:
        calls["RC"] = metered("rc", client.label_logprobs(rc_prompt(prompts.rc, query, c, config.max_passage_chars),
                                                          list(prompts.label_texts), config.rc_method, route))
    if "ql" in config.scores:
        ql_args = (*ql_request(prompts.ql, query, c, config.max_passage_chars), route)
        ql_call = client.query_likelihood_cached if config.ql_path == "prefix_cache" else client.query_likelihood
        calls["QL"] = metered("ql", ql_call(*ql_args))
    results = dict(zip(calls, await asyncio.gather(*calls.values())))
    # each result is checked on its own: one zip over both once reported a QL failure as RC's
    for kind, r in results.items():
        if not r.ok:
            return letter_for(query, LLM_REASONS.get(r.reason or "", "llm_bad_response"),
                              f"{kind} scoring of candidate {c.passage_id} failed: {r.detail}")
    ql_result, rc_result = results.get("QL"), results.get("RC")
    return PairScore(query_id=query.query_id, passage_id=c.passage_id,
                     ql=ql_result.logprob_sum if ql_result else math.nan,
                     ql_mean=ql_result.logprob_mean if ql_result else math.nan,
                     rc_label_logprobs=({n: rc_result.logprobs[t] for n, t in zip(prompts.label_names,
                                                                                  prompts.label_texts)}
                                        if rc_result else {}))


async def score_passage(client: LLMClient, passage: Candidate, queries: Sequence[QueryRecord],
                        config: RerankConfig) -> list[Union[PairScore, DeadLetter]]:
    """Every query that retrieved one passage, scored against it: the first pair alone, so the
    server computes the passage's prefix once, then the others together, reading it from the cache."""
    prompts = Prompts.of(config)
    if not queries:
        return []
    first = await score_pair(client, queries[0], passage, config, prompts)
    rest = await asyncio.gather(*(score_pair(client, q, passage, config, prompts) for q in queries[1:]))
    return [first, *rest]


def assemble(query: QueryRecord, candidates: Sequence[Candidate], scores: dict[str, Union[PairScore, DeadLetter]],
             config: RerankConfig) -> Union[list[CandidateScore], DeadLetter]:
    """A query's pair scores, in its candidates' order, ranked and fused. Any failed pair
    dead-letters the query with that pair's reason: a ranking with holes would silently change
    which passage is the positive."""
    prompts = Prompts.of(config)
    pairs = []
    for c in candidates:
        score = scores.get(c.passage_id)
        if score is None:
            return letter_for(query, "internal_error", f"candidate {c.passage_id} was never scored")
        if isinstance(score, DeadLetter):
            return score
        pairs.append(score)
    rc_labels = [p.rc_label_logprobs for p in pairs]
    if "rc" not in config.scores:
        rc = [math.nan] * len(pairs)
    elif config.rc_score == "expected_relevance":
        rc = [expected_relevance(lp, prompts.label_values) for lp in rc_labels]
    else:
        rc = [top_label_logprob(lp, prompts.top_label) for lp in rc_labels]
    ql = [p.ql for p in pairs]
    ql_mean = [p.ql_mean for p in pairs]
    used = {"ql": ql, "rc": rc, "ce": [c.ce if c.ce is not None else math.nan for c in candidates],
            "retrieval": [c.retrieval_score if c.retrieval_score is not None else math.nan for c in candidates]}
    if not all(math.isfinite(v) for name in config.scores for v in used[name]):
        return letter_for(query, "llm_bad_response", "a score is not finite")
    return fuse(query, candidates, ql, ql_mean, rc, rc_labels, config.rrf_k, config.ql_decimals, config.rc_decimals,
                config.scores)


async def score_query_pairs(client: LLMClient, query: QueryRecord, candidates: Sequence[Candidate],
                            config: RerankConfig) -> list[Union[PairScore, DeadLetter]]:
    """One query's (query, candidate) pairs, scored together (query-major order)."""
    prompts = Prompts.of(config)
    return list(await asyncio.gather(*(score_pair(client, query, c, config, prompts) for c in candidates)))


async def score_query(client: LLMClient, query: QueryRecord, candidates: Sequence[Candidate],
                      config: RerankConfig) -> Union[list[CandidateScore], DeadLetter]:
    """QL and RC for every candidate of one query, ranked and fused (the teacher bench's unit)."""
    results = await score_query_pairs(client, query, candidates, config)
    return assemble(query, candidates, {c.passage_id: r for c, r in zip(candidates, results)}, config)
