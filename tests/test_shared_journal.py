"""--journal PATH: finished work shared across runs. A run with more neighbours pays only for the
new pairs and writes what a fresh run writes; a changed input of a result never reuses it; two
runs writing one journal at once leave it whole."""

import dataclasses
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipeline import journal
from pipeline.generation import GenerationConfig
from pipeline.rerank import Candidate, RerankConfig
from pipeline.testing.stub_llm import StubLLM
from schemas import Passage, QueryRecord
from tests.jobkit import read_output, run_job, write_jsonl
from tests.test_fret_job_stub import PASSAGES, generate, scorer
from tests.test_reliability import is_probe
from tests.test_waves import _comparable


def test_a_run_with_more_neighbours_pays_only_for_the_new_pairs(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    shared = str(tmp_path / "shared-journal")
    with StubLLM(generate_fn=generate, logprob_fn=scorer) as stub:
        run_job(inp, tmp_path / "n2", stub.base_url, "--num_neighbors", "2", "--journal", shared)
        grown = run_job(inp, tmp_path / "n4", stub.base_url, "--num_neighbors", "4", "--journal", shared)
        fresh = run_job(inp, tmp_path / "fresh", stub.base_url, "--num_neighbors", "4")
    counts, tokens = grown["manifest"]["counts"], grown["manifest"]["tokens"]
    pairs = sum(len(e["candidates"]) for e in grown["examples"])
    assert len(grown["examples"]) == len(PASSAGES) and counts["journal_hits_generate"] == len(PASSAGES)
    assert "generate" not in tokens, "every query came from the journal"
    assert 0 < counts["journal_hits_score"] < pairs
    # one RC request per pair the first run did not score, none for the others
    assert tokens["rc"]["requests"] == pairs - counts["journal_hits_score"]
    assert _comparable(grown, ("llm_requests", "journal_hits_generate", "journal_hits_score", "queries_generated")
                       )[:3] == _comparable(fresh, ("llm_requests", "journal_hits_generate", "journal_hits_score",
                                                    "queries_generated"))[:3]
    assert not (tmp_path / "n4" / "_journal").exists(), "the shared journal is where the run writes"


def test_a_journal_inside_the_output_is_refused(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    with pytest.raises(ValueError, match="inside --output"):
        run_job(inp, tmp_path / "out", "http://127.0.0.1:9", "--journal", str(tmp_path / "out" / "cache"))


def test_every_input_of_a_result_is_in_its_key():
    passage = Passage(id="p", title="T", text="some text", source_id="s", chunk=0)
    query = QueryRecord(query_id="q", passage_id="p", task="t", query="a query")
    candidate = Candidate(passage_id="p", title="T", text="some text", is_seed=True, retrieval_rank=1,
                          retrieval_score=0.5)
    generation, rerank = GenerationConfig(), RerankConfig()
    base = journal.generation_key("m", "h", generation, passage)
    assert len({base, journal.generation_key("other-model", "h", generation, passage),
                journal.generation_key("m", "other-prompt", generation, passage),
                journal.generation_key("m", "h", dataclasses.replace(generation, temperature=0.1), passage),
                journal.generation_key("m", "h", generation, passage.model_copy(update={"text": "other"}))}) == 5
    pair = journal.pair_key("m", ("hq", "hr"), rerank, query, candidate)
    assert len({pair, journal.pair_key("other-model", ("hq", "hr"), rerank, query, candidate),
                journal.pair_key("m", ("hq", "other-rc-prompt"), rerank, query, candidate),
                journal.pair_key("m", ("hq", "hr"), dataclasses.replace(rerank, rc_score="top_label_logprob"), query,
                                 candidate),
                journal.pair_key("m", ("hq", "hr"), rerank, query.model_copy(update={"query": "another"}), candidate),
                journal.pair_key("m", ("hq", "hr"), rerank, query, dataclasses.replace(candidate, text="other"))}) == 6
    assert journal.embedding_key("e", "x") != journal.embedding_key("e", "y") != journal.embedding_key("f", "y")


def test_two_runs_writing_one_journal_at_once_corrupt_nothing(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    shared = tmp_path / "shared-journal"
    with StubLLM(generate_fn=generate, logprob_fn=scorer) as stub:
        def start(name):
            command = [sys.executable, "-m", "beam_jobs.fret_job", "--input", str(inp), "--output", str(tmp_path / name),
                       "--llm_url", stub.base_url, "--journal", str(shared), "--progress", "false",
                       "--llm_batch_size", "2"]
            return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONPATH": os.getcwd()})
        runs = [start("a"), start("b")]
        try:
            logs = [r.communicate(timeout=600)[0].decode() for r in runs]
        finally:  # a run still going after a failure is stopped: the test started it
            for r in runs:
                if r.poll() is None:
                    r.kill()
                    r.wait()
        assert [r.returncode for r in runs] == [0, 0], logs
        before = len(stub.requests)
        again = run_job(inp, tmp_path / "c", stub.base_url, "--journal", str(shared))
        sent = [r for r in stub.requests[before:] if not is_probe(r)]
    files = [p for p in shared.rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.name.startswith(".")], "no partial file is left"
    for path in files:
        pq.read_table(path)  # every file whole
    assert not sent, "the third run finds every result in the journal"
    assert _comparable(again, ("llm_requests", "journal_hits_generate", "journal_hits_score", "queries_generated",
                               "journal_hits_embed", "passages_embedded"))[:3] == _comparable(
        read_output(tmp_path / "a"), ("llm_requests", "journal_hits_generate", "journal_hits_score",
                                      "queries_generated", "journal_hits_embed", "passages_embedded"))[:3]


def test_a_changed_model_behind_the_same_name_never_reuses_the_journal(tmp_path):
    """A served name stays when the checkpoint behind it changes, and `fret train --output` rewrites
    its folder in place: the journal keys name the weights too (pipeline.model_identity)."""
    import shutil

    from pipeline.model_paths import DEFAULT_EMBEDDER, resolve_model_path

    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    shared = str(tmp_path / "shared-journal")
    embedder = tmp_path / "embedder"
    shutil.copytree(resolve_model_path(DEFAULT_EMBEDDER), embedder)
    flags = ("--num_neighbors", "2", "--journal", shared, "--embedder", str(embedder))

    def sent(stub, output):
        before = len(stub.requests)
        out = run_job(inp, tmp_path / output, stub.base_url, *flags)
        return [r for r in stub.requests[before:] if not is_probe(r)], out["manifest"]["counts"]

    with StubLLM(generate_fn=generate, logprob_fn=scorer, root="/models/llm-v1") as v1:
        first, counts = sent(v1, "a")
        assert first and counts.get("journal_hits_embed", 0) == 0
        again, counts = sent(v1, "b")
        assert not again and counts["journal_hits_embed"] == counts["unique_passages"], "same weights: all reused"
    with StubLLM(generate_fn=generate, logprob_fn=scorer, root="/models/llm-v2") as v2:  # same name, new weights
        swapped, counts = sent(v2, "c")
        assert swapped and counts.get("journal_hits_generate", 0) == counts.get("journal_hits_score", 0) == 0, \
            "every LLM result asked again"
        assert counts["journal_hits_embed"] == counts["unique_passages"], "the embedder did not change"
        (embedder / "README.md").write_text("a new model card changes no vector")
        assert sent(v2, "d")[1]["journal_hits_embed"] == counts["unique_passages"]
        weights = embedder / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1  # one changed bit in the last weight: a retrained model under the same path
        weights.write_bytes(bytes(data))
        _, counts = sent(v2, "e")
        assert counts.get("journal_hits_embed", 0) == 0 and counts["passages_embedded"] == counts["unique_passages"]
    models = {name: read_output(tmp_path / name)["manifest"]["journal_models"] for name in "ace"}
    assert models["a"]["llm"] == "stub-llm (/models/llm-v1)" and models["c"]["llm"] == "stub-llm (/models/llm-v2)"
    assert models["a"]["embedder"] == models["c"]["embedder"] != models["e"]["embedder"]
    assert models["e"]["embedder"].startswith(f"{embedder}#")


def test_model_identity_counts_the_bytes_that_change_results(tmp_path):
    from pipeline.model_identity import folder_digest, local_identity, served_identity

    model = tmp_path / "m"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "1_Pooling" / "config.json").write_text("{}")
    base = folder_digest(str(model))
    (model / "README.md").write_text("card")
    (model / ".fret-owner.json").write_text("{}")
    assert folder_digest(str(model)) == base, "a model card or a marker changes no result"
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert folder_digest(str(model)) != base
    assert local_identity("m", str(model)) == f"m#{folder_digest(str(model))}"
    assert local_identity("org/hub-id", "org/hub-id") == "org/hub-id", "not a local folder: the name"
    assert served_identity("llm", "/ckpt/a") != served_identity("llm", "/ckpt/b") != served_identity("llm", None)
    assert served_identity("llm", "llm") == served_identity("llm", None) == "llm"
