"""Given queries (--queries): the layouts people have, read row by row; the job on each layout
with a stub LLM; every row accounted for."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import given_queries as gq
from pipeline.testing.stub_llm import StubLLM
from schemas import DeadLetter, GivenQuery
from tests.jobkit import run_job, write_jsonl
from tests.test_reliability import PASSAGES


def test_each_row_layout_reads_its_query_positive_and_negatives():
    fret = gq.parse_row({"id": "u1", "query": " what is  x ", "positive_id": "p3", "task": "Find docs",
                         "negatives": ["neg one", ""]}, "f:1")
    assert isinstance(fret, GivenQuery) and fret.layout == "fret"
    assert (fret.query, fret.positive_id, fret.task, [n.text for n in fret.negatives]) == (
        "what is x", "p3", "Find docs", ["neg one"])  # a blank negative is no negative
    titled = gq.parse_row({"query": "q", "positive": {"title": "T", "text": "body"}}, "f:2")
    assert (titled.positive.title, titled.positive.text, titled.positive_id) == ("T", "body", None)
    triplet = gq.parse_row({"anchor": "q", "positive": "pos", "negative_2": "n2", "negative_1": "n1"}, "f:3")
    assert triplet.layout == "pairs" and triplet.positive.text == "pos"
    assert [n.text for n in triplet.negatives] == ["n1", "n2"]  # by column number, not by name order
    by_position = gq.parse_row({"sentence_A": "q", "sentence_B": "pos", "hard": "neg"}, "f:4")
    assert (by_position.query, by_position.positive.text, [n.text for n in by_position.negatives]) == (
        "q", "pos", ["neg"])
    flag = gq.parse_row({"query": "q", "pos": ["p1", "p2"], "neg": ["n"], "prompt": "Represent this"}, "f:5")
    assert flag.layout == "flagembedding" and flag.positive.text == "p1" and flag.task == "Represent this"
    assert flag.known_positive_ids == [gq.text_key("p2")]  # the second positive is never a negative
    bare = gq.parse_row({"query": "only a query"}, "f:6")
    assert bare.positive is None and bare.positive_id is None and gq.positive_key(bare) is None


def test_the_same_row_gets_the_same_id_and_different_rows_different_ids():
    a = gq.parse_row({"query": "q", "positive_id": "p1"}, "f:1")
    assert a.query_id == gq.parse_row({"query": "q", "positive_id": "p1"}, "g:9").query_id
    assert a.query_id != gq.parse_row({"query": "q", "positive_id": "p2"}, "f:1").query_id
    assert a.query_id != gq.parse_row({"query": "q", "positive_id": "p1", "id": "x"}, "f:1").query_id


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "malformed_record"),
    (b"[1, 2]", "malformed_record"),
    (b'{"query": "   ", "positive_id": "p1"}', "empty_text"),
    (b'{"query": 7}', "malformed_record"),
    (b'{"anchor": "q", "positive": ["a list"]}', "malformed_record"),
    (b'{"query": "q", "pos": "not a list"}', "malformed_record"),
    (b'\xff\xfe', "invalid_utf8"),
    (b'{"anchor": "' + b"x" * 2001 + b'"}', "text_too_long"),
])
def test_a_bad_row_is_dead_lettered_with_its_reason(raw, reason):
    letter = gq.parse_line(raw, "in.jsonl:3")
    assert isinstance(letter, DeadLetter) and letter.reason == reason and letter.source == "in.jsonl:3"


def test_an_explicit_layout_that_does_not_fit_is_a_dead_letter():
    letter = gq.parse_row({"anchor": "q", "positive": "p"}, "f:1", layout="fret")
    assert isinstance(letter, DeadLetter) and letter.reason == "missing_field" and "anchor" in letter.detail


def test_beir_the_best_graded_positive_seeds_and_the_others_are_known():
    (made,) = gq.beir_given("q1", [("queries.jsonl:1", "what is abc")],
                            [("d2", 1, "qrels:3"), ("d1", 2, "qrels:2"), ("d3", 0, "qrels:4")])
    assert made.positive_id == "d1" and made.known_positive_ids == ["d2"] and made.source == "qrels:2"
    assert gq.beir_given("q2", [("queries.jsonl:2", "x")], [("d1", 0, "qrels:5")]) == []  # not in the split
    ((source, letter),) = gq.beir_given("q3", [], [("d1", 1, "qrels:6")])
    assert source == "qrels:6" and letter.reason == "query_not_found"
    assert gq.qrel(b"query-id\tcorpus-id\tscore", "qrels:1") is None
    assert gq.qrel(b"q1\td1\t1", "qrels:2") == ("q1", "d1", 1)
    assert isinstance(gq.qrel(b"q1 d1", "qrels:3"), DeadLetter)


def test_a_corpus_passage_answers_to_its_id_its_record_id_and_its_text():
    from schemas import Passage

    first = Passage(id="doc#0", title="T", text="Some  text", source_id="s", chunk=0)
    assert gq.corpus_keys(first) == [("id", "doc#0"), ("id", "doc"), ("text", gq.text_key("Some text"))]
    second = Passage(id="doc#1", title="T", text="more", source_id="s", chunk=1)
    assert ("id", "doc") not in gq.corpus_keys(second)


# --- the job, with a stub LLM ---------------------------------------------------------------

CORPUS = PASSAGES[:10]


def _fret_rows():
    return [
        {"query": "what is known about alpha", "positive_id": "p0"},  # an id in the corpus
        {"query": "what is known about beta", "positive": CORPUS[1]["text"]},  # a corpus text, no title
        {"query": "what is known about zeta", "positive": "A new passage about zeta, not in the corpus at all.",
         "negatives": ["Another new passage, about eta, that joins the corpus."]},
        {"query": "what is known about gamma"},  # no positive: the top fused candidate is the positive
        {"query": "what is known about delta", "positive_id": "missing-id"},
        {"query": "  ", "positive_id": "p3"},
        b"{broken",
    ]


def test_the_job_on_given_fret_rows_accounts_for_every_row(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CORPUS + [{"text": ""}])  # one corpus record unreadable
    queries = write_jsonl(tmp_path / "queries.jsonl", _fret_rows())
    with StubLLM() as stub:
        out = run_job(corpus, tmp_path / "out", stub.base_url, "--queries", str(queries), "--num_negatives", "2")
        generate_calls = [r for r in stub.requests if "messages" in r]
    m = out["manifest"]
    # 7 query rows + the one corpus record that could not join the pool
    assert m["inputs"] == 8 and m["written"] == 4 and m["dead_lettered"] == 4, m["accounting"]
    assert not generate_calls, "generation is skipped"
    reasons = sorted(d["reason"] for d in out["dead_letters"])
    assert reasons == ["empty_text", "empty_text", "malformed_record", "positive_not_in_corpus"]
    by_query = {e["query"]: e for e in out["examples"]}
    assert all(e["query_source"] == "given:fret" and e["knobs"] is None for e in out["examples"])
    alpha, beta = by_query["what is known about alpha"], by_query["what is known about beta"]
    assert alpha["seed_passage_id"] == "p0"
    assert beta["seed_passage_id"] == "p1", "a given text the corpus holds is that corpus passage"
    zeta = by_query["what is known about zeta"]
    assert zeta["seed_passage_id"].startswith("p-") and zeta["positive_source"] in ("seed", "relabelled")
    gamma = by_query["what is known about gamma"]
    assert gamma["seed_passage_id"] == "" and gamma["positive_source"] == "top_fused" and not gamma["positive_changed"]
    for e in out["examples"]:
        assert e["positive_source"] == ("top_fused" if not e["seed_passage_id"] else
                                        "relabelled" if e["positive_changed"] else "seed")
    # the new texts joined the pool: 10 corpus passages + the zeta positive + the eta negative
    assert m["counts"]["given_texts_joined"] == 2 and m["counts"]["queries_given"] == 5
    candidates = {c["passage_id"] for e in out["examples"] for c in e["candidates"]}
    assert len(candidates) == 12
    assert m["counts"]["examples_relabelled"] == sum(e["positive_changed"] for e in out["examples"])


def test_the_job_reads_sentence_transformers_triplets_from_parquet_and_flagembedding_jsonl(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    table = pa.table({"anchor": ["what is known about alpha", "what is known about beta"],
                      "positive": [CORPUS[0]["text"], CORPUS[1]["text"]],
                      "negative": [CORPUS[5]["text"], CORPUS[6]["text"]]})
    pq.write_table(table, tmp_path / "triplets.parquet")
    fe = write_jsonl(tmp_path / "fe.jsonl", [
        {"query": "what is known about gamma", "pos": [CORPUS[2]["text"], CORPUS[3]["text"]],
         "neg": [CORPUS[7]["text"]], "prompt": "Find the passage"}])
    with StubLLM() as stub:
        pairs = run_job(corpus, tmp_path / "st", stub.base_url, "--queries", str(tmp_path / "triplets.parquet"),
                        "--num_negatives", "9")
        flag = run_job(corpus, tmp_path / "fe", stub.base_url, "--queries", str(fe), "--num_negatives", "9")
    assert pairs["manifest"]["written"] == 2 == pairs["manifest"]["inputs"]
    assert {e["seed_passage_id"] for e in pairs["examples"]} == {"p0", "p1"}
    assert all(e["query_source"] == "given:pairs" for e in pairs["examples"])
    (example,) = flag["examples"]
    assert example["task"] == "Find the passage" and example["query_source"] == "given:flagembedding"
    assert "p3" not in {n["id"] for n in example["hard_negatives"]}, "FlagEmbedding's second pos is no negative"
    assert example["positive"]["id"] in ("p2", "p3") or example["positive_changed"]


def test_the_job_on_a_beir_train_split_with_resume(tmp_path):
    from tests.jobkit import read_output

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": p["id"], "title": p["title"], "text": p["text"]} for p in CORPUS])
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": f"what is known about topic {i}"}
                                           for i in range(5)] + [b"{broken"])
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\tp0\t1\nq0\tp4\t1\nq1\tp1\t2\nq1\tp2\t1\nq2\tp9\t0\nq3\tgone\t1\n"
        "q9\tp3\t1\nq4\tp4\t1\n")
    with StubLLM() as stub:
        out = run_job(folder / "corpus.jsonl", tmp_path / "out", stub.base_url, "--queries", str(folder),
                      "--num_negatives", "9")
        m = out["manifest"]
        # q0, q1, q3, q4 have positives (q2 is outside the split); q9 is not in queries.jsonl; one line is broken
        assert m["inputs"] == 6 and m["written"] == 3, m["accounting"]
        assert sorted(d["reason"] for d in out["dead_letters"]) == [
            "malformed_record", "positive_not_in_corpus", "query_not_found"]
        by_seed = {e["seed_passage_id"]: e for e in out["examples"]}
        assert set(by_seed) == {"p0", "p1", "p4"}
        assert "p4" not in {n["id"] for n in by_seed["p0"]["hard_negatives"]}, "another qrel is never a negative"
        assert "p2" not in {n["id"] for n in by_seed["p1"]["hard_negatives"]}
        assert all(e["query_source"] == "given:beir" for e in out["examples"])
        before = len(stub.requests)
        assert [r for r in stub.requests if not _probe(r)], "the first run scored its pairs"
        again = run_job(folder / "corpus.jsonl", tmp_path / "out", stub.base_url, "--queries", str(folder),
                        "--num_negatives", "9", "--resume")
        scoring_requests = [r for r in stub.requests[before:] if not _probe(r)]
    assert not scoring_requests, "a resume re-scores nothing"
    assert {e["example_id"] for e in again["examples"]} == {e["example_id"] for e in out["examples"]}
    assert read_output(tmp_path / "out")["manifest"]["written"] == 3


def _probe(request: dict) -> bool:
    from tests.test_reliability import is_probe

    return is_probe(request)


def test_queries_that_match_nothing_are_refused_before_any_work(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    with pytest.raises(ValueError, match="matches no file"):
        run_job(corpus, tmp_path / "out", "http://127.0.0.1:9", "--queries", str(tmp_path / "nope*.jsonl"))
    (tmp_path / "beir").mkdir()
    (tmp_path / "beir" / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="qrels/dev.tsv does not exist"):
        run_job(corpus, tmp_path / "out", "http://127.0.0.1:9", "--queries", str(tmp_path / "beir"),
                "--queries_split", "dev")


def _readme_commands() -> list[list[str]]:
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("### Your own pairs")[1].split("\n### ")[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    lines = (line.split("#", 1)[0].strip() for line in block.replace("\\\n", " ").splitlines())
    return [shlex.split(line) for line in lines if line.startswith("fret run")]


def _pydoc_train_slice(folder, n_queries: int = 12, others: int = 40):
    """The first queries of pydoc-retrieval's train split, over their documents and a few others."""
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "samples" / "pydoc-retrieval"
    qrels = [line.split("\t") for line in (source / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    qids = sorted({q for q, _, _ in qrels})[:n_queries]
    docs = {d for q, d, _ in qrels if q in qids}
    corpus = [json.loads(line) for line in open(source / "corpus.jsonl")]
    keep = [c for c in corpus if c["_id"] in docs] + [c for c in corpus if c["_id"] not in docs][:others]
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", keep)
    write_jsonl(folder / "queries.jsonl", [json.loads(line) for line in open(source / "queries.jsonl")
                                           if json.loads(line)["_id"] in qids])
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels if q in qids))
    return n_queries


def test_the_readme_commands_for_your_own_pairs_run_on_each_layout(tmp_path):
    from beam_jobs import fret_job
    from tests.jobkit import read_output

    commands = _readme_commands()
    assert len(commands) == 3
    mine = tmp_path / "my"
    mine.mkdir()
    write_jsonl(mine / "corpus.jsonl", CORPUS)
    pq.write_table(pa.table({"anchor": ["what is known about alpha", "what is known about beta"],
                             "positive": [CORPUS[0]["text"], CORPUS[1]["text"]],
                             "negative": [CORPUS[5]["text"], CORPUS[6]["text"]]}), mine / "triplets.parquet")
    write_jsonl(mine / "flagembedding.jsonl", [{"query": "what is known about gamma", "pos": [CORPUS[2]["text"]],
                                                "neg": [CORPUS[7]["text"]], "prompt": "Find the passage"}])
    beir_queries = _pydoc_train_slice(tmp_path / "pydoc")
    expected = {"given:pairs": 2, "given:flagembedding": 1, "given:beir": beir_queries}
    with StubLLM() as stub:
        for command in commands:
            args = []
            for arg in command[2:]:
                arg = arg.replace("my/", f"{mine}/").replace("samples/pydoc-retrieval", str(tmp_path / "pydoc"))
                args.append(stub.base_url if arg.startswith("http://127.0.0.1") else
                            str(tmp_path / arg) if arg.startswith("out/") else arg)
            fret_job.run([*args, "--progress", "false", "--num_neighbors", "8"], save_main_session=False)
            out = read_output(tmp_path / args[args.index("--output") + 1])
            (source,) = {e["query_source"] for e in out["examples"]}
            m = out["manifest"]
            assert m["written"] == expected[source] == m["inputs"], (command, m["accounting"])
    # pydoc's documents are split into chunks: a positive named by document id is its first chunk
    assert all(e["seed_passage_id"].endswith("#0") or "#" not in e["seed_passage_id"] for e in out["examples"])


@pytest.mark.parametrize("passages_are_units", [True, False])
def test_embedder_refusals_become_dead_letters_under_the_right_units(passages_are_units):
    """A refused corpus passage is a unit (a seed, or a corpus record beside given queries); a
    refused given text that joined the corpus is not: its query's row carries the refusal."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from beam_jobs.retrieve import refusal_outcomes
    from schemas import Passage, QueryRecord

    corpus = Passage(id="p0", title="T", text="a corpus text", source_id="in.jsonl:1", chunk=0)
    joined = gq.joined_passage(gq.PassageRef(id="g0", title="", text="a given text"), "q.jsonl:2")
    query = QueryRecord(query_id="q1", passage_id="g0", task="t", query="a query", unit="q.jsonl:2",
                        source="given:fret")
    with beam.Pipeline() as p:
        passages = p | "Passages" >> beam.Create([(corpus, "HTTP 400: too long"), (joined, "HTTP 400: too long")])
        queries = p | "Queries" >> beam.Create([(query, joined, "its seed passage g0 was refused by the embedder")])
        outcomes, units = refusal_outcomes(passages, queries, passages_are_units)
        assert_that(outcomes | beam.Map(lambda o: (o.unit_id, o.status, o.record.reason)),
                    equal_to([("q.jsonl:2", "dead_lettered", "embedder_refused"),
                              ("in.jsonl:1#0", "dead_lettered", "embedder_refused")]
                             + ([("given:q.jsonl:2#0", "dead_lettered", "embedder_refused")]
                                if passages_are_units else [])), label="Outcomes")
        assert_that(units | beam.Map(lambda pw: pw[0].id), equal_to(["p0", "g0"] if passages_are_units else ["p0"]),
                    label="Units")
