"""The FRet job: seed passages -> relabelled (task, query, positive, hard negatives) Parquet shards.

    python -m beam_jobs.fret_job --input samples/passages.jsonl --output out/run \
        --llm_url http://127.0.0.1:8000 [standard Beam flags, e.g. --runner DataflowRunner]
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import signal
import sys
import threading
from typing import NoReturn

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions, TestOptions

from beam_jobs import options as opt
from beam_jobs import rerank_options as ropt
from beam_jobs.common import OUTCOME, TOKENS
from beam_jobs.config import expand_config
from beam_jobs.filters import FilterQueries, LoadEvalIndex
from beam_jobs.generate import generation_stage
from beam_jobs.given import given_stage
from beam_jobs.index_files import index_dir
from beam_jobs.llm_stage import StageSettings
from beam_jobs.preflight import (SCRATCH, check_given_queries, check_inputs, check_model_served,
                                 check_reranker, check_scoring_support, check_served_embedder, discover_model,
                                 partial_removed_on_failure, prepare_output, remove_run_parts, resolve_ql_path)
from beam_jobs.finish import rerank_to_examples, run_metadata, write_records
from beam_jobs.write import ResolveOutcomes, SumTokens, count_as, write_manifest, summarize
from beam_jobs.read import ALIASES, DROPS, DeduplicatePassages, ReadSeedPassages
from beam_jobs.retrieve import RetrieveCandidates, refusal_outcomes
from beam_jobs.waves import count_records, run_in_waves
from pipeline import given_queries as gq
from pipeline import passage_dedupe, processes, waves
from pipeline.ownership import new_run_id
from pipeline.progress import Progress

def build(p: beam.Pipeline, opts: opt.FretOptions, model: str, run_id: str, started_at: dt.datetime) -> None:
    output = opts.output.rstrip("/")
    rerank = ropt.rerank_config(opts)
    decontam = opt.decontam_config(opts)
    provenance, meta = run_metadata(opts, model, run_id, started_at)

    read = p | "ReadSeedPassages" >> ReadSeedPassages(opts.input, opts.input_format, opts.embedder,
                                                         opt.split_config(opts), opts.trust_remote_code,
                                                         fields=opt.input_fields(opts))
    deduped = read.passages | "DeduplicatePassages" >> DeduplicatePassages(keys_of=gq.corpus_keys)
    passages, aliases = deduped["kept"], deduped[ALIASES]
    dedupe_outcomes = deduped[DROPS] | "DropOutcomes" >> beam.MapTuple(passage_dedupe.drop_outcome)
    journal = opt.journal_root(opts)
    models = meta["journal_models"]
    llm = opt.llm_settings(opts, model, journal, models)
    if opts.queries:
        sourced = given_queries(p, opts, passages, aliases)
    else:
        sourced = generated_queries(passages, llm, opts)
    eval_index = p | "LoadEvalSet" >> LoadEvalIndex(opts.decontaminate, decontam)
    kept_queries, filter_outcomes = ((sourced["queries"], eval_index)
                                     | "FilterQueries" >> FilterQueries(opt.near_dup_config(opts), decontam))
    reused = list(sourced["reused"])
    retrieved = ((sourced["pool"], kept_queries)
                 | "RetrieveCandidates" >> RetrieveCandidates(opt.retrieval_embedder(opts), index_dir(output),
                                                                opts.num_neighbors,
                                                                opts.index_shard_size, opts.embed_batch_size,
                                                                progress=opts.progress,
                                                                trust_remote_code=opts.trust_remote_code,
                                                                journal_folder=journal,
                                                                embed_batch_tokens=opts.embed_batch_tokens,
                                                                journal_name=models["embedder"]))
    candidates = retrieved["candidates"]
    reused.append(count_as(retrieved["reused"], "journal_hits_embed"))
    refusals, refused_units = refusal_outcomes(retrieved["refused_passages"], retrieved["refused_queries"],
                                               passages_are_units=not opts.queries)
    tail = rerank_to_examples(candidates, eval_index, opts, llm, rerank, provenance, models)
    examples, token_usage = tail["examples"], [*sourced["tokens"], retrieved[TOKENS], *tail["tokens"]]
    reused.extend(count_as(hits, name) for name, hits in tail["reused"].items())
    final = ((read[OUTCOME], dedupe_outcomes, *sourced["outcomes"], filter_outcomes, refusals, *tail["outcomes"])
             | "AllOutcomes" >> beam.Flatten()
             | "ResolveOutcomes" >> ResolveOutcomes())
    write_records(examples, final, output, opts.output_shards)

    if opts.queries:  # the units are the query rows, and any corpus record that did not join the pool
        unit_parts = (sourced["units"], read[OUTCOME], dedupe_outcomes, refused_units)
    else:  # the units are the seed passages, and any record that did not become one
        unit_parts = (read.passages, read[OUTCOME])
    units = unit_parts | "Units" >> beam.Flatten() | "CountUnits" >> beam.combiners.Count.Globally()
    stage_counts = ([count_as(read.passages, "passages_after_split"), count_as(read[OUTCOME], "unreadable_records"),
                     count_as(passages, "unique_passages"), *sourced["counts"],
                     count_as(kept_queries, "queries_after_filters"), count_as(candidates, "queries_retrieved"),
                     count_as(retrieved["embedded"], "passages_embedded"),
                     count_as(retrieved["refused_passages"], "passages_refused_by_embedder"),
                     count_as(retrieved["refused_queries"], "queries_refused_by_embedder"), *reused]
                    | "StageCounts" >> beam.Flatten()
                    | "StageDict" >> beam.combiners.ToDict())
    tokens = token_usage | "AllTokens" >> beam.Flatten() | "SumTokens" >> beam.CombineGlobally(SumTokens())
    (summarize(final, examples)
     | "WriteManifest" >> beam.Map(write_manifest, beam.pvalue.AsSingleton(stage_counts),
                                   beam.pvalue.AsSingleton(units), beam.pvalue.AsSingleton(tokens),
                                   f"{output}/manifest.json", meta))


def generated_queries(passages, llm: StageSettings, opts: opt.FretOptions) -> dict:
    """Queries written by the LLM for each seed passage; the passages are the retrieval pool."""
    return {**generation_stage(passages, llm, opts), "pool": passages}


def given_queries(p: beam.Pipeline, opts: opt.FretOptions, passages, aliases) -> dict:
    """The user's queries (--queries), their positives found in the corpus (or joined to it)."""
    stage = given_stage(p, opts, passages, aliases)
    attached = stage["attached"]
    units = stage["units"] | "GivenUnits" >> beam.Flatten()
    return {"queries": attached["queries"], "pool": attached["pool"], "outcomes": stage["outcomes"],
            "tokens": [], "reused": [], "units": units, "counts": stage["counts"]}


def run(argv=None, save_main_session: bool = True, test_pipeline=None):
    """Build and run the job. Returns the PipelineResult (after it finished, on DirectRunner)."""
    argv = expand_config(list(sys.argv[1:] if argv is None else argv))
    opt.check_known_flags(argv)
    pipeline_options = PipelineOptions(argv)
    pipeline_options.view_as(SetupOptions).save_main_session = save_main_session
    opts = pipeline_options.view_as(opt.FretOptions)
    if not opts.input or not opts.output:
        raise ValueError("--input and --output are required, e.g. --input samples/passages.jsonl --output out/run1")
    dry_run = pipeline_options.view_as(TestOptions).dry_run  # translate for the runner, submit nothing
    if not dry_run:
        # Local problems first: a user with a full output folder and no server running needs to
        # hear about --resume/--overwrite, not about the server.
        check_inputs(opts.input, opts.input_format, opt.input_fields(opts))
        if opts.queries:
            check_given_queries(opts.queries, opts.queries_layout, opts.queries_split)
        prepare_output(opts.output, opts.overwrite, opts.resume, apply=False)
    ropt.score_names(opts)  # a bad --scores / --reranker-url pairing is refused before any work
    opt.journal_root(opts)  # and a --journal inside --output
    # given queries scored by the cross-encoder alone (no rating) send the LLM nothing
    llm_needed = not opts.queries or ropt.needs_llm_scores(opts) or opts.quality_filter
    if opts.llm_serve:  # in-worker vLLM: no server exists until the workers start one
        model = opts.llm_model or "fret-local"
    elif not llm_needed:
        model = opts.llm_model or "none"
    else:
        urls = [u.strip() for u in opts.llm_url.split(",") if u.strip()]
        model = opts.llm_model or discover_model(urls[0], opt.api_key(opts))
        if opts.llm_model and not dry_run:
            check_model_served(urls, opt.api_key(opts), opts.llm_model)
    if opts.embedder_url:
        if not opts.embedder_model:
            opts.embedder_model = ("served-embedder" if dry_run else discover_model(
                opts.embedder_url.split(",")[0].strip(), opt.retrieval_embedder(opts, "-").client.api_key,
                what="embedder endpoint", flag="--embedder_model"))
        if not dry_run:
            opts.embedder_dim = check_served_embedder(opt.retrieval_embedder(opts))
    if opts.reranker_url:
        if not opts.reranker_model:
            opts.reranker_model = ("tei" if opts.reranker_api == "tei" or dry_run else discover_model(
                opts.reranker_url.split(",")[0].strip(), ropt.reranker_client(opts).api_key,
                what="cross-encoder endpoint", flag="--reranker_model"))
        if not dry_run:
            check_reranker(ropt.reranker_client(opts), opts.reranker_api)
    run_id = new_run_id()
    if dry_run:  # it writes nothing, and claims nothing to clean up
        return _run_claimed(pipeline_options, opts, model, run_id, llm_needed, dry_run, test_pipeline)
    if not opts.llm_serve and llm_needed:
        check_scoring_support(opt.client_config(opts, model), opts.rc_method)
    prepare_output(opts.output, opts.overwrite, opts.resume, run_id=run_id)
    with partial_removed_on_failure(opts.output):  # the folder is this run's from here on, and only from here
        return _run_claimed(pipeline_options, opts, model, run_id, llm_needed, dry_run, test_pipeline)


def _run_claimed(pipeline_options: PipelineOptions, opts: opt.FretOptions, model: str, run_id: str,
                 llm_needed: bool, dry_run: bool, test_pipeline):
    """The job itself, once the output folder is claimed for this run."""
    opts.ql_path = (resolve_ql_path(opts.ql_path, opt.client_config(opts, model), bool(opts.llm_serve), dry_run)
                    if llm_needed and "ql" in ropt.score_names(opts) else "echo")
    started_at = dt.datetime.now(dt.timezone.utc)
    wave_size = resolve_wave_size(opts, pipeline_options, dry_run or test_pipeline is not None)
    if wave_size:
        result = run_in_waves(pipeline_options, opts, wave_size, model, run_id, started_at)
    else:
        p = test_pipeline or beam.Pipeline(options=pipeline_options)
        Progress.reset()
        build(p, opts, model, run_id, started_at)
        result = p.run()
        result.wait_until_finish()
    if not dry_run:  # the search's shard files and the waves' records: scratch, not part of the dataset
        remove_run_parts(opts.output, SCRATCH)
    return result


def resolve_wave_size(opts: opt.FretOptions, pipeline_options: PipelineOptions, translating: bool) -> int:
    """--wave_size as a number (0: one pipeline). auto counts the input on a local runner only
    (up to the threshold): a distributed runner bounds memory with its workers."""
    if opts.wave_size != "auto":
        if opts.wave_size:
            check_waves(pipeline_options, translating)
        return opts.wave_size
    if translating or not _is_local(pipeline_options):
        return 0
    records = count_records(opts.input, opts.input_format, stop_after=waves.AUTO_ABOVE)
    size = waves.auto_wave_size(records)
    if size and opts.progress:
        print(f"[fret] more than {waves.AUTO_ABOVE:,} input records on the DirectRunner: running in waves of "
              f"{size:,} to bound memory (--wave_size auto; 0 for one pipeline)", flush=True)
    return size


LOCAL_RUNNERS = ("DirectRunner", "direct", "FnApiRunner", "BundleBasedDirectRunner")


def _runner_name(pipeline_options: PipelineOptions) -> str:
    runner = pipeline_options.view_as(StandardOptions).runner or "DirectRunner"
    return runner if isinstance(runner, str) else type(runner).__name__


def _is_local(pipeline_options: PipelineOptions) -> bool:
    return _runner_name(pipeline_options) in LOCAL_RUNNERS


def check_waves(pipeline_options: PipelineOptions, translating: bool) -> None:
    """Waves run one pipeline after another from this process: a local runner's way to bound
    memory. A distributed runner spreads the one pipeline over workers instead."""
    if translating or not _is_local(pipeline_options):
        where = f"{_runner_name(pipeline_options)}{' (or a dry run)' if translating else ''}"
        raise ValueError(f"--wave_size runs the job as a sequence of local pipelines; it needs the DirectRunner, "
                         f"not {where}. Drop --wave_size: on a distributed runner the workers bound memory")


def abort_message(exc: BaseException) -> str | None:
    """The failure guard's one-line message, dug out of the runner's wrapped traceback."""
    match = re.search(r"fret aborted the job: [^\n]*", str(exc))
    return match.group(0) if match else None


def output_of(argv: list[str]) -> str:
    """The --output an argument list names (flags or --config), for the closing messages."""
    try:
        return PipelineOptions(expand_config(list(argv))).view_as(opt.FretOptions).output.rstrip("/")
    except Exception:  # noqa: BLE001 - only for a message; run() reports a bad argument list itself
        return ""


def summary_line(manifest: dict, output: str) -> str:
    """The accounting, the top reasons with counts, and where the output is."""
    from pipeline.inspection import outcome_reasons

    why = "; ".join(f"{status.replace('_', '-')}: {', '.join(f'{r} {n}' for r, n in found[:5])}"
                    for status, found in outcome_reasons(manifest).items())
    return f"[fret] {manifest['accounting'].split(' (')[0]}{f' ({why})' if why else ''} -> {output}"


_SIGINT_SEEN = threading.Event()


def _on_sigint(signum, frame):
    """Remember the Ctrl-C: the runner re-raises it wrapped ("RuntimeError: KeyboardInterrupt")."""
    _SIGINT_SEEN.set()
    logging.disable(logging.CRITICAL)  # the runner logs the interrupted bundle's traceback before it re-raises
    signal.default_int_handler(signum, frame)


def main(argv=None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    processes.guard()  # SIGTERM, SIGHUP: stop what fret started (--llm_serve's server); run() cleans its folder
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        result = run(argv)
    except BaseException as exc:  # noqa: BLE001 - the runner wraps worker errors; show ours plainly
        if _SIGINT_SEEN.is_set() or isinstance(exc, KeyboardInterrupt):
            interrupted(output_of(argv), journal_of(argv))
        if isinstance(exc, ValueError):  # a bad flag, input or output folder: one clear line
            print(f"[fret] error: {exc}", file=sys.stderr)
            return 2
        message = abort_message(exc) if isinstance(exc, Exception) else None
        if message is None:
            raise
        print(f"[fret] {message}", file=sys.stderr)
        return 2
    output = output_of(argv)
    if not output or not FileSystems.exists(f"{output}/manifest.json"):
        print(f"[fret] job state: {result.state}")  # a dry run translates and writes nothing
        return 0
    from beam_jobs.outputs import read_manifest

    manifest = read_manifest(output)
    print(summary_line(manifest, output))
    if not manifest["written"]:
        print("[fret] nothing was written: every input was filtered or dead-lettered; `fret inspect "
              f"{output}` shows why", file=sys.stderr)
        return 1
    return 0


def journal_of(argv: list[str]) -> str:
    """The journal folder an argument list names (--journal, or OUTPUT/_journal), for messages."""
    try:
        return opt.journal_root(PipelineOptions(expand_config(list(argv))).view_as(opt.FretOptions))
    except Exception:  # noqa: BLE001 - only for a message
        return ""


def interrupted(output: str, journal: str = "") -> NoReturn:
    """Ctrl-C: run() removed the partial shards of a folder it had claimed; the journal is kept for --resume."""
    where = journal or (f"{output}/_journal" if output else "the output folder's _journal")
    print(f"\n[fret] interrupted: the finished LLM work is kept in {where}; re-run the same command with "
          "--resume to finish it", file=sys.stderr)
    # Now, without unwinding: the runner's and the client's threads would print pages of
    # cancelled tasks on the way out, and a non-daemon one could keep the process alive. What this
    # process started (--llm_serve's vLLM) is stopped first: os._exit skips atexit hooks.
    processes.exit_now(130)


if __name__ == "__main__":
    sys.exit(main())
