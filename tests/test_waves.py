"""The job in waves (--wave_size) writes what the one-pipeline job writes, and accounts for every input."""

import json

import pytest

from tests.jobkit import run_job, write_jsonl
from tests.test_fret_job_stub import PASSAGES, preferring_llm  # noqa: F401 - the module's stub fixture


def _records():
    bad = [b"{not json at all", json.dumps({"text": "   "}).encode(),
           json.dumps({"id": "kettle", "text": "a different text under an existing id"}).encode()]
    copy = dict(PASSAGES[2], id="tea-copy")  # the same text under another id
    again = dict(PASSAGES[4], id="pasta-again", text=PASSAGES[4]["text"] + " Drain it.")  # the same query as pasta
    return PASSAGES + bad + [copy, PASSAGES[3], again]


def _comparable(out):
    def example(e):
        # Embedding batches differ between the two runs, so vectors differ in their last bits:
        # retrieval scores are compared to 5 decimals (ranks and everything else exactly).
        candidates = [dict(c, retrieval_score=round(c["retrieval_score"], 5)) for c in e["candidates"]]
        e = dict(e, provenance=None, candidates=candidates)
        return json.dumps(e, sort_keys=True, default=str)

    def record(r):
        return json.dumps({k: v for k, v in r.items() if k != "created_at"}, sort_keys=True, default=str)

    counts = {k: v for k, v in out["manifest"]["counts"].items() if k != "waves"}
    return (sorted(map(example, out["examples"])), sorted(map(record, out["dead_letters"])),
            sorted(map(record, out["filtered"])), counts,
            {k: out["manifest"][k] for k in ("inputs", "written", "filtered", "dead_lettered", "relabel_rate",
                                             "tokens", "task_mix")})


def test_waves_write_what_one_pipeline_writes(tmp_path_factory, preferring_llm):
    tmp_path = tmp_path_factory.mktemp("waves", numbered=False)  # noqa: F811
    inp = write_jsonl(tmp_path / "in.jsonl", _records())
    one = run_job(inp, tmp_path / "one", preferring_llm.base_url, "--num_neighbors", "4")
    waves = run_job(inp, tmp_path / "waves", preferring_llm.base_url, "--num_neighbors", "4", "--wave_size", "3",
                    "--index_shard_size", "2")
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
    assert counts["journal_hits_generate"] == 8 and counts["journal_hits_rerank"] == counts["queries_retrieved"] == 7
    assert _comparable(again)[:3] == _comparable(first)[:3]


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
