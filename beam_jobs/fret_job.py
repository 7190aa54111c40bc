"""The FRet job: seed passages -> relabelled (task, query, positive, hard negatives) Parquet shards.

    python -m beam_jobs.fret_job --input samples/passages.jsonl --output out/run \
        --llm_url http://127.0.0.1:8000 [standard Beam flags, e.g. --runner DataflowRunner]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import sys
import urllib.request
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, TestOptions

from beam_jobs import options as opt
from beam_jobs.common import OUTCOME, TOKENS
from beam_jobs.config import expand_config
from beam_jobs.filters import DecontaminateExamples, FilterQueries, LoadEvalIndex
from beam_jobs.generate import GenerateQueries
from beam_jobs.index_files import INDEX_DIR, index_dir, remove_index
from beam_jobs.journal import journal_dir
from beam_jobs.llm_stage import StageSettings
from beam_jobs.write import ManifestCombine, ResolveOutcomes, SumTokens, WriteRecords, write_manifest
from beam_jobs.rate import RateExamples
from beam_jobs.read import DeduplicatePassages, ReadSeedPassages
from beam_jobs.rerank import RerankAndMine
from beam_jobs.retrieve import RetrieveCandidates
from pipeline.accounting import Outcome, example_stats
from pipeline.examples import stamp
from pipeline.llm.types import ClientConfig
from pipeline.progress import Progress
from pipeline.prompts import load_prompt
from schemas import DeadLetter, FilteredRecord, Provenance, TrainingExample

PROMPTS = ("query_generation", "query_likelihood", "relevance_classification", "quality_rater")
OUTPUT_PARTS = ("examples", "dead_letters", "filtered", "manifest.json")


def discover_model(base_url: str, api_key: str | None, timeout: float = 30.0) -> str:
    """The first model the server lists; a clear error when it cannot be reached."""
    request = urllib.request.Request(base_url.rstrip("/") + "/v1/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            models = json.load(resp).get("data") or []
    except OSError as exc:
        raise ValueError(f"cannot reach the LLM server at {base_url} ({exc}); start it, fix --llm_url, "
                         "or pass --llm_model") from None
    if not models:
        raise ValueError(f"the LLM server at {base_url} lists no models; pass --llm_model")
    return models[0]["id"]


def check_scoring_support(client: ClientConfig, rc_method: str) -> None:
    """Refuse to start against a server that cannot score, naming what it lacks."""
    from pipeline.llm.client import LLMClient
    from pipeline.llm.probe import SCORING_NEEDS, ProbeError, probe_scoring_support

    async def probe():
        async with LLMClient(client) as llm:
            return await probe_scoring_support(llm, rc_method)

    try:
        missing = asyncio.run(probe())
    except ProbeError as exc:
        raise ValueError(f"the LLM server at {client.base_urls[0]} did not answer: {exc}") from None
    if missing:
        needs = "; ".join(SCORING_NEEDS[m] for m in missing)
        hint = (" --rc_method exact avoids /tokenize and logprob_token_ids." if "echo" not in missing else
                " Generation works on any OpenAI-compatible server, but QL and RC scoring need vLLM.")
        raise ValueError(f"the LLM server at {client.base_urls[0]} lacks what scoring needs: {needs}.{hint}")


def check_inputs(patterns: str) -> None:
    """Fail before the job starts when an input pattern matches nothing."""
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        if not FileSystems.match([pattern])[0].metadata_list:
            raise ValueError(f"--input {pattern!r} matches no file; check the path or glob")


def prepare_output(output: str, overwrite: bool, resume: bool = False, apply: bool = True) -> None:
    """Refuse to mix a new run into an old one unless told to replace it (--overwrite) or to
    finish it (--resume: the journal is kept, the dataset files are rebuilt from it)."""
    if overwrite and resume:
        raise ValueError("--overwrite and --resume contradict each other: --overwrite starts over, --resume reuses "
                         "the finished LLM work in the output folder")
    output = output.rstrip("/")
    existing = [m.path for m in FileSystems.match([output + "/**"])[0].metadata_list] \
        if FileSystems.exists(output) else []
    if not existing:
        return
    journal = journal_dir(output)
    if resume and not apply:
        return
    if resume:
        stale = [f"{output}/{part}" for part in (*OUTPUT_PARTS, INDEX_DIR) if FileSystems.exists(f"{output}/{part}")]
        if stale:
            FileSystems.delete(stale)
        return
    if not overwrite:
        unfinished = any(path.startswith(journal + "/") for path in existing)
        hint = ("pass --resume to finish that run, reusing its finished LLM work, or --overwrite to start over"
                if unfinished else "choose a new --output or pass --overwrite to replace it")
        raise ValueError(f"output folder {output} is not empty ({len(existing)} files); {hint}")
    if apply:
        FileSystems.delete([output])


def _count(pcoll, name: str):
    return pcoll | f"Count{name}" >> beam.combiners.Count.Globally() | f"Name{name}" >> beam.Map(lambda n: (name, n))


def build(p: beam.Pipeline, opts: opt.FretOptions, model: str, run_id: str, started_at: dt.datetime) -> None:
    output = opts.output.rstrip("/")
    client = opt.client_config(opts, model)
    rerank = opt.rerank_config(opts)
    versions = {"query_likelihood": rerank.ql_prompt_version, "relevance_classification": rerank.rc_prompt_version}
    prompts = {name: load_prompt(name, versions.get(name)).hash for name in PROMPTS}  # the versions this run uses
    config = opt.effective_config(opts, model)
    decontam = opt.decontam_config(opts)
    provenance = Provenance(llm_model=model, embedder=opts.embedder, prompts=prompts, params=config,
                            created_at=started_at)

    read = p | "ReadSeedPassages" >> ReadSeedPassages(opts.input, opts.input_format, opts.embedder,
                                                         opt.split_config(opts), opts.trust_remote_code)
    passages, dedupe_outcomes = read.passages | "DeduplicatePassages" >> DeduplicatePassages()
    journal = journal_dir(output)
    llm = StageSettings(client, opts.llm_batch_size, opts.progress, journal, opt.failure_policy(opts))
    queries = passages | "GenerateQueries" >> GenerateQueries(llm, opt.generation_config(opts))
    eval_index = p | "LoadEvalSet" >> LoadEvalIndex(opts.decontaminate, decontam)
    kept_queries, filter_outcomes = ((queries["queries"], eval_index)
                                     | "FilterQueries" >> FilterQueries(opt.near_dup_config(opts), decontam))
    reused = [_count(queries["reused"], "journal_hits_generate")]
    retrieved = ((passages, kept_queries)
                 | "RetrieveCandidates" >> RetrieveCandidates(opts.embedder, index_dir(output), opts.num_neighbors,
                                                                opts.index_shard_size, opts.embed_batch_size,
                                                                progress=opts.progress,
                                                                trust_remote_code=opts.trust_remote_code,
                                                                journal_folder=journal))
    candidates = retrieved["candidates"]
    reused.append(_count(retrieved["reused"], "journal_hits_embed"))
    # A rerank item is one query with N+1 candidates (2N+2 requests): a quarter of the batch size.
    reranked = candidates | "RerankAndMine" >> RerankAndMine(
        llm.batched(max(1, opts.llm_batch_size // 4)), rerank, opt.mining_config(opts), opts.keep_candidates)
    examples, late_outcomes = reranked["examples"], [reranked[OUTCOME]]
    token_usage = [queries[TOKENS], reranked[TOKENS]]
    reused.append(_count(reranked["reused"], "journal_hits_rerank"))
    rater = opt.rater_config(opts)
    if rater is not None:
        rated = examples | "RateExamples" >> RateExamples(llm, rater)
        examples, late_outcomes = rated["examples"], late_outcomes + [rated[OUTCOME]]
        token_usage.append(rated[TOKENS])
        reused.append(_count(rated["reused"], "journal_hits_rate"))
    clean = (examples, eval_index) | "DecontaminatePositives" >> DecontaminateExamples(decontam)
    examples = clean.examples | "Stamp" >> beam.Map(lambda ep, prov: stamp(ep[0], prov), provenance)
    written = clean.examples | "Written" >> beam.Map(lambda ep: Outcome(ep[1], "written"))

    examples | "WriteExamples" >> WriteRecords(TrainingExample, f"{output}/examples/part", opts.output_shards)

    final = ((read[OUTCOME], dedupe_outcomes, queries[OUTCOME], filter_outcomes, *late_outcomes,
              clean[OUTCOME], written)
             | "AllOutcomes" >> beam.Flatten()
             | "ResolveOutcomes" >> ResolveOutcomes())
    (final
     | "DeadOnly" >> beam.FlatMap(lambda o: [o.record] if o.status == "dead_lettered" else [])
     | "WriteDeadLetters" >> WriteRecords(DeadLetter, f"{output}/dead_letters/part", opts.output_shards))
    (final
     | "FilteredOnly" >> beam.FlatMap(lambda o: [o.record] if o.status == "filtered" else [])
     | "WriteFiltered" >> WriteRecords(FilteredRecord, f"{output}/filtered/part", opts.output_shards))

    units = ((read.passages, read[OUTCOME]) | "Units" >> beam.Flatten()
             | "CountUnits" >> beam.combiners.Count.Globally())
    stage_counts = ([_count(read.passages, "passages_after_split"), _count(read[OUTCOME], "unreadable_records"),
                     _count(passages, "unique_passages"), _count(queries["queries"], "queries_generated"),
                     _count(kept_queries, "queries_after_filters"), _count(candidates, "queries_retrieved"),
                     _count(retrieved["embedded"], "passages_embedded"), *reused]
                    | "StageCounts" >> beam.Flatten()
                    | "StageDict" >> beam.combiners.ToDict())
    events = ((final | "OutcomeEvents" >> beam.Map(lambda o: ("outcome", o)),
               examples | "ExampleEvents" >> beam.Map(lambda e: ("example", example_stats(e))))
              | "Events" >> beam.Flatten())
    meta = dict(run_id=run_id, started_at=started_at, llm_model=model, embedder=opts.embedder, prompts=prompts,
                config=config, resumed=opts.resume,
                ranking_precision={"ql_decimals": rerank.ql_decimals, "rc_decimals": rerank.rc_decimals})
    tokens = token_usage | "AllTokens" >> beam.Flatten() | "SumTokens" >> beam.CombineGlobally(SumTokens())
    (events
     | "Summarize" >> beam.CombineGlobally(ManifestCombine())
     | "WriteManifest" >> beam.Map(write_manifest, beam.pvalue.AsSingleton(stage_counts),
                                   beam.pvalue.AsSingleton(units), beam.pvalue.AsSingleton(tokens),
                                   f"{output}/manifest.json", meta))


def run(argv=None, save_main_session: bool = True, test_pipeline=None):
    """Build and run the job. Returns the PipelineResult (after it finished, on DirectRunner)."""
    argv = expand_config(list(sys.argv[1:] if argv is None else argv))
    pipeline_options = PipelineOptions(argv)
    pipeline_options.view_as(SetupOptions).save_main_session = save_main_session
    opts = pipeline_options.view_as(opt.FretOptions)
    if not opts.input or not opts.output:
        raise ValueError("--input and --output are required, e.g. --input samples/passages.jsonl --output out/run1")
    dry_run = pipeline_options.view_as(TestOptions).dry_run  # translate for the runner, submit nothing
    if not dry_run:
        # Local problems first: a user with a full output folder and no server running needs to
        # hear about --resume/--overwrite, not about the server.
        check_inputs(opts.input)
        prepare_output(opts.output, opts.overwrite, opts.resume, apply=False)
    if opts.llm_serve:  # in-worker vLLM: no server exists until the workers start one
        model = opts.llm_model or "fret-local"
    else:
        base = opts.llm_url.split(",")[0].strip()
        model = opts.llm_model or discover_model(base, opt.api_key(opts))
    if not dry_run:
        if not opts.llm_serve:
            check_scoring_support(opt.client_config(opts, model), opts.rc_method)
        prepare_output(opts.output, opts.overwrite, opts.resume)
    run_id = uuid.uuid4().hex[:12]
    started_at = dt.datetime.now(dt.timezone.utc)
    p = test_pipeline or beam.Pipeline(options=pipeline_options)
    Progress.reset()
    build(p, opts, model, run_id, started_at)
    result = p.run()
    result.wait_until_finish()
    if not dry_run:
        remove_index(opts.output)  # the search's shard files: scratch, not part of the dataset
    return result


def abort_message(exc: BaseException) -> str | None:
    """The failure guard's one-line message, dug out of the runner's wrapped traceback."""
    match = re.search(r"fret aborted the job: [^\n]*", str(exc))
    return match.group(0) if match else None


def main(argv=None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    try:
        result = run(argv)
    except Exception as exc:  # noqa: BLE001 - the runner wraps worker errors; show ours plainly
        message = abort_message(exc)
        if message is None:
            raise
        print(f"[fret] {message}", file=sys.stderr)
        return 2
    print(f"[fret] job state: {result.state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
