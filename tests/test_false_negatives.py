"""Relevant passages never reach the negatives on corpora with duplicates and chunked documents:
a qrel on a dropped duplicate resolves to the kept copy, a given text is split like a corpus
record, and the same holds in one pipeline and in waves."""


import json

from pipeline import given_queries as gq
from pipeline.testing.stub_llm import StubLLM
from schemas import GivenQuery
from tests.jobkit import run_job, write_jsonl
from tests.test_waves import _comparable

TOPICS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
TWIN = "The twin text appears twice in this corpus under two ids, as MS MARCO holds it."


def _beir(tmp_path):
    """A BEIR train split whose qrels name dropped duplicates: `twin-b` is dropped for `twin-a`
    (same text, the smaller id is kept)."""
    corpus = [{"_id": f"p{i}", "title": "", "text": f"A passage about {t}, and what {t} is known for."}
              for i, t in enumerate(TOPICS)]
    corpus += [{"_id": "twin-a", "text": TWIN}, {"_id": "twin-b", "text": TWIN}]
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", [{"_id": "q-known", "text": "what is alpha known for"},
                                           {"_id": "q-named", "text": "which text appears twice"}])
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        "q-known\tp0\t2\n"
        "q-known\ttwin-b\t1\n"  # a known positive that is a dropped duplicate
        "q-named\ttwin-b\t1\n")  # the positive itself is a dropped duplicate
    return folder


def test_an_id_of_a_dropped_duplicate_resolves_to_the_kept_copy():
    query = GivenQuery(query_id="g", query="q", positive_id="b#0", known_positive_ids=["k", "x"], layout="beir",
                       source="s")
    aliases = dict(gq.id_aliases(gq.corpus_keys(_passage("b#0", 0)), "a#0"))
    assert aliases == {"b#0": "a#0", "b": "a#0"}, "a first chunk answers to its record's id too"
    resolved = gq.resolve_aliases(query, {**aliases, "k": "c"})
    assert (resolved.positive_id, resolved.positive_id_as_given) == ("a#0", "b#0")
    assert resolved.known_positive_ids == ["a#0", "b#0", "c", "k", "x"]


def _passage(pid, chunk):
    from schemas import Passage

    return Passage(id=pid, text="t", source_id="s", chunk=chunk)


def test_qrels_on_dropped_duplicates_in_one_pipeline_and_in_waves(tmp_path):
    folder = _beir(tmp_path)
    flags = ("--queries", str(folder), "--num_negatives", "20", "--num_neighbors", "10", "--relabel", "never")
    with StubLLM() as stub:
        one = run_job(folder / "corpus.jsonl", tmp_path / "one", stub.base_url, *flags)
        waves = run_job(folder / "corpus.jsonl", tmp_path / "waves", stub.base_url, *flags, "--wave_size", "3")
    assert not one["dead_letters"], [d["reason"] for d in one["dead_letters"]]  # was positive_not_in_corpus
    by_query = {e["query"]: e for e in one["examples"]}
    named = by_query["which text appears twice"]
    assert (named["seed_passage_id"], named["positive_id_as_given"]) == ("twin-a", "twin-b")
    known = by_query["what is alpha known for"]
    assert "twin-a" in known["known_positive_ids"]
    for e in one["examples"]:
        assert e["hard_negatives"], "the other passages are mined"
        assert all(n["text"] != TWIN for n in e["hard_negatives"]), "the kept copy of a known positive"
    assert one["manifest"]["false_negative_share"] == 0.0
    assert _comparable(waves) == _comparable(one)


def _long_text(topic: str, sentences: int = 24) -> str:
    return " ".join(f"Sentence {i} of the long document on {topic} says something about {topic} number {i}."
                    for i in range(sentences))


def test_given_texts_are_split_like_corpus_records_in_one_pipeline_and_in_waves(tmp_path):
    """A long given positive becomes chunks (the first is the positive, the others known
    positives, never negatives), whether the corpus holds the same document or not; a long given
    negative becomes chunks too; none is one passage cut off at the embedder's length."""
    corpus = [{"id": f"p{i}", "text": f"A passage about {t}, and what {t} is known for."}
              for i, t in enumerate(TOPICS)]
    corpus.append({"id": "held", "text": _long_text("the held corpus document")})
    rows = [{"query": "what does the new document say", "positive": _long_text("a new given document"),
             "negatives": [_long_text("a long given negative")]},
            {"query": "what does the held document say", "positive": _long_text("the held corpus document")}]
    inp = write_jsonl(tmp_path / "corpus.jsonl", corpus)
    queries = write_jsonl(tmp_path / "queries.jsonl", rows)
    flags = ("--queries", str(queries), "--num_negatives", "40", "--num_neighbors", "40", "--relabel", "never",
             "--max_passage_tokens", "64")
    with StubLLM() as stub:
        one = run_job(inp, tmp_path / "one", stub.base_url, *flags)
        waves = run_job(inp, tmp_path / "waves", stub.base_url, *flags, "--wave_size", "4")
    assert not one["dead_letters"], [d["detail"] for d in one["dead_letters"]]
    by_query = {e["query"]: e for e in one["examples"]}
    new, held = by_query["what does the new document say"], by_query["what does the held document say"]
    assert held["seed_passage_id"] == "held#0", "the given text's first chunk is the corpus document's"
    assert new["seed_passage_id"].endswith("#0") and new["positive"]["id"] == new["seed_passage_id"]
    document = new["seed_passage_id"][:-2]
    pool = {c["passage_id"] for e in one["examples"] for c in e["candidates"]}
    chunks = sorted(p for p in pool if p.startswith(document + "#"))
    assert len(chunks) > 2, "the positive joined the corpus as chunks"
    assert sum(1 for p in pool if "#" in p and p.split("#")[0] not in (document, "held")) > 2, "the negative too"
    for e, own in ((new, document), (held, "held")):
        assert e["hard_negatives"], "the other passages are mined"
        assert not [n["id"] for n in e["hard_negatives"] if n["id"].startswith(own + "#")], "a chunk of the positive"
        assert len(e["known_positive_ids"]) >= 2
    m = one["manifest"]
    assert m["counts"]["never_negative_known_positive"] > 0 and m["counts"]["negatives_written"] > 0
    assert m["false_negative_share"] == 0.0
    assert _comparable(waves) == _comparable(one)


def test_retrieval_mining_needs_no_llm_in_one_pipeline_and_in_waves(tmp_path):
    """--scores retrieval: the embedder's cosine ranks, nothing is sent to an LLM (none listens),
    a positive outside the top N is ranked by its own cosine, and the score limits apply to it."""
    folder = _beir(tmp_path)
    nobody = "http://127.0.0.1:9"  # the discard port: a request would fail the run
    flags = ("--queries", str(folder), "--scores", "retrieval", "--relabel", "never", "--num_neighbors", "3",
             "--negative_strategy", "top", "--num_negatives", "2", "--negative_relative_margin", "0.05")
    one = run_job(folder / "corpus.jsonl", tmp_path / "one", nobody, *flags)
    waves = run_job(folder / "corpus.jsonl", tmp_path / "waves", nobody, *flags, "--wave_size", "3")
    m = one["manifest"]
    assert m["written"] == 2 and not m["tokens"].get("ql") and not m["tokens"].get("rc"), m["accounting"]
    for e in one["examples"]:
        positive = next(c for c in e["candidates"] if c["passage_id"] == e["positive"]["id"])
        assert all(c["retrieval_score"] is not None for c in e["candidates"])
        assert [c["fused_rank"] for c in sorted(e["candidates"], key=lambda c: -c["retrieval_score"])] == list(
            range(1, len(e["candidates"]) + 1)), "the fused ranking is the cosine's"
        limit = positive["retrieval_score"] - abs(positive["retrieval_score"]) * 0.05
        scores = {c["passage_id"]: c["retrieval_score"] for c in e["candidates"]}
        assert all(scores[n["id"]] <= limit for n in e["hard_negatives"])
    assert json.loads(m["config"])["scores"] == "retrieval"
    assert _comparable(waves) == _comparable(one)


def _row(negatives, extras=(), known=()):
    ref = {"id": "doc#0", "title": "", "text": "the positive's text"}
    scored = {"fused_rank": 2, "retrieval_rank": 1, "ql": -1.0, "rc": 1.0, "fused": 0.5, "ce": None}
    return {"example_id": "e", "query_id": "q", "task": "t", "query": "a query", "positive": ref,
            "positive_fused": 1.0, "positive_ql": -0.5, "positive_rc": 1.5, "known_positive_ids": list(known),
            "hard_negatives": [dict(scored, **n) for n in negatives],
            "extra_positives": [dict(scored, score=1.6, **x) for x in extras]}


def test_the_audit_reads_a_row_alone_and_finds_each_kind_of_false_negative():
    from pipeline.audit import audit_example, false_negative_share

    row = _row([{"id": "k1", "text": "known"}, {"id": "doc#3", "text": "a later chunk"},
                {"id": "copy", "text": "the positive's text"}, {"id": "x", "text": "fine"},
                {"id": "x2", "text": "as relevant"}],
               extras=[{"id": "x3", "text": "as relevant"}], known=["k1"])
    counts = audit_example(row)
    assert (counts["written_negative_known_positive"], counts["written_negative_chunk_of_a_positive"],
            counts["written_negative_duplicate_of_a_positive"]) == (1, 1, 2)
    assert counts["negatives_written"] == 5 and counts["extra_positives"] == 1
    assert false_negative_share(counts) == 4 / 5
    assert false_negative_share(audit_example(_row([{"id": "x", "text": "fine"}]))) == 0.0


def test_exports_carry_extra_positives_as_positives():
    from pipeline.export import beir_lines, flagembedding_row, sentence_transformers_row

    row = _row([{"id": "n1", "text": "a negative"}], extras=[{"id": "x1", "text": "another relevant passage"}])
    flag = flagembedding_row(row)
    assert flag.pos == ["the positive's text", "another relevant passage"] and flag.neg == ["a negative"]
    assert flag.pos_scores == [1.0, 0.5] and flag.neg_scores == [0.5]
    qrels = [line for kind, line in beir_lines([row]) if kind == "qrels"]
    assert qrels == ["q\tdoc#0\t1", "q\tx1\t1"]
    st = sentence_transformers_row(row, 1)
    assert "another relevant passage" not in st.values()
