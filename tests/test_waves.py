"""The job in waves (--wave_size) writes what the one-pipeline job writes, and accounts for every input."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from pipeline.testing.stub_llm import StubLLM
from tests.jobkit import run_job, write_jsonl
from tests.query_gate import QueryGateProxy
from tests.test_fret_job_stub import PASSAGES, generate, preferring_llm, scorer  # noqa: F401 - the stub fixture


def _records():
    bad = [b"{not json at all", json.dumps({"text": "   "}).encode(),
           json.dumps({"id": "kettle", "text": "a different text under an existing id"}).encode()]
    copy = dict(PASSAGES[2], id="tea-copy")  # the same text under another id
    again = dict(PASSAGES[4], id="pasta-again", text=PASSAGES[4]["text"] + " Drain it.")  # the same query as pasta
    return PASSAGES + bad + [copy, PASSAGES[3], again]


class NearScores(dict):
    """(example, passage) -> retrieval score. Embedding batches differ between two runs, so
    vectors differ in their last bits: scores are equal within 1e-5 (ranks and everything else
    exactly). Rounding both sides instead fails whenever a score sits on a rounding boundary."""

    def __eq__(self, other):
        def near(a, b):
            return a is None and b is None or a is not None and b is not None and abs(a - b) <= 1e-5

        return self.keys() == other.keys() and all(near(self[k], other[k]) for k in self)


def _comparable(out, batching_counts=()):
    scores = NearScores()

    def example(e):
        for c in e["candidates"]:  # None: a seed the search did not find, added to its candidates
            scores[e["example_id"], c["passage_id"]] = c["retrieval_score"]
        candidates = [dict(c, retrieval_score=None) for c in e["candidates"]]
        e = dict(e, provenance=None, candidates=candidates)
        return json.dumps(e, sort_keys=True, default=str)

    def record(r):
        return json.dumps({k: v for k, v in r.items() if k != "created_at"}, sort_keys=True, default=str)

    def summary(s):
        # exact sums merged in another order differ in their last bits: 12 significant digits
        return {k: float(f"{v:.12g}") if isinstance(v, float) else v for k, v in s.items()}

    # What the server's prefix cache did depends on what it held: the two runs share one stub,
    # so the second finds the first's blocks. QL's re-sends (and the requests and tokens they
    # add) and every computed count are the cache's, not the data's; the rest must be equal.
    cache_counts = ("ql_uncached_", "ql_retry_", "ql_echo_", "llm_requests", *batching_counts)
    counts = {k: v for k, v in out["manifest"]["counts"].items() if k != "waves" and not k.startswith(cache_counts)}
    # an embedder request carries a batch of texts: their tokens are the data's, the requests the batching's
    tokens = {kind: {f: n for f, n in usage.items()
                     if f != "prompt_computed" and not (kind.startswith("embed_") and f == "requests")}
              for kind, usage in out["manifest"]["tokens"].items() if kind != "ql"}
    return (sorted(map(example, out["examples"])), sorted(map(record, out["dead_letters"])),
            sorted(map(record, out["filtered"])), counts,
            {k: out["manifest"][k] for k in ("inputs", "written", "filtered", "dead_lettered", "relabel_rate",
                                             "task_mix")}, tokens,
            {name: summary(s) for name, s in out["manifest"]["scores"].items()}, scores)


def test_waves_write_what_one_pipeline_writes(tmp_path_factory, preferring_llm):
    tmp_path = tmp_path_factory.mktemp("waves", numbered=False)  # noqa: F811
    inp = write_jsonl(tmp_path / "in.jsonl", _records())
    import threading

    from pipeline.llm import blocking

    def llm_threads():
        return sum(t.name == "fret-llm-loop" and t.is_alive() for t in threading.enumerate())

    before = llm_threads()
    one = run_job(inp, tmp_path / "one", preferring_llm.base_url, "--num_neighbors", "4")
    waves = run_job(inp, tmp_path / "waves", preferring_llm.base_url, "--num_neighbors", "4", "--wave_size", "3",
                    "--index_shard_size", "2")
    # eleven pipelines, each with LLM stages: every stage's client loop was stopped (one was left per stage)
    assert llm_threads() == before and blocking.live_clients() == 0
    assert waves["manifest"]["counts"]["waves"] == 5  # 14 records, 3 per wave
    assert _comparable(waves) == _comparable(one)
    manifest = waves["manifest"]
    assert manifest["inputs"] == len(_records())
    assert manifest["inputs"] == manifest["written"] + manifest["filtered"] + manifest["dead_lettered"]
    assert "duplicate_query" in {f["reason"] for f in waves["filtered"]}  # decided across waves
    assert not any((tmp_path / "waves" / part).exists() for part in ("_waves", "_index"))
    # where the time went: every pipeline of the run, in the order it ran
    phases = ["plan", *(f"prepare-w{i:05d}" for i in range(5)), "filter", *(f"finish-w{i:05d}" for i in range(5))]
    assert list(manifest["phase_seconds"]) == phases and all(s >= 0 for s in manifest["phase_seconds"].values())
    assert one["manifest"]["phase_seconds"] == {}


LONG = {"id": "long", "title": "Water cycle",
        "text": " ".join(f"Sentence {i} of a long record about how water moves between the sea, the air and the "
                         "land." for i in range(12))}  # split into several chunks at --max_passage_tokens 48


def generate_or_rate(prompt: str) -> str:
    """The stub's queries, and the auto-rater's verdict: Mount Everest's example is rated 1."""
    if "You check training examples" in prompt:
        title = re.findall(r"<passage>\nTitle: (.*)\n", prompt)[-1]
        return json.dumps({"score": 1 if title == "Mount Everest" else 5, "reason": "stub verdict"})
    return generate(prompt)


@pytest.fixture(scope="module")
def rating_llm():
    with StubLLM(generate_fn=generate_or_rate, logprob_fn=scorer) as stub:
        yield stub


def _every_option(tmp_path):
    evalset = write_jsonl(tmp_path / "eval_queries.jsonl", [{"_id": "e1", "text": "tell me about ice"}])
    return ("--num_neighbors", "4", "--queries_per_passage", "2", "--quality_filter", "--decontaminate", str(evalset),
            "--max_passage_tokens", "48")


def test_waves_with_every_filter_and_split_records_write_what_one_pipeline_writes(tmp_path_factory, rating_llm):
    """--queries_per_passage 2, the auto-rater, decontamination and a record split into chunks,
    decided across waves as one pipeline decides them; the manifest's score summaries too."""
    tmp_path = tmp_path_factory.mktemp("waves-every")
    inp = write_jsonl(tmp_path / "in.jsonl", _records() + [LONG])
    one = run_job(inp, tmp_path / "one", rating_llm.base_url, *_every_option(tmp_path))
    waves = run_job(inp, tmp_path / "waves", rating_llm.base_url, *_every_option(tmp_path), "--wave_size", "3",
                    "--index_shard_size", "2")
    assert waves["manifest"]["counts"]["waves"] == 5
    assert _comparable(waves) == _comparable(one)
    reasons = {f["reason"] for f in waves["filtered"]}
    assert {"low_quality", "decontaminated", "duplicate_query"} <= reasons, reasons
    assert waves["manifest"]["counts"]["passages_after_split"] > len(_records())  # the long record was split
    assert all(e["quality"] == 5 for e in waves["examples"])


def test_a_job_killed_mid_wave_resumes_to_the_same_records(tmp_path_factory, preferring_llm):  # noqa: F811
    """kill -9 while a finish wave holds a query's scoring (the proxy keeps its RC requests, so the
    kill comes at a known state, not at a time), then --resume: the same records as one pipeline,
    the earlier waves' pairs read from the journal (passage order)."""
    from pipeline.waves import wave_of

    tmp_path = tmp_path_factory.mktemp("waves-kill")
    records = _records()
    inp = write_jsonl(tmp_path / "in.jsonl", records)
    args = ("--num_neighbors", "4", "--llm_batch_size", "4")
    one = run_job(inp, tmp_path / "one", preferring_llm.base_url, *args)
    # hold the query of the written example whose passage lies in the last wave with one
    line_of = {r["id"]: n for n, r in enumerate(records, start=1) if isinstance(r, dict) and "id" in r}
    waves_of = {e["seed_passage_id"]: wave_of(f"{inp}:{line_of[e['seed_passage_id']]}", 5) for e in one["examples"]}
    last = max(waves_of.values())
    held = [e["query"] for e in one["examples"] if waves_of[e["seed_passage_id"]] == last]
    out_dir = tmp_path / "waves"
    with QueryGateProxy(preferring_llm.base_url, hold=held) as proxy:
        job = subprocess.Popen([sys.executable, "-m", "beam_jobs.fret_job", "--input", str(inp), "--output",
                                str(out_dir), "--llm_url", proxy.base_url, "--progress", "false", *args,
                                "--wave_size", "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
        try:
            while not proxy.held.is_set():
                assert job.poll() is None, job.stdout.read().decode()[-3000:]
                proxy.held.wait(0.5)
        finally:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(60)
    journaled = {p.parent.parent.name for p in out_dir.glob("_journal/w*/score/*.parquet")}
    assert journaled, "earlier waves' scored pairs were journaled before the kill"
    # finished waves' shards are there, but no manifest: the run does not look finished
    assert not (out_dir / "manifest.json").exists()
    resumed = run_job(inp, out_dir, preferring_llm.base_url, *args, "--wave_size", "3", "--resume")
    assert resumed["manifest"]["counts"]["journal_hits_score"] >= 1
    assert _comparable(resumed)[:3] == _comparable(one)[:3] and _comparable(resumed)[-1] == _comparable(one)[-1]
    assert resumed["manifest"]["inputs"] == one["manifest"]["inputs"]


def test_resume_in_waves_reuses_every_waves_journal(tmp_path_factory, preferring_llm):  # noqa: F811
    """A finished run resumed with the same --wave_size redoes no LLM call and embeds no passage:
    each wave finds its own journal, and the examples are the same."""
    tmp_path = tmp_path_factory.mktemp("waves-resume")
    inp = write_jsonl(tmp_path / "in.jsonl", _records())
    args = ("--num_neighbors", "4", "--wave_size", "4")
    first = run_job(inp, tmp_path / "out", preferring_llm.base_url, *args)
    journaled = {p.name for p in (tmp_path / "out" / "_journal").iterdir()}
    # one folder per wave that did LLM work (a wave of bad and duplicate records has none)
    assert len(journaled) > 1 and journaled <= {f"w{i:05d}" for i in range(4)}, journaled
    again = run_job(inp, tmp_path / "out", preferring_llm.base_url, *args, "--resume")
    counts = again["manifest"]["counts"]
    assert again["manifest"]["resumed"] is True
    assert counts["passages_embedded"] == 0 and counts["journal_hits_embed"] == counts["unique_passages"] == 8
    pairs = sum(len(e["candidates"]) for e in first["examples"])  # passage order journals each pair
    assert counts["journal_hits_generate"] == 8 and counts["queries_retrieved"] == len(first["examples"]) == 7
    assert counts["journal_hits_score"] == pairs
    assert _comparable(again)[:3] == _comparable(first)[:3] and _comparable(again)[-1] == _comparable(first)[-1]


def test_waves_are_refused_where_they_cannot_run():
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_jobs.fret_job import check_waves

    check_waves(PipelineOptions([]), translating=False)  # the DirectRunner
    with pytest.raises(ValueError, match="needs the DirectRunner, not DataflowRunner"):
        check_waves(PipelineOptions(["--runner", "DataflowRunner"]), translating=False)
    with pytest.raises(ValueError, match="dry run"):
        check_waves(PipelineOptions([]), translating=True)


def test_wave_of_is_stable_and_spreads_sources():
    from pipeline import waves

    sources = [f"in.jsonl:{i}" for i in range(1, 3001)]
    assigned = [waves.wave_of(s, 10) for s in sources]
    assert assigned == [waves.wave_of(s, 10) for s in sources]  # blake2b, not Python's salted hash()
    sizes = [assigned.count(k) for k in range(10)]
    assert min(sizes) > 240 and max(sizes) < 360, sizes  # about 300 each
    assert waves.num_waves(3000, 1000) == 3 and waves.num_waves(3001, 1000) == 4 and waves.num_waves(0, 1000) == 1
    with pytest.raises(ValueError):
        waves.num_waves(10, 0)


def test_wave_size_takes_auto_or_a_whole_number_on_the_flag_and_in_config_files(tmp_path):
    from beam_jobs.config import ConfigError, config_to_argv, load_config
    from beam_jobs.options import parse_wave_size

    assert [parse_wave_size(v) for v in ("auto", "AUTO", "0", "30000")] == ["auto", "auto", 0, 30000]
    for bad in ("-1", "lots", "1.5", ""):
        with pytest.raises(ValueError, match="auto or a whole number"):
            parse_wave_size(bad)
    for value, flag in (("auto", "auto"), ("30000", "30000"), ("0", "0")):
        (tmp_path / "job.yaml").write_text(f"wave_size: {value}\n")
        assert config_to_argv(load_config(str(tmp_path / "job.yaml"))) == ["--wave_size", flag]
    for bad in ("-2", "lots", "2.5", "true"):
        (tmp_path / "job.yaml").write_text(f"wave_size: {bad}\n")
        with pytest.raises(ConfigError, match="wave_size"):
            load_config(str(tmp_path / "job.yaml"))


def test_auto_runs_waves_only_for_a_large_input_on_the_directrunner(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_jobs.fret_job import resolve_wave_size
    from beam_jobs.options import FretOptions
    from pipeline import waves

    small = write_jsonl(tmp_path / "small.jsonl", [{"text": f"passage {i}"} for i in range(50)])
    large = tmp_path / "large.jsonl"
    large.write_text("".join(f'{{"text": "p{i}"}}\n' for i in range(waves.AUTO_ABOVE + 1)))

    def resolved(path, *flags, translating=False):
        options = PipelineOptions(["--input", str(path), "--output", str(tmp_path / "out"), *flags])
        return resolve_wave_size(options.view_as(FretOptions), options, translating)

    assert resolved(small) == 0  # auto is the default
    assert resolved(large) == waves.AUTO_WAVE_SIZE
    assert resolved(large, "--wave_size", "0") == 0
    assert resolved(large, "--wave_size", "5000") == 5000
    assert resolved(large, "--runner", "DataflowRunner") == 0  # auto: the workers bound memory
    assert resolved(large, translating=True) == 0
    with pytest.raises(ValueError, match="needs the DirectRunner"):
        resolved(large, "--runner", "DataflowRunner", "--wave_size", "5000")


def test_count_records_stops_past_the_limit_and_names_a_bad_parquet_file(tmp_path):
    from beam_jobs.waves import count_records

    for name in ("a", "b"):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"text": f"{name} {i}"} for i in range(20)])
    pattern = str(tmp_path / "*.jsonl")
    assert count_records(pattern) == 40
    assert count_records(pattern, stop_after=5) == 20  # the first file's records: no further file is read
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ValueError, match="broken.parquet is not a readable Parquet file"):
        count_records(str(tmp_path / "broken.parquet"))


def test_a_passage_the_served_embedder_refuses_is_dead_lettered_in_waves_as_in_one_pipeline(tmp_path):
    """--embedder-url on the stub's /v1/embeddings, which answers 400 for any batch holding the
    passage that is too long for it (as vLLM does past its context): the passage is found alone,
    dead-lettered with the server's message, and the rest written, in waves as in one pipeline."""
    from pipeline.testing.stub_llm import Fault, StubLLM
    from tests.test_fret_job_stub import PASSAGES, generate, scorer

    records = PASSAGES + [{"id": "huge", "title": "Huge", "text": "A passage the embedder will not take. TOO-LONG."}]
    inp = write_jsonl(tmp_path / "in.jsonl", records)
    refuse = Fault("status", status=400, path="embeddings", repeat=True,
                   message="This model's maximum context length is 8 tokens",
                   when=lambda body: any("TOO-LONG" in text for text in body.get("input", [])))
    with StubLLM(generate_fn=generate, logprob_fn=scorer) as stub:
        stub.add_faults(refuse)
        args = ("--num_neighbors", "4", "--embedder_url", stub.base_url, "--embed_batch_size", "4")
        one = run_job(inp, tmp_path / "one", stub.base_url, *args)
        waves = run_job(inp, tmp_path / "waves", stub.base_url, *args, "--wave_size", "3")
    assert waves["manifest"]["counts"]["waves"] >= 2
    # the refused requests behind the halving depend on where the batches cut: not compared
    assert _comparable(waves, ("llm_failures",)) == _comparable(one, ("llm_failures",))
    for out in (one, waves):
        m = out["manifest"]
        assert (m["inputs"], m["written"], m["dead_lettered"]) == (len(records), len(PASSAGES), 1), m["accounting"]
        [letter] = out["dead_letters"]
        assert letter["reason"] == "embedder_refused" and "maximum context length" in letter["detail"]
        assert m["counts"]["passages_refused_by_embedder"] == 1 and m["counts"]["queries_refused_by_embedder"] == 1
        assert "huge" not in {c["passage_id"] for e in out["examples"] for c in e["candidates"]}
        assert m["tokens"]["embed_passages"]["prompt_sent"] > 0 and m["tokens"]["embed_queries"]["prompt_sent"] > 0


def test_given_queries_in_waves_write_what_one_pipeline_writes(tmp_path):
    """--queries with --wave_size: the join on keys over the whole corpus, each query beside its
    seed's wave, gives the same records and accounting as one pipeline, and a resume in waves
    re-scores nothing."""
    from tests.test_given_queries import CORPUS, _fret_rows, _probe

    corpus = CORPUS + [{"text": ""},  # unreadable: one more input
                       dict(CORPUS[2]),  # the same id and text again: a duplicate, filtered
                       {"id": "p3", "text": "another text under p3's id"},  # a conflict: p3 is dead-lettered
                       {"id": "split-doc", "text": " ".join(["Sentence number %d of a long record." % i
                                                             for i in range(60)])}]
    rows = _fret_rows() + [
        {"query": "what is known about alpha", "positive_id": "p1"},  # the same query again: filtered
        {"query": "what is in the first part of the long record", "positive_id": "split-doc"},  # its chunk 0
        {"query": "what is known about a conflict", "positive_id": "p3"},  # p3 left the pool: not in corpus
        {"query": "what is known about a duplicate", "positive_id": CORPUS[2]["id"]}]
    inp = write_jsonl(tmp_path / "corpus.jsonl", corpus)
    queries = write_jsonl(tmp_path / "queries.jsonl", rows)
    args = ("--queries", str(queries), "--num_negatives", "2", "--max_passage_tokens", "64")
    with StubLLM() as stub:
        one = run_job(inp, tmp_path / "one", stub.base_url, *args)
        waves = run_job(inp, tmp_path / "waves", stub.base_url, *args, "--wave_size", "4")
        before = len(stub.requests)
        resumed = run_job(inp, tmp_path / "waves", stub.base_url, *args, "--wave_size", "4", "--resume")
        rescored = [r for r in stub.requests[before:] if not _probe(r)]
    assert waves["manifest"]["counts"]["waves"] == 4
    assert _comparable(waves) == _comparable(one)
    m = one["manifest"]
    # 11 rows, the unreadable record, the duplicate record and both versions of p3; 6 rows written,
    # the repeated query and the duplicate record filtered, 4 rows and 3 records dead-lettered
    assert (m["inputs"], m["written"], m["filtered"], m["dead_lettered"]) == (15, 6, 2, 7), m["accounting"]
    assert m["counts"]["given_texts_joined"] == 2 and m["counts"]["queries_given"] == 9
    seeds = {e["query"]: e["seed_passage_id"] for e in one["examples"]}
    assert seeds["what is in the first part of the long record"] == "split-doc#0"
    assert sorted(d["reason"] for d in one["dead_letters"]).count("positive_not_in_corpus") == 2
    assert not rescored, "a resume in waves re-scores nothing"
    # the same records and headline numbers (the counts say what came from the journal)
    first, again = _comparable(waves), _comparable(resumed)
    assert (again[:3], again[4], again[-1]) == (first[:3], first[4], first[-1])


def test_given_queries_whose_texts_the_served_embedder_refuses_in_waves_as_in_one_pipeline(tmp_path):
    """A refused corpus record is one more input; a query whose positive (a corpus passage or a
    given text that joined) was refused is dead-lettered under its row: in the positive's wave
    as in one pipeline."""
    from pipeline.testing.stub_llm import Fault
    from tests.test_given_queries import CORPUS

    corpus = CORPUS + [{"id": "huge", "text": "A corpus passage the embedder will not take. TOO-LONG."}]
    rows = [{"query": "what is known about alpha", "positive_id": "p0"},
            {"query": "what is known about the huge one", "positive_id": "huge"},
            {"query": "what is known about a long given text", "positive": "A given text, TOO-LONG as well."},
            {"query": "what is known about gamma"}]
    inp, queries = write_jsonl(tmp_path / "corpus.jsonl", corpus), write_jsonl(tmp_path / "queries.jsonl", rows)
    refuse = Fault("status", status=400, path="embeddings", repeat=True,
                   message="This model's maximum context length is 8 tokens",
                   when=lambda body: any("TOO-LONG" in text for text in body.get("input", [])))
    with StubLLM() as stub:
        stub.add_faults(refuse)
        args = ("--queries", str(queries), "--num_negatives", "2", "--embedder_url", stub.base_url)
        one = run_job(inp, tmp_path / "one", stub.base_url, *args)
        waves = run_job(inp, tmp_path / "waves", stub.base_url, *args, "--wave_size", "3")
    assert waves["manifest"]["counts"]["waves"] == 4
    assert _comparable(waves, ("llm_failures",)) == _comparable(one, ("llm_failures",))
    m = one["manifest"]
    assert (m["inputs"], m["written"], m["dead_lettered"]) == (5, 2, 3), m["accounting"]
    assert {d["reason"] for d in one["dead_letters"]} == {"embedder_refused"}
    assert m["counts"]["passages_refused_by_embedder"] == 2 and m["counts"]["queries_refused_by_embedder"] == 2


def test_relabel_never_keeps_every_seed_in_one_pipeline_and_in_waves(tmp_path_factory, preferring_llm):  # noqa: F811
    """--relabel never: the LLM that prefers another passage relabels nothing; the negatives are
    still mined, and waves write what one pipeline writes."""
    tmp_path = tmp_path_factory.mktemp("never", numbered=True)
    inp = write_jsonl(tmp_path / "in.jsonl", _records())
    flags = ("--num_neighbors", "4", "--relabel", "never")
    one = run_job(inp, tmp_path / "one", preferring_llm.base_url, *flags)
    waves = run_job(inp, tmp_path / "waves", preferring_llm.base_url, *flags, "--wave_size", "3")
    assert one["examples"] and not any(e["positive_changed"] for e in one["examples"])
    assert all(e["positive"]["id"] == e["seed_passage_id"] for e in one["examples"])
    assert all(e["hard_negatives"] for e in one["examples"])
    assert json.loads(one["manifest"]["config"])["relabel"] == "never"
    assert _comparable(waves) == _comparable(one)


def test_extra_positives_are_kept_or_dropped_never_mined(tmp_path, preferring_llm):  # noqa: F811
    """The passage the LLM rates above the kept seed is an extra positive: written with
    --extra-positives keep, left out with drop, a negative in neither."""
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    flags = ("--num_neighbors", "4", "--relabel", "never", "--num_negatives", "3")
    kept = run_job(inp, tmp_path / "kept", preferring_llm.base_url, *flags)
    dropped = run_job(inp, tmp_path / "dropped", preferring_llm.base_url, *flags, "--extra_positives", "drop")
    kettle = next(e for e in kept["examples"] if e["seed_passage_id"] == "kettle")
    assert [x["id"] for x in kettle["extra_positives"]] == ["boiling"]
    assert kettle["extra_positives"][0]["score"] > kettle["positive_rc"]
    assert "boiling" not in {n["id"] for n in kettle["hard_negatives"]}
    assert {x["key"]: x["value"] for x in kettle["never_negative"]}.get("extra_positive") == 1
    counts = kept["manifest"]["counts"]
    assert counts["extra_positives"] == sum(len(e["extra_positives"]) for e in kept["examples"]) == 1
    assert kept["manifest"]["false_negative_share"] == 0.0
    from beam_jobs.dataset_commands import inspect
    from pipeline.inspection import collect
    from pipeline.report import dataset_card

    shown = inspect(str(tmp_path / "kept"))
    assert "false-negative audit" in shown and "0.00% of them" in shown and "extra positives: 1" in shown
    card = dataset_card(kept["manifest"], collect(kept["examples"]), {"examples": 5})
    assert "extra positives: 1" in card and "extra_positive 1" in card
    assert not any(e["extra_positives"] for e in dropped["examples"])
    by_seed = {e["seed_passage_id"]: e["hard_negatives"] for e in dropped["examples"]}
    assert all(by_seed[e["seed_passage_id"]] == e["hard_negatives"] for e in kept["examples"])
