"""The reranking and mining flags of the job, and their translation to RerankConfig and
MiningConfig (beam_jobs.options holds the others; FretOptions adds these through add_rerank_flags)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from beam_jobs.arguments import add_flag
from pipeline import prompts
from pipeline.llm.types import ClientConfig
from pipeline.mining import MiningConfig
from pipeline.rerank import RerankConfig

if TYPE_CHECKING:
    from beam_jobs.options import FretOptions


def add_rerank_flags(parser) -> None:
    """The "reranking and mining" group of FretOptions."""
    rr = parser.add_argument_group("reranking and mining")
    add_flag(rr, "rrf_k", type=float, default=0.0, help="RRF constant (Gecko: 0)")
    add_flag(rr, "scores", default="ql,rc",
             help="the rankings fused by RRF, any of ql, rc, ce, retrieval (comma-separated): QL and RC from the "
                  "LLM, ce from a served cross-encoder (--reranker-url), retrieval the embedder's own cosine; a "
                  "score left out is never requested. retrieval (with or without ce) needs no LLM server beside "
                  "--queries: mining as sentence-transformers' mine_hard_negatives does")
    add_flag(rr, "reranker_url", default="",
             help="a served cross-encoder for --scores ce: vLLM's /rerank or /score, or TEI's /rerank (--reranker-api)")
    add_flag(rr, "reranker_model", default="", help="served cross-encoder name (default: the endpoint's first model)")
    add_flag(rr, "reranker_api", default="rerank", choices=["rerank", "score", "tei"],
             help="rerank: POST /rerank {model, query, documents} (vLLM, Cohere-style); score: vLLM's POST /score; "
                  "tei: Hugging Face TEI's POST /rerank {query, texts}")
    add_flag(rr, "reranker_api_key_env", default="RERANKER_API_KEY",
             help="environment variable that holds the cross-encoder endpoint's API key, if it needs one")
    add_flag(rr, "rc_score", default="expected_relevance", choices=["expected_relevance", "top_label_logprob"],
             help="RC's score: the expected relevance over the graded labels (Zhuang et al.), or the top label's "
                  "log-probability")
    add_flag(rr, "rc_method", default="first_token", choices=["first_token", "exact"],
             help="first_token: each label's first-token log-probability in one prefix-cached request "
                  "(vLLM's logprob_token_ids); exact: the whole label's log-likelihood via echo (any server)")
    add_flag(rr, "score_order", default="passage", choices=["passage", "query"],
             help="passage: the pairs of one passage are scored together, so its prompt prefix is computed once "
                  "and read from the server's cache by every other query that retrieved it; query: a query's "
                  "candidates together (the order before 2026-12)")
    add_flag(rr, "ql_path", default="auto", choices=["auto", "prefix_cache", "echo"],
             help="how QL is scored: prefix_cache reads vLLM's prefix cache over its token endpoint (a server "
                  "started with --enable-scale-out, as fret serve does); echo uses /v1/completions, which never "
                  "reads the cache; auto: prefix_cache where every server has the endpoint. Same values")
    add_flag(rr, "rc_prompt_version", type=int, default=None,
             help=f"relevance_classification prompt version (default: the newest, "
                  f"{max(prompts.available()['relevance_classification'])}); v3 puts the passage first (for "
                  "passage-major scoring), v2 the task and query (for --score-order query), v1 has no examples "
                  "in its head")
    add_flag(rr, "ql_prompt_version", type=int, default=None,
             help=f"query_likelihood prompt version (default: the newest, "
                  f"{max(prompts.available()['query_likelihood'])})")
    add_flag(rr, "relabel", default="gecko", choices=["gecko", "never"],
             help="gecko: the candidate the fused scores rank first becomes the positive (Gecko's relabelling); "
                  "never: the seed or given positive stays the positive and the scores only mine the negatives, "
                  "as sentence-transformers' mine_hard_negatives does")
    add_flag(rr, "negative_strategy", default="lowest", choices=["top", "lowest", "random", "rank_window", "margin"],
             help="hard negatives, from the neighbours the range and score limits below keep: top = the hardest "
                  "(mine_hard_negatives' sampling_strategy top); lowest = p_N, the lowest fused rank (Gecko); random "
                  "= a seeded sample (its random); a window of fused ranks; margin = NV-Retriever's "
                  "positive-aware TopK-PercPos (--negative-margin)")
    add_flag(rr, "num_negatives", type=int, default=1, help="hard negatives per example")
    add_flag(rr, "negative_window", default="10,20", help="rank_window: fused ranks lo,hi")
    add_flag(rr, "negative_margin", type=float, default=0.95, help="margin: drop scores above this x positive")
    add_flag(rr, "margin_score", default="auto", choices=["auto", "rc", "ql", "fused", "ce", "retrieval"],
             help="the score the margins and score limits compare, as a probability-like value (one that --scores "
                  "computes, or fused); auto: rc, else ce, else ql, else retrieval, the first that --scores has")
    add_flag(rr, "negative_range", default="0,",
             help="MIN,MAX: mine_hard_negatives' range_min, range_max: of the neighbours by fused rank (never-"
                  "negatives left out), the first MAX + 2 as it retrieves them (MAX empty: all N), less the positive "
                  "and those a score limit drops, then the first MAX, less the first MIN")
    add_flag(rr, "negative_absolute_margin", type=float, default=None,
             help="drop a neighbour whose score + this > the positive's (mine_hard_negatives' absolute_margin)")
    add_flag(rr, "negative_relative_margin", type=float, default=None,
             help="drop a neighbour whose score > positive - |positive| x this (its relative_margin; NV-Retriever's "
                  "TopK-PercPos at 0.05)")
    add_flag(rr, "negative_max_score", type=float, default=None, help="drop a neighbour scored above this (max_score)")
    add_flag(rr, "negative_min_score", type=float, default=None, help="drop a neighbour scored below this (min_score)")
    add_flag(rr, "extra_positives", default="keep", choices=["keep", "drop"],
             help="neighbours rated as relevant as the positive (--extra-positive-score) are never negatives; keep: "
                  "written in the example's extra_positives (FlagEmbedding's pos and BEIR's qrels carry them); "
                  "drop: left out of the row")
    add_flag(rr, "extra_positive_score", default="auto", choices=["auto", "none", "rc", "ce", "ql", "fused", "retrieval"],
             help="the score that finds extra positives: a neighbour whose score > the positive's - |positive's| x "
                  "--extra-positive-margin; auto: rc, else ce, whichever --scores has (a judge of relevance), else "
                  "none; none: no extra positives")
    add_flag(rr, "extra_positive_margin", type=float, default=0.0,
             help="how far below the positive's score an extra positive may be, as a share of it (0: rated above "
                  "it)")


def rerank_config(opts: FretOptions) -> RerankConfig:
    """The reranker's settings; --ql_path auto must have been resolved first (fret_job.run does)."""
    ql_path = "echo" if opts.ql_path == "auto" else opts.ql_path
    return RerankConfig(rrf_k=opts.rrf_k, rc_score=opts.rc_score, rc_method=opts.rc_method,
                        ql_prompt_version=opts.ql_prompt_version, rc_prompt_version=opts.rc_prompt_version,
                        score_order=opts.score_order, ql_path=ql_path, scores=score_names(opts))


def score_names(opts: FretOptions) -> tuple[str, ...]:
    """--scores in the one order fusion uses, checked against --reranker-url."""
    from pipeline.rerank import SCORES

    names = {n.strip() for n in opts.scores.split(",") if n.strip()}
    if not names or names - set(SCORES):
        raise ValueError(f"--scores {opts.scores!r}: give one or more of {', '.join(SCORES)}, comma-separated")
    if ("ce" in names) != bool(opts.reranker_url):
        raise ValueError("--scores ce needs --reranker-url (a served cross-encoder)" if "ce" in names else
                         "--reranker-url is given but --scores leaves ce out: add it, e.g. --scores ql,rc,ce")
    return tuple(n for n in SCORES if n in names)


def needs_llm_scores(opts: FretOptions) -> bool:
    return any(n in score_names(opts) for n in ("ql", "rc"))


def reranker_client(opts: FretOptions) -> ClientConfig:
    """The cross-encoder endpoint, with the LLM's concurrency, timeout and retries."""
    urls = tuple(u.strip().rstrip("/") for u in opts.reranker_url.split(",") if u.strip())
    return ClientConfig(base_urls=urls, model=opts.reranker_model or "reranker", max_concurrency=opts.llm_concurrency,
                        timeout_s=opts.llm_timeout, max_retries=opts.llm_retries,
                        api_key=os.environ.get(opts.reranker_api_key_env) or None)


def margin_score_name(opts: FretOptions) -> str:
    """--margin-score, with auto resolved to the first of rc, ce, ql, retrieval that --scores has."""
    if opts.margin_score != "auto":
        return opts.margin_score
    names = score_names(opts)
    return next(n for n in ("rc", "ce", "ql", "retrieval") if n in names)


def negative_range(text: str) -> tuple[int, int | None]:
    lo, _, hi = text.partition(",")
    try:
        return int(lo or 0), (int(hi) if hi.strip() else None)
    except ValueError:
        raise ValueError(f"--negative-range {text!r}: give MIN,MAX ranks, e.g. 0,20 or 5, (MAX empty: all)") from None


def extra_score_name(opts: FretOptions) -> str | None:
    """--extra-positive-score, with auto resolved to rc, else ce, whichever --scores has, else None."""
    names = score_names(opts)
    if opts.extra_positive_score == "auto":
        return next((n for n in ("rc", "ce") if n in names), None)
    if opts.extra_positive_score == "none":
        return None
    if opts.extra_positive_score not in (*names, "fused"):
        raise ValueError(f"--extra-positive-score {opts.extra_positive_score} is not scored in this run (--scores "
                         f"{opts.scores}); pick one it scores, fused, or none")
    return opts.extra_positive_score


def mining_config(opts: FretOptions) -> MiningConfig:
    score = margin_score_name(opts)
    limits = (opts.negative_absolute_margin, opts.negative_relative_margin, opts.negative_max_score,
              opts.negative_min_score)
    if ((opts.negative_strategy == "margin" or any(v is not None for v in limits))
            and score != "fused" and score not in score_names(opts)):
        raise ValueError(f"--margin-score {score} is not scored in this run (--scores {opts.scores}); "
                         "pick one it scores, or fused")
    lo, hi = (int(x) for x in opts.negative_window.split(","))
    range_min, range_max = negative_range(opts.negative_range)
    return MiningConfig(strategy=opts.negative_strategy, num_negatives=opts.num_negatives, window=(lo, hi),
                        margin=opts.negative_margin, margin_score=score, rc_kind=opts.rc_score,
                        seed=opts.seed, relabel=opts.relabel, range_min=range_min, range_max=range_max,
                        absolute_margin=opts.negative_absolute_margin, relative_margin=opts.negative_relative_margin,
                        max_score=opts.negative_max_score, min_score=opts.negative_min_score,
                        extra_score=extra_score_name(opts), extra_margin=opts.extra_positive_margin,
                        keep_extra_positives=opts.extra_positives == "keep")
