"""Job options end to end with the stub LLM: Parquet input, several queries per passage,
decontamination, the auto-rater, and the Beam search over index shard files itself."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.testing.stub_llm import StubLLM
from tests.jobkit import run_job, write_jsonl
from tests.test_fret_job_stub import PASSAGES, generate, scorer


def rating_or_generate(prompt: str) -> str:
    if "You check training examples" in prompt:
        query = prompt.rsplit("\nQuery: ", 1)[1].split("\n", 1)[0]
        if "green tea" in query:
            return "I would rate this a four."  # the rater's answer is not JSON: the rating failed
        score = 1 if "mount everest" in query else 5
        return json.dumps({"score": score, "reason": "stub rating"})
    return generate(prompt)


@pytest.fixture(scope="module")
def llm():
    with StubLLM(generate_fn=rating_or_generate, logprob_fn=scorer) as stub:
        yield stub


def test_parquet_input_and_several_queries_per_passage(tmp_path, llm):
    table = pa.Table.from_pylist(PASSAGES)
    pq.write_table(table, tmp_path / "in.parquet")
    out = run_job(tmp_path / "in.parquet", tmp_path / "out", llm.base_url, "--queries_per_passage", "2")
    manifest = out["manifest"]
    # The stub writes the same query twice for a passage: the second is an exact duplicate.
    assert manifest["counts"]["queries_generated"] == 2 * len(PASSAGES)
    assert manifest["counts"]["queries_after_filters"] == len(PASSAGES)
    assert manifest["written"] == manifest["inputs"] == len(PASSAGES)  # a passage is written if any query is
    assert {e["seed_passage_id"] for e in out["examples"]} == {p["id"] for p in PASSAGES}
    assert all(e["knobs"]["query_length"] in ("short", "medium", "long") for e in out["examples"])


def test_decontamination_drops_examples_that_quote_the_eval_set(tmp_path, llm):
    """A BEIR-style query file (short texts) and a corpus file (a passage): the seed's query
    contains an eval query with words around it, and one positive passage quotes eight words in
    a row of a 17-word eval passage (n = 8 for it). Under the old 13-gram rule neither was caught."""
    queries = write_jsonl(tmp_path / "queries.jsonl", [
        {"_id": "1", "text": "what temperature does water boil at"},  # inside the seed query
        {"_id": "2", "text": "how hot should green tea water be"},  # a paraphrase of nothing generated
    ])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [
        {"_id": "d1", "title": "", "text": "Chefs agree that pasta is cooked in salted boiling water until it is "
                                           "soft enough to eat"},  # 17 words: n = 8
    ])
    out = run_job(write_jsonl(tmp_path / "in.jsonl", PASSAGES), tmp_path / "out", llm.base_url,
                  "--decontaminate", f"{queries},{corpus}")
    dropped = {f["record_id"]: f for f in out["filtered"]}
    assert {f["reason"] for f in dropped.values()} == {"decontaminated"}
    by_unit = {f["detail"]: f for f in out["filtered"]}
    assert any("what temperature does water boil at" in d for d in by_unit), by_unit
    assert any("pasta is cooked in salted boiling water until" in d for d in by_unit), by_unit
    written = {e["seed_passage_id"] for e in out["examples"]}
    assert "kettle" not in written and "pasta" not in written and "tea" in written
    assert out["manifest"]["filtered"] == 2 and out["manifest"]["written"] == len(PASSAGES) - 2


def test_beam_search_over_index_shards_equals_one_exact_search(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from beam_jobs.retrieve import RetrieveCandidates
    from pipeline.embedding import Embedder, passage_text
    from pipeline.retrieval import exact_search
    from schemas import Passage, QueryKnobs, QueryRecord

    rows = [json.loads(l) for l in open("samples/passages.jsonl", encoding="utf-8")][:40]
    passages = [Passage(id=f"p{i:02d}", title=r["title"], text=r["text"][:300], source_id=f"s:{i}")
                for i, r in enumerate(rows)]
    knobs = QueryKnobs(query_length="short", difficulty="easy")
    queries = [(QueryRecord(query_id=f"q{i}", passage_id=p.id, task="t", query=f"how to use {p.title}", knobs=knobs), p)
               for i, p in enumerate(passages[:12])]
    embedder = Embedder()
    doc_vectors = embedder.encode([passage_text(p.title, p.text) for p in passages])
    query_vectors = embedder.encode([q.query for q, _ in queries])
    expected = [(q.query_id, [h.passage_id for h in hits]) for (q, _), hits in
                zip(queries, exact_search(query_vectors, doc_vectors, [p.id for p in passages], 10))]

    with TestPipeline() as p:
        candidates = ((p | "Passages" >> beam.Create(passages), p | "Queries" >> beam.Create(queries))
                      | RetrieveCandidates("all-MiniLM-L6-v2", str(tmp_path / "index"), num_neighbors=10,
                                           shard_size=7, query_batch_size=5))["candidates"]
        got = candidates | beam.Map(lambda qpc: (qpc[0].query_id, [c.passage_id for c in qpc[2]
                                                                   if c.retrieval_rank > 0]))
        assert_that(got, equal_to(expected))


@pytest.mark.parametrize("features, flags, message", [
    ({"tokenize", "logprob_token_ids"}, [], "prompt log-probabilities with echo=true.*need vLLM"),
    ({"echo", "logprob_token_ids"}, [], "POST /tokenize.*--rc_method exact avoids"),
    ({"echo", "tokenize"}, [], "logprob_token_ids on /v1/completions"),
])
def test_a_server_without_the_scoring_features_is_refused_at_start(tmp_path, features, flags, message):
    """Other OpenAI-compatible servers (SGLang, TGI, llama.cpp) generate fine but cannot score:
    the job says what is missing before any paid work."""
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    with StubLLM(features=frozenset(features)) as stub:
        with pytest.raises(ValueError, match=message):
            run_job(inp, tmp_path / "out", stub.base_url, *flags)
        assert not (tmp_path / "out").exists()


def test_exact_rc_needs_only_echo_and_ranks_like_first_token(tmp_path, llm):
    """The stub's labels share their second token (" Relevant", the same log-probability for
    each), so the whole-label and first-token methods must give the same normalised RC and so
    the same rankings, positives and negatives."""
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    with StubLLM(generate_fn=generate, logprob_fn=scorer, features=frozenset({"echo"})) as stub:
        exact = run_job(inp, tmp_path / "exact", stub.base_url, "--rc_method", "exact", "--near_dup_threshold", "0")
    first = run_job(inp, tmp_path / "first", llm.base_url, "--rc_method", "first_token", "--near_dup_threshold", "0")
    assert exact["manifest"]["inputs"] == len(PASSAGES) == len(exact["examples"]) == len(first["examples"])

    def ranking(out):
        return {e["query_id"]: [(c["passage_id"], c["rc_rank"], c["fused_rank"]) for c in e["candidates"]]
                for e in out["examples"]}

    assert ranking(exact) == ranking(first)
    assert {e["example_id"] for e in exact["examples"]} == {e["example_id"] for e in first["examples"]}
    rc = {(e["query_id"], c["passage_id"]): c["rc"] for e in first["examples"] for c in e["candidates"]}
    for e in exact["examples"]:
        for c in e["candidates"]:
            assert c["rc"] == pytest.approx(rc[(e["query_id"], c["passage_id"])], abs=1e-9)


def test_filter_queries_in_beam_keeps_a_chain_end_and_drops_exact_duplicates():
    """FilterQueries as a Beam transform: a~b and b~c (a and c differ) at threshold 0.5 drop b only;
    an exact duplicate (after normalisation) is dropped too; the eval index drops a contained query."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from beam_jobs.filters import FilterQueries
    from pipeline.decontamination import DecontamConfig, EvalIndex
    from pipeline.filtering import NearDupConfig
    from schemas import Passage, QueryKnobs, QueryRecord

    knobs = QueryKnobs(query_length="short", difficulty="easy")
    texts = {"q1": "how to read a csv file in python", "q2": "how to read a csv file in python with pandas",
             "q3": "read a csv file in python with pandas quickly", "q4": "How to read a CSV file in Python?",
             "q5": "what is the boiling point of water at sea level", "q6": "tell me about green tea"}
    items = [(QueryRecord(query_id=q, passage_id=f"p{q}", task="t", query=t, knobs=knobs),
              Passage(id=f"p{q}", title="", text=t, source_id=f"s:{q}")) for q, t in texts.items()]
    index = EvalIndex.build(["boiling point of water at sea"], DecontamConfig())
    with TestPipeline() as p:
        kept, outcomes = ((p | "Q" >> beam.Create(items), p | "E" >> beam.Create([index]))
                          | FilterQueries(NearDupConfig(threshold=0.5), DecontamConfig()))
        assert_that(kept | beam.Map(lambda qp: qp[0].query_id), equal_to(["q1", "q3", "q6"]), label="kept")
        assert_that(outcomes | beam.Map(lambda o: (o.record.record_id, o.record.reason)),
                    equal_to([("q4", "duplicate_query"), ("q2", "near_duplicate_query"), ("q5", "decontaminated")]),
                    label="dropped")
