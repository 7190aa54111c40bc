"""The job in waves (--wave_size): one machine, bounded memory, the same output as one pipeline.

The DirectRunner holds every PCollection a later stage reads, so one pipeline's memory grows
with the corpus. In waves the corpus is cut by a hash of each record's source
(pipeline.waves) and the job runs as a sequence of ordinary Beam pipelines:

1. plan: read everything once; each wave's passages go to chunk files; duplicate passages are
   decided on small keys (id, source, text hash) over the whole corpus.
2. prepare, per wave: drop the duplicates, embed the passages into that wave's index shard
   files, generate queries (to chunk files).
3. filter: exact and near-duplicate queries and decontamination, over every wave's queries
   reduced to (query, accounting unit).
4. finish, per wave: search every wave's index shards, rerank, rate, decontaminate, write the
   wave's shards, and keep the wave's part of the manifest.

With --queries (beam_jobs.given_waves) the plan also joins the given rows to the corpus on keys,
and prepare hands each wave's queries their seed passages instead of generating queries.

The driver then merges the manifest parts. Every pipeline holds one wave or small keys, never
the corpus. Records pass between pipelines as files under OUTPUT/_waves (beam_jobs.scratch).
"""

from __future__ import annotations

import datetime as dt
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import options as opt
from beam_jobs import rerank_options as ropt
from beam_jobs.common import OUTCOME, TOKENS
from beam_jobs.filters import FilterQueries, LoadEvalIndex
from beam_jobs.finish import rerank_to_examples, run_metadata, write_records
from beam_jobs.generate import generation_stage
from beam_jobs.given_waves import dedupe_member, member_key, member_keys, plan_given, seeded_queries
from beam_jobs.index_files import index_dir
from beam_jobs.read import ALIASES, DROPS, DeduplicatePassages, ReadSeedPassages
from beam_jobs.retrieve import REFUSED, Embed, EmbedPassagesOnce, SearchQueries, refusal_outcomes, write_index_shards
from beam_jobs.scratch import (ReadWaveChunks, read_pickled, save, scratch_dir, scratch_files, wave_files,
                               write_chunks)
from beam_jobs.write import ResolveOutcomes, SumTokens, count_as, write_manifest, summarize
from pipeline import passage_dedupe as dedupe
from pipeline import waves as w
from pipeline.accounting import unit_id
from pipeline.progress import Progress


def count_records(patterns: str, input_format: str = "auto", stop_after: int | None = None) -> int:
    """Input records, counted cheaply (non-blank JSONL lines, Parquet row counts): the number of
    waves is fixed before anything is read. With stop_after, counting stops once past it."""
    import pyarrow.parquet as pq

    from beam_jobs.read import is_parquet

    total = 0
    paths = {m.path: m for pattern in (p.strip() for p in patterns.split(",") if p.strip())
             for m in FileSystems.match([pattern])[0].metadata_list}  # once each, however many globs match it
    for meta in paths.values():
        with FileSystems.open(meta.path) as f:
            if is_parquet(meta.path, input_format):
                try:
                    total += pq.ParquetFile(f).metadata.num_rows
                except Exception as exc:  # noqa: BLE001 - arrow raises several kinds for a bad file
                    raise ValueError(f"input {meta.path} is not a readable Parquet file: {exc}") from None
            else:
                total += sum(1 for line in f if line.strip())
        if stop_after is not None and total > stop_after:
            return total
    return total


def _write_counts(counts: list, path: str) -> None:
    (counts | "Counts" >> beam.Flatten() | "CountDict" >> beam.combiners.ToDict()
     | "WriteCounts" >> beam.Map(save, path))


def _write_tokens(meters: list, path: str) -> None:
    (meters | "AllTokens" >> beam.Flatten() | "SumTokens" >> beam.CombineGlobally(SumTokens())
     | "WriteTokens" >> beam.Map(save, path))


# --- 1. plan ---------------------------------------------------------------------------------

def build_plan(p, opts: opt.FretOptions, folder: str, waves: int) -> None:
    given = bool(opts.queries)
    read = p | "ReadSeedPassages" >> ReadSeedPassages(opts.input, opts.input_format, opts.embedder,
                                                         opt.split_config(opts), opts.trust_remote_code,
                                                         spread=False, fields=opt.input_fields(opts))
    write_chunks(read.passages | "PassageWave" >> beam.Map(lambda ps: (w.wave_of(ps.source_id, waves), ps)),
            "WritePassages", folder, "passages", waves)
    deduped = (read.passages
               | "Keys" >> beam.Map(dedupe_member, given)
               | "DeduplicatePassages" >> DeduplicatePassages(key=member_key, keys_of=member_keys))
    drops = deduped[DROPS] | "DropWave" >> beam.Map(
        lambda md: (w.wave_of(md[0][0].source_id, waves), (md[0][0].unit, md[1])))
    write_chunks(drops, "WriteDrops", folder, "drops", waves)
    # an unreadable record's unit is its source
    write_chunks(read[OUTCOME] | "OutcomeWave" >> beam.Map(lambda o: (w.wave_of(o.unit_id, waves), o)),
            "WriteReadOutcomes", folder, "outcomes", waves)
    counts = [count_as(read.passages, "passages_after_split"), count_as(read[OUTCOME], "unreadable_records")]
    if given:  # the units are the query rows, and any corpus record that does not join the pool
        joined = plan_given(p, opts, folder, waves, deduped["kept"], deduped[ALIASES])
        units, counts = [*joined["units"], read[OUTCOME], drops], counts + joined["counts"]
    else:  # the units are the seed passages, and any record that did not become one
        units = [read.passages, read[OUTCOME]]
    _write_counts([*counts, count_as(units | "Units" >> beam.Flatten(), "units")], f"{folder}/counts/plan.pkl")


# --- 2. prepare, per wave --------------------------------------------------------------------

def _apply_drops(passage, drops: dict):
    drop = drops.get(unit_id(passage))
    if drop is None:
        yield passage
    else:
        yield beam.pvalue.TaggedOutput(OUTCOME, dedupe.drop_outcome(passage, drop))


def build_prepare(p, opts: opt.FretOptions, model: str, folder: str, wave: int, models: dict[str, str]) -> None:
    output = opts.output.rstrip("/")
    journal = f"{opt.journal_root(opts)}/w{wave:05d}"  # per wave: a lookup reads its own wave's work only
    drops = p | "ReadDrops" >> ReadWaveChunks(wave_files(folder, "drops", wave))
    sorted_out = (p
                  | "ReadPassages" >> ReadWaveChunks(wave_files(folder, "passages", wave))
                  | "ApplyDrops" >> beam.FlatMap(_apply_drops, beam.pvalue.AsDict(drops))
                  .with_outputs(OUTCOME, main="passages"))
    passages = sorted_out.passages
    counts, tokens, outcomes = [], [], [sorted_out[OUTCOME]]
    if opts.queries:  # given queries: the wave's pool gains the given texts that joined it
        joined = p | "ReadJoined" >> ReadWaveChunks(wave_files(folder, "joined", wave))
        pool = (passages, joined) | "Pool" >> beam.Flatten()
        query_pairs = seeded_queries(p, pool, folder, wave)
    else:
        pool = passages
        generated = generation_stage(passages, opt.llm_settings(opts, model, journal, models), opts)
        query_pairs = generated["queries"]
        outcomes += generated["outcomes"]
        tokens += generated["tokens"]
        counts += [*generated["counts"], *generated["reused"]]
    embed = Embed(opt.retrieval_embedder(opts), opts.embed_batch_size, "passages", progress=opts.progress,
                  trust_remote_code=opts.trust_remote_code, journal_folder=journal,
                  batch_tokens=opts.embed_batch_tokens, journal_name=models["embedder"])
    vectors = pool | "EmbedPassages" >> EmbedPassagesOnce(embed)
    write_index_shards(vectors["blocks"], opts.index_shard_size, f"{index_dir(output)}/w{wave:05d}")
    write_chunks(query_pairs | "QueryWave" >> beam.Map(lambda qp: (wave, qp)), "WriteQueries", folder, "queries")
    write_chunks(query_pairs | "QueryKeys" >> beam.Map(lambda qp: (wave, w.query_key(qp))),
            "WriteQueryKeys", folder, "query_keys")
    # a passage the embedder refused: its queries are dead-lettered when this wave finishes
    write_chunks(vectors[REFUSED] | "RefusedWave" >> beam.Map(lambda pw: (wave, pw)), "WriteRefused", folder, "refused")
    refusals, refused_units = refusal_outcomes(vectors[REFUSED], p | "NoRefusedQueries" >> beam.Create([]),
                                               passages_are_units=not opts.queries)
    if opts.queries:  # a refused corpus record is one more input, as in one pipeline
        counts.append(count_as(refused_units, "units"))
    outcomes = (*outcomes, refusals) | "Outcomes" >> beam.Flatten()
    write_chunks(outcomes | "OutcomeWave" >> beam.Map(lambda o: (wave, o)), "WriteOutcomes", folder, "outcomes")
    _write_counts([*counts, count_as(passages, "unique_passages"),
                   count_as(vectors["embedded"], "passages_embedded"),
                   count_as(vectors[REFUSED], "passages_refused_by_embedder"),
                   count_as(vectors["reused"], "journal_hits_embed")],
                  f"{folder}/counts/prepare-w{wave:05d}.pkl")
    _write_tokens([*tokens, vectors[TOKENS]], f"{folder}/tokens/prepare-w{wave:05d}.pkl")


# --- 3. filter -------------------------------------------------------------------------------

def build_filter(p, opts: opt.FretOptions, folder: str, waves: int) -> None:
    decontam = opt.decontam_config(opts)
    queries = p | "ReadQueryKeys" >> ReadWaveChunks(wave_files(folder, "query_keys"))
    eval_index = p | "LoadEvalSet" >> LoadEvalIndex(opts.decontaminate, decontam)
    kept, outcomes = ((queries, eval_index) | "FilterQueries" >> FilterQueries(opt.near_dup_config(opts), decontam))
    write_chunks(kept | "KeptWave" >> beam.Map(lambda qu: (w.wave_of(qu[1].source_id, waves), qu[0].query_id)),
            "WriteKept", folder, "kept", waves)
    # these outcomes' units are passages: "<source>#<chunk>"
    write_chunks(outcomes | "OutcomeWave" >> beam.Map(lambda o: (w.wave_of(o.unit_id.rsplit("#", 1)[0], waves), o)),
            "WriteFilterOutcomes", folder, "outcomes", waves)
    _write_counts([count_as(kept, "queries_after_filters")], f"{folder}/counts/filter.pkl")


# --- 4. finish, per wave ---------------------------------------------------------------------

def build_finish(p, opts: opt.FretOptions, model: str, folder: str, wave: int, shard_paths: list[str],
                 provenance, models: dict[str, str]) -> None:
    output = opts.output.rstrip("/")
    journal = f"{opt.journal_root(opts)}/w{wave:05d}"
    kept_ids = (p | "ReadKept" >> ReadWaveChunks(wave_files(folder, "kept", wave))
                | "KeptKeys" >> beam.Map(lambda qid: (qid, True)))
    queries = (p
               | "ReadQueries" >> ReadWaveChunks(wave_files(folder, "queries", wave))
               | "KeepFiltered" >> beam.Filter(lambda qp, kept: qp[0].query_id in kept, beam.pvalue.AsDict(kept_ids)))
    # every wave's shard files exist already: the prepare pipelines wrote them
    paths = p | "ShardPaths" >> beam.Create([shard_paths])  # sorted by run_in_waves
    refused_passages = p | "ReadRefused" >> ReadWaveChunks(wave_files(folder, "refused", wave))
    found = (queries, paths, refused_passages) | "RetrieveCandidates" >> SearchQueries(
        opt.retrieval_embedder(opts), opts.num_neighbors, opts.embed_batch_size, progress=opts.progress,
        trust_remote_code=opts.trust_remote_code, embed_batch_tokens=opts.embed_batch_tokens)
    candidates = found["candidates"]
    refusals, _ = refusal_outcomes(p | "NoRefusedPassages" >> beam.Create([]), found[REFUSED],
                                   passages_are_units=True)
    eval_index = p | "LoadEvalSet" >> LoadEvalIndex(opts.decontaminate, opt.decontam_config(opts))
    tail = rerank_to_examples(candidates, eval_index, opts, opt.llm_settings(opts, model, journal, models),
                              ropt.rerank_config(opts), provenance, models)
    earlier = p | "ReadOutcomes" >> ReadWaveChunks(wave_files(folder, "outcomes", wave))
    final = ((earlier, refusals, *tail["outcomes"]) | "AllOutcomes" >> beam.Flatten()
             | "ResolveOutcomes" >> ResolveOutcomes())
    write_records(tail["examples"], final, output, opts.output_shards, part=f"part-w{wave:05d}")
    (summarize(final, tail["examples"])
     | "WriteSummary" >> beam.Map(save, f"{folder}/summary/w{wave:05d}.pkl"))
    _write_counts([count_as(candidates, "queries_retrieved"), count_as(found[REFUSED], "queries_refused_by_embedder"),
                   *(count_as(hits, name) for name, hits in tail["reused"].items())],
                  f"{folder}/counts/finish-w{wave:05d}.pkl")
    _write_tokens([found[TOKENS], *tail["tokens"]], f"{folder}/tokens/finish-w{wave:05d}.pkl")


# --- the driver ------------------------------------------------------------------------------

def _merged_counts(folder: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for path in scratch_files(folder, "counts"):
        for name, n in read_pickled(path).items():
            total[name] = total.get(name, 0) + n
    return total


def _merged(folder: str, kind: str):
    first, *rest = [read_pickled(path) for path in scratch_files(folder, kind)]
    for other in rest:
        first.merge(other)
    return first


def run_in_waves(pipeline_options: PipelineOptions, opts: opt.FretOptions, wave_size: int, model: str, run_id: str,
                 started_at: dt.datetime):
    """Run the job as 2 x waves + 2 pipelines; returns the last one's result. The manifest is
    the one-pipeline job's, with the number of waves in its counts."""
    output = opts.output.rstrip("/")
    folder = scratch_dir(output)
    waves = w.num_waves(count_records(opts.input, opts.input_format), wave_size)
    provenance, meta = run_metadata(opts, model, run_id, started_at)

    seconds: dict[str, float] = {}

    def run_one(phase: str, message: str, build, *args):
        if opts.progress:
            print(f"[fret] {message}", flush=True)
        Progress.reset()
        start = time.monotonic()
        p = beam.Pipeline(options=pipeline_options)
        build(p, opts, *args)
        result = p.run()
        result.wait_until_finish()
        seconds[phase] = round(time.monotonic() - start, 1)
        if opts.progress:
            print(f"[fret] {message}: done in {seconds[phase]:.0f} s", flush=True)
        return result

    run_one("plan", f"plan: {waves} wave(s) of about {wave_size} records", build_plan, folder, waves)
    for wave in range(waves):
        run_one(f"prepare-w{wave:05d}", f"wave {wave + 1}/{waves}: embed and generate", build_prepare, model, folder,
                wave, meta["journal_models"])
    run_one("filter", "filter queries over every wave", build_filter, folder, waves)
    shard_paths = sorted(m.path for m in FileSystems.match([f"{index_dir(output)}/*/shard-*.parquet"])[0].metadata_list)
    result = None
    for wave in range(waves):
        result = run_one(f"finish-w{wave:05d}", f"wave {wave + 1}/{waves}: search, rerank, write", build_finish, model,
                         folder, wave, shard_paths, provenance, meta["journal_models"])
    counts = _merged_counts(folder)
    units = counts.pop("units")
    counts["waves"] = waves
    write_manifest(_merged(folder, "summary"), counts, units, _merged(folder, "tokens"), f"{output}/manifest.json",
                   {**meta, "phase_seconds": seconds})
    return result
