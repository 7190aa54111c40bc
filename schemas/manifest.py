"""The run manifest and its parts: what a run did, counted (OUTPUT/manifest.json)."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from pydantic import Field

from schemas.records import Record


class ScoreSummary(Record):
    """Distribution summary of one score over the written examples."""

    count: int
    mean: Optional[float] = None
    std: Optional[float] = None
    min: Optional[float] = None
    p50: Optional[float] = None
    max: Optional[float] = None


class TokenUsage(Record):
    """The LLM tokens one kind of request cost in this run, as the server counted them."""

    requests: int = 0
    prompt_sent: int = Field(0, description="prompt tokens sent (the server's usage.prompt_tokens)")
    prompt_computed: int = Field(0, description="prompt tokens the server computed: sent minus its prefix-cache "
                                                "hits (usage.prompt_tokens_details.cached_tokens)")
    completion: int = Field(0, description="completion tokens generated")
    cache_reported: int = Field(0, description="requests whose server reported cached tokens; for the others "
                                               "computed = sent (vLLM reports them with --enable-prompt-tokens-details)")


class RunManifest(Record):
    """Run-level summary written next to the shards."""

    run_id: str
    started_at: dt.datetime
    finished_at: dt.datetime
    counts: dict[str, int] = Field(..., description="counts at every stage")
    inputs: int
    written: int
    filtered: int
    dead_lettered: int
    relabel_rate: Optional[float] = None
    task_mix: dict[str, int] = Field(default_factory=dict)
    scores: dict[str, ScoreSummary] = Field(default_factory=dict)
    llm_model: str
    embedder: str
    prompts: dict[str, str]
    config: str = Field(..., description="effective configuration as sorted JSON")
    accounting: str = Field("", description="the job's own check: inputs = written + filtered + dead-lettered")
    resumed: bool = Field(False, description="run with --resume: finished LLM work was read from the journal")
    ranking_precision: dict[str, int] = Field(
        default_factory=dict, description="decimals QL and RC are rounded to before ranking (ties: retrieval rank, "
                                          "then passage id), so that float noise cannot change a ranking")
    tokens: dict[str, TokenUsage] = Field(
        default_factory=dict, description="served tokens by request kind in this run (the LLM's generate, ql, "
                                          "rc, rate; a served cross-encoder's ce; a served embedder's "
                                          "embed_passages and embed_queries); work replayed from the journal "
                                          "costs none")
    scoring: dict[str, str] = Field(
        default_factory=dict, description="how the LLM scored: score_order (passage | query), ql_path "
                                          "(prefix_cache: QL read the server's prefix cache over its token endpoint; "
                                          "echo: /v1/completions) and the RC prompt")
    journal_models: dict[str, str] = Field(
        default_factory=dict, description="the models as journal keys name them (llm, embedder, cross_encoder): "
                                          "the name and a digest of a local folder's bytes, or the weights a "
                                          "server says it loaded; a run whose entry differs reuses none of an "
                                          "earlier run's journal for that model")
    scores_from: Optional[str] = Field(None, description="fret remine: the run whose stored candidate scores these "
                                                          "examples were rebuilt from (None: scored in this run)")
    false_negative_share: Optional[float] = Field(
        None, description="the false-negative audit: the share of written negatives that are a known positive of "
                          "their query, a chunk of one or a duplicate of one (must be 0; counts: "
                          "negatives_written, written_negative_<rule>, never_negative_<rule>, extra_positives)")
    phase_seconds: dict[str, float] = Field(
        default_factory=dict, description="a run in waves (--wave_size): wall seconds of each of its pipelines "
                                          "(plan, prepare-w00000, ..., filter, finish-w00000, ...); empty for one "
                                          "pipeline")
