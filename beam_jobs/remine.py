"""`fret remine SOURCE --output NEW [mining flags]`: a Beam job that rebuilds every example of a
finished run from the candidate scores it stored (pipeline.remine), filters their positives against
the run's evaluation set again (a relabelled positive is a new text), copies its dead letters and
filtered records, and writes a manifest that accounts for every input. No LLM, no embedder."""

from __future__ import annotations

import argparse
import datetime as dt
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import options as opt
from beam_jobs import rerank_options as ropt
from beam_jobs.common import OUTCOME
from beam_jobs.filters import DecontaminateExamples, LoadEvalIndex
from beam_jobs.finish import write_records
from beam_jobs.outputs import read_manifest, shards
from beam_jobs.preflight import matched_files, partial_removed_on_failure, prepare_output
from beam_jobs.write import SumTokens, write_manifest, summarize
from pipeline import processes
from pipeline.accounting import Outcome
from pipeline.examples import stamp
from pipeline.llm.usage import UsageMeter
from pipeline.ownership import new_run_id
from pipeline.remine import REMINE_FLAGS, remine
from schemas import DeadLetter, FilteredRecord, Provenance, TrainingExample
from schemas.arrow import from_row

# counts the remined examples decide (recomputed), and the source's requests (this run sends none)
_NOT_COPIED = ("outcome:", "examples_", "negatives_written", "extra_positives", "never_negative_",
               "written_negative_", "llm_", "ql_")


def source_options(source_config: str, argv: list[str]) -> tuple[opt.FretOptions, list[str]]:
    """(the source run's options with the mining flags of `argv` over them, the rest of `argv`: Beam's
    flags). A fret flag that is not a mining flag is refused, and so is an unknown one."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    opt.FretOptions._add_argparse_args(parser)  # noqa: SLF001 - Beam's way of listing an options class
    defaults = parser.parse_args([])
    for action in parser._actions:  # noqa: SLF001 - only the flags given: `--relabel gecko` over a `never`
        action.default = argparse.SUPPRESS  # run is a change even though gecko is the default
    given, beam_args = parser.parse_known_args(argv)
    opt.check_known_flags(beam_args)
    changed = set(vars(given))
    others = sorted(changed - set(REMINE_FLAGS))
    if others:
        raise ValueError(f"remine changes how stored scores become examples; --{', --'.join(others)} changes what "
                         "was scored and needs a new run (fret run ... --journal PATH reuses the finished work)")
    opts = PipelineOptions([]).view_as(opt.FretOptions)
    for name, value in json.loads(source_config).items():
        if name in vars(defaults):
            setattr(opts, name, value)
    for name in changed:
        setattr(opts, name, getattr(given, name))
    return opts, beam_args


def run_remine(source: str, output: str, argv: list[str], overwrite: bool = False) -> dict:
    """Remine `source` into `output` with the mining flags (and Beam's flags) of `argv`; returns the
    new manifest as a dict."""
    source, output = source.rstrip("/"), output.rstrip("/")
    if source == output:
        raise ValueError("fret remine writes a new folder: give an --output other than the source")
    manifest = read_manifest(source)
    opts, pipeline_args = source_options(manifest["config"], argv)
    source_config = json.loads(manifest["config"])
    if not source_config.get("keep_candidates", True):
        raise ValueError(f"{source} was written with --keep-candidates false: it stores no candidate scores to "
                         "remine; only a new run can mine it differently")
    source_relabel = source_config.get("relabel", "gecko")  # runs from before --relabel relabelled
    if source_config.get("quality_filter") and opts.relabel != source_relabel:
        raise ValueError(f"{source} was rated (--quality-filter): the LLM judged each query with the positive that "
                         f"--relabel {source_relabel} chose, and --relabel {opts.relabel} would keep "
                         "those ratings on other positives: that needs a new run, which rates them")
    mining = ropt.mining_config(opts)
    if opts.decontaminate:  # the run's evaluation files, read again for relabelled positives
        matched_files(opts.decontaminate, "the source run's --decontaminate")
    opts.output = output
    run_id, started_at = new_run_id(), dt.datetime.now(dt.timezone.utc)
    prepare_output(output, overwrite, run_id=run_id)
    config = opt.effective_config(opts, manifest["llm_model"])
    provenance = Provenance(llm_model=manifest["llm_model"], embedder=manifest["embedder"],
                            prompts=manifest["prompts"], params=config, created_at=started_at)
    processes.guard()  # SIGTERM, SIGHUP: the partial shards go too (remine starts no process)
    with partial_removed_on_failure(output):  # no shard stays without its manifest, as with fret run
        _remine_pipeline(source, output, manifest, opts, pipeline_args, mining, provenance, config, run_id,
                         started_at)
    return read_manifest(output)


def _remine_pipeline(source, output, manifest, opts, pipeline_args, mining, provenance, config, run_id, started_at):
    keep = opts.keep_candidates
    decontam = opt.decontam_config(opts)
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as p:
        rebuilt = (p
                   | "ReadExamples" >> beam.Create(shards(source, "examples"))
                   | "ReadRows" >> beam.io.ReadAllFromParquet()
                   | "Remine" >> beam.Map(lambda row: remine(from_row(TrainingExample, row), mining, keep))
                   | "KeyByExample" >> beam.Map(lambda e: (e, e.example_id)))
        # A relabelled positive may quote the evaluation set where the source's did not: the run's
        # filter again, with the run's --decontaminate files (an empty index without them).
        eval_index = p | "LoadEvalSet" >> LoadEvalIndex(opts.decontaminate, decontam)
        clean = (rebuilt, eval_index) | "DecontaminatePositives" >> DecontaminateExamples(decontam)
        examples = clean.examples | "Stamp" >> beam.Map(lambda ep: stamp(ep[0], provenance))
        outcomes = [clean[OUTCOME]]
        for part, model, status in (("dead_letters", DeadLetter, "dead_lettered"), ("filtered", FilteredRecord,
                                                                                   "filtered")):
            paths = shards(source, part)
            records = (p | f"Read{part}" >> beam.Create(paths) | f"Rows{part}" >> beam.io.ReadAllFromParquet()
                       | f"Parse{part}" >> beam.Map(lambda row, m: from_row(m, row), model))
            outcomes.append(records | f"Outcome{part}" >> beam.Map(lambda r, s: Outcome(r.record_id, s, r), status))
        not_written = tuple(outcomes) | "Outcomes" >> beam.Flatten()
        write_records(examples, not_written, output, int(opts.output_shards or 0))
        written = examples | "Written" >> beam.Map(lambda e: Outcome(e.example_id, "written"))
        final = (not_written, written) | "FinalOutcomes" >> beam.Flatten()
        counts = {k: v for k, v in manifest["counts"].items() if not k.startswith(_NOT_COPIED)}
        meta = dict(run_id=run_id, started_at=started_at, llm_model=manifest["llm_model"],
                    embedder=manifest["embedder"], prompts=manifest["prompts"], config=config,
                    ranking_precision=manifest.get("ranking_precision") or {}, scoring=manifest.get("scoring") or {},
                    journal_models=manifest.get("journal_models") or {},
                    scores_from=f"{source} (run {manifest['run_id']}): remined, no LLM request")
        tokens = p | "NoTokens" >> beam.Create([UsageMeter()]) | "SumTokens" >> beam.CombineGlobally(SumTokens())
        (summarize(final, examples)
         | "WriteManifest" >> beam.Map(write_manifest, counts, manifest["inputs"], beam.pvalue.AsSingleton(tokens),
                                       f"{output}/manifest.json", meta))

