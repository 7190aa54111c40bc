"""`fret remine`: examples rebuilt from a run's stored candidate scores with other mining flags,
with no server at all, equal to a fresh run with those flags, field by field."""

import json

import pytest

from beam_jobs.cli import main as fret
from tests.jobkit import read_output, run_job, write_jsonl
from tests.test_fret_job_stub import PASSAGES, preferring_llm  # noqa: F401 - the stub fixture
from tests.test_waves import _records


def _same(remined: dict, fresh: dict) -> None:
    def rows(out):
        return sorted(json.dumps({k: v for k, v in e.items() if k != "provenance"}, sort_keys=True, default=str)
                      for e in out["examples"])

    def records(out, part):
        return sorted(json.dumps({k: v for k, v in r.items() if k != "created_at"}, sort_keys=True, default=str)
                      for r in out[part])

    assert rows(remined) == rows(fresh)
    assert records(remined, "dead_letters") == records(fresh, "dead_letters")
    assert records(remined, "filtered") == records(fresh, "filtered")


@pytest.mark.parametrize("plan", [(), ("--wave_size", "3")], ids=["one-pipeline", "waves"])
def test_remine_with_another_margin_equals_a_fresh_run_and_sends_nothing(tmp_path, preferring_llm, plan):  # noqa: F811
    inp = write_jsonl(tmp_path / "in.jsonl", _records())
    base = ("--num_neighbors", "5", *plan)
    other = ("--relabel", "never", "--negative_strategy", "top", "--num_negatives", "2", "--margin_score", "rc",
             "--negative_relative_margin", "0.3", "--extra_positives", "drop")
    run_job(inp, tmp_path / "source", preferring_llm.base_url, *base)
    fresh = run_job(inp, tmp_path / "fresh", preferring_llm.base_url, *base, *other)
    before = len(preferring_llm.requests)
    assert fret(["remine", str(tmp_path / "source"), "--output", str(tmp_path / "remined"),
                 *(a.replace("_", "-") if a.startswith("--") else a for a in other)]) == 0
    assert len(preferring_llm.requests) == before, "no request reaches any server"
    remined = read_output(tmp_path / "remined")
    _same(remined, fresh)
    with pytest.raises(AssertionError):
        _same(read_output(tmp_path / "source"), fresh)  # the flags changed the examples
    m, f = remined["manifest"], fresh["manifest"]
    assert m["accounting"] == f["accounting"] and m["tokens"] == {}
    assert "source" in m["scores_from"] and f["scores_from"] is None
    assert {k: v for k, v in json.loads(m["config"]).items() if k != "output"} == {
        k: v for k, v in json.loads(f["config"]).items() if k != "output"}
    assert m["false_negative_share"] == f["false_negative_share"]


def test_remine_refuses_flags_that_change_what_was_scored(tmp_path, preferring_llm):  # noqa: F811
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    run_job(inp, tmp_path / "source", preferring_llm.base_url, "--num_neighbors", "3")
    assert fret(["remine", str(tmp_path / "source"), "--output", str(tmp_path / "x"), "--num-neighbors", "5"]) == 2
    assert fret(["remine", str(tmp_path / "source"), "--output", str(tmp_path / "y"), "--num-negativs", "2"]) == 2
    run_job(inp, tmp_path / "bare", preferring_llm.base_url, "--num_neighbors", "3", "--keep_candidates", "false")
    assert fret(["remine", str(tmp_path / "bare"), "--output", str(tmp_path / "z")]) == 2
    # a rated run: its ratings judged the positives its --relabel chose; another --relabel needs a run
    run_job(inp, tmp_path / "rated", preferring_llm.base_url, "--num_neighbors", "3", "--quality_filter",
            "--keep_unrated")
    assert fret(["remine", str(tmp_path / "rated"), "--output", str(tmp_path / "r"), "--relabel", "never"]) == 2
    assert fret(["remine", str(tmp_path / "rated"), "--output", str(tmp_path / "r"), "--num-negatives", "2"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name in ("x", "y", "z")], "refused before any folder was made"


def test_a_remine_that_fails_leaves_no_shard_without_its_manifest(tmp_path, preferring_llm, monkeypatch):  # noqa: F811
    """A remine that dies after its shards are written (here: the manifest write fails) removes
    the shards it wrote, as `fret run` does; the source and a user's file in NEW stay."""
    import beam_jobs.remine as remine_job
    from beam_jobs.preflight import OUTPUT_PARTS

    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    run_job(inp, tmp_path / "source", preferring_llm.base_url, "--num_neighbors", "3")
    source_files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "source").rglob("*"))

    def shards_then_fail(*args, **kwargs):
        written = [p for part in OUTPUT_PARTS[:3] for p in (tmp_path / "new" / part).glob("part*")]
        assert written, "the examples were written before the manifest"
        raise OSError("disk full")

    monkeypatch.setattr(remine_job, "write_manifest", shards_then_fail)
    with pytest.raises(Exception, match="disk full"):
        remine_job.run_remine(str(tmp_path / "source"), str(tmp_path / "new"), ["--num_negatives", "2"])
    left = sorted(str(p.relative_to(tmp_path / "new")) for p in (tmp_path / "new").rglob("*") if p.is_file())
    assert not [f for f in left if f.split("/")[0] in OUTPUT_PARTS], left
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "source").rglob("*")) == source_files


def test_remine_filters_a_relabelled_positive_that_quotes_the_evaluation_set(tmp_path, preferring_llm):  # noqa: F811
    """The source keeps each seed (--relabel never); remining with --relabel gecko makes "boiling",
    whose text is in the evaluation file, kettle's positive. A fresh gecko run drops that example
    as decontaminated, and so must remine (it wrote it before)."""
    from tests.test_fret_job_stub import PASSAGES as STUB_PASSAGES

    inp = write_jsonl(tmp_path / "in.jsonl", STUB_PASSAGES)
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [p for p in STUB_PASSAGES if p["id"] == "boiling"])
    base = ("--num_neighbors", "4", "--decontaminate", str(evaluation))
    run_job(inp, tmp_path / "source", preferring_llm.base_url, *base, "--relabel", "never")
    fresh = run_job(inp, tmp_path / "fresh", preferring_llm.base_url, *base, "--relabel", "gecko")
    assert fret(["remine", str(tmp_path / "source"), "--output", str(tmp_path / "remined"), "--relabel", "gecko"]) == 0
    remined = read_output(tmp_path / "remined")
    dropped = [r for r in remined["filtered"] if r["reason"] == "decontaminated" and r["detail"].startswith("positive")]
    assert len(dropped) == 1 and "kettle" not in {e["seed_passage_id"] for e in remined["examples"]}
    _same(remined, fresh)
    assert remined["manifest"]["accounting"] == fresh["manifest"]["accounting"]
    evaluation.unlink()  # the run's evaluation files must still be there: said before any work
    assert fret(["remine", str(tmp_path / "source"), "--output", str(tmp_path / "again")]) == 2
    assert not (tmp_path / "again").exists()


def test_a_remine_flag_given_at_its_default_still_overrides_the_source():
    """`--relabel gecko` over a `--relabel never` run was read as "not given" (gecko is the default)
    and the source's never stayed."""
    from beam_jobs.remine import source_options

    source = json.dumps({"relabel": "never", "extra_positives": "drop", "num_negatives": 3})
    opts, beam_args = source_options(source, ["--relabel", "gecko", "--extra-positives", "keep", "--runner",
                                              "DirectRunner"])
    assert (opts.relabel, opts.extra_positives, opts.num_negatives) == ("gecko", "keep", 3)
    assert beam_args == ["--runner", "DirectRunner"]
