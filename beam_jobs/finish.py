"""From retrieved candidates to written records: rerank and mine, rate, decontaminate, stamp, write.

Shared by the one-pipeline job and the last pipeline of each wave; the steps are applied in the
caller's scope, so their names are the job's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import apache_beam as beam

from beam_jobs import options as opt
from beam_jobs import rerank_options as ropt
from beam_jobs.common import OUTCOME, TOKENS
from beam_jobs.cross_encode import CrossEncodeCandidates
from beam_jobs.filters import DecontaminateExamples
from beam_jobs.identities import journal_models
from beam_jobs.llm_stage import StageSettings
from beam_jobs.rate import RateExamples
from beam_jobs.rerank import RerankAndMine
from beam_jobs.write import WriteRecords
from pipeline.accounting import Outcome
from pipeline.examples import stamp
from pipeline.rerank import RerankConfig, assemble
from pipeline.prompts import load_prompt
from schemas import DeadLetter, FilteredRecord, Provenance, TrainingExample

PROMPTS = ("query_generation", "query_likelihood", "relevance_classification", "quality_rater")


def run_metadata(opts: opt.FretOptions, model: str, run_id: str, started_at: dt.datetime) -> tuple[Provenance, dict]:
    """The provenance stamped on every example, and the manifest's description of the run."""
    rerank = ropt.rerank_config(opts)
    versions = {"query_likelihood": rerank.ql_prompt_version, "relevance_classification": rerank.rc_prompt_version}
    prompts = {name: load_prompt(name, versions.get(name)).hash for name in PROMPTS}  # the versions this run uses
    config = opt.effective_config(opts, model)
    provenance = Provenance(llm_model=model, embedder=opt.embedder_label(opts), prompts=prompts, params=config,
                            created_at=started_at)
    meta = dict(run_id=run_id, started_at=started_at, llm_model=model, embedder=opt.embedder_label(opts), prompts=prompts,
                config=config, resumed=opts.resume,
                ranking_precision={"ql_decimals": rerank.ql_decimals, "rc_decimals": rerank.rc_decimals},
                scoring={"scores": ",".join(rerank.scores), "score_order": rerank.score_order, "ql_path": rerank.ql_path,
                         "rc_prompt": load_prompt("relevance_classification", rerank.rc_prompt_version).id},
                journal_models=journal_models(opts, model))  # what every stage's journal keys name
    return provenance, meta


def rerank_to_examples(candidates, eval_index, opts: opt.FretOptions, llm: StageSettings, rerank: RerankConfig,
                       provenance: Provenance, models: dict[str, str]) -> dict:
    """(query, passage, candidates) -> {"examples": stamped TrainingExamples, "outcomes": the
    outcomes these stages decide (written ones included), "tokens": UsageMeter collections,
    "reused": {counter name: journal hits}}."""
    # A rerank item is one query with N+1 candidates (2N+2 requests), or one passage with the
    # queries that retrieved it (about as many): a quarter of the batch size.
    outcomes, tokens, reused = [], [], {}
    if "ce" in rerank.scores:  # the cross-encoder's scores ride on the candidates into fusion
        ce = candidates | "CrossEncode" >> CrossEncodeCandidates(
            dataclasses.replace(llm, client=ropt.reranker_client(opts), journal_model=models["cross_encoder"]),
            opts.reranker_api)
        candidates = ce["candidates"]
        outcomes.append(ce[OUTCOME])
        tokens.append(ce[TOKENS])
        reused["journal_hits_ce"] = ce["reused"]
    if not ropt.needs_llm_scores(opts):  # the cross-encoder alone: fused without an LLM request
        fused = candidates | "RerankAndMine" >> beam.FlatMap(
            _fuse_without_llm, rerank, ropt.mining_config(opts), opts.keep_candidates).with_outputs(OUTCOME,
                                                                                                 main="examples")
        examples = fused["examples"]
        outcomes.append(fused[OUTCOME])
    else:
        reranked = candidates | "RerankAndMine" >> RerankAndMine(
            llm.batched(max(1, opts.llm_batch_size // 4)), rerank, ropt.mining_config(opts), opts.keep_candidates)
        examples = reranked["examples"]
        outcomes.append(reranked[OUTCOME])
        tokens.append(reranked[TOKENS])
        reused["journal_hits_score"] = reranked["reused"]  # pairs, in either --score_order
    rater = opt.rater_config(opts)
    if rater is not None:
        rated = examples | "RateExamples" >> RateExamples(llm, rater)
        examples, outcomes = rated["examples"], outcomes + [rated[OUTCOME]]
        tokens.append(rated[TOKENS])
        reused["journal_hits_rate"] = rated["reused"]
    clean = (examples, eval_index) | "DecontaminatePositives" >> DecontaminateExamples(opt.decontam_config(opts))
    stamped = clean.examples | "Stamp" >> beam.Map(lambda ep, prov: stamp(ep[0], prov), provenance)
    written = clean.examples | "Written" >> beam.Map(lambda ep: Outcome(ep[1], "written"))
    return {"examples": stamped, "outcomes": [*outcomes, clean[OUTCOME], written], "tokens": tokens,
            "reused": reused}


def _fuse_without_llm(item, rerank: RerankConfig, mining, keep: bool):
    """--scores ce alone: the cross-encoder's ranking is the fused one; QL and RC stay NaN."""
    import math

    from beam_jobs.rerank import _emit_example
    from schemas import PairScore

    query, seed, candidates = item
    unscored = {c.passage_id: PairScore(query_id=query.query_id, passage_id=c.passage_id, ql=math.nan,
                                        ql_mean=math.nan, rc_label_logprobs={}) for c in candidates}
    result = assemble(query, candidates, unscored, rerank)
    yield from _emit_example(query, seed, [result] if isinstance(result, DeadLetter) else result, mining, keep)


def write_records(examples, final_outcomes, output: str, shards: int, part: str = "part") -> None:
    """Examples, dead letters and filtered records as Parquet shards named `<part>-SSSSS-of-NNNNN`."""
    examples | "WriteExamples" >> WriteRecords(TrainingExample, f"{output}/examples/{part}", shards)
    (final_outcomes
     | "DeadOnly" >> beam.FlatMap(lambda o: [o.record] if o.status == "dead_lettered" else [])
     | "WriteDeadLetters" >> WriteRecords(DeadLetter, f"{output}/dead_letters/{part}", shards))
    (final_outcomes
     | "FilteredOnly" >> beam.FlatMap(lambda o: [o.record] if o.status == "filtered" else [])
     | "WriteFiltered" >> WriteRecords(FilteredRecord, f"{output}/filtered/{part}", shards))
