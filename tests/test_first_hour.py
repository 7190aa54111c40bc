"""A new user's first hour (issue 29): no silently ignored flag, no silently empty run, no
deleted files that fret never wrote, and the exit codes and closing lines that say so."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_jobs import cli, fret_job
from pipeline.testing.stub_llm import StubLLM
from tests.jobkit import read_output, write_jsonl
from tests.test_reliability import PASSAGES, distinct_queries


@pytest.fixture()
def stub_llm():
    """One query per passage, each its own: every input can be written."""
    with StubLLM(generate_fn=distinct_queries) as stub:
        yield stub


def fret_run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["run", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("typo, meant", [(["--num-neighbours", "5"], "--num-neighbors"),
                                         (["--llm-ur", "http://127.0.0.1:8001"], "--llm-url")])
def test_a_misspelled_flag_is_refused_before_any_work_with_the_closest_flag(tmp_path, capsys, stub_llm, typo, meant):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    code, _, err = fret_run(capsys, "--input", str(inp), "--output", str(tmp_path / "out"), "--llm-url",
                            stub_llm.base_url, "--progress", "false", *typo)
    assert code == 2 and f"Did you mean {meant}?" in err and typo[0] in err
    assert not (tmp_path / "out").exists() and not stub_llm.requests, "nothing ran"
    # the module entry point refuses it too
    assert fret_job.main(["--input", str(inp), "--output", str(tmp_path / "out2"), "--llm_url", stub_llm.base_url,
                          *typo]) == 2
    assert not (tmp_path / "out2").exists()


def test_a_typo_is_named_even_when_a_required_flag_or_a_config_file_holds_it(tmp_path, capsys):
    """`--outptu` alone printed a usage and "--input and --output are required", with no "did you
    mean"; a config file's typo got none either."""
    code, _, err = fret_run(capsys, "--input", "in.jsonl", "--outptu", str(tmp_path / "out"))
    assert code == 2 and "Did you mean --output?" in err and "--outptu" in err
    config = tmp_path / "job.yaml"
    config.write_text("input: in.jsonl\noutput: out\nnum_neighbours: 5\nrunner: DirectRunner\n")
    code, _, err = fret_run(capsys, "--config", str(config))
    assert code == 2 and "num_neighbours: not a fret flag; did you mean num_neighbors?" in err
    assert "runner: not a fret flag (Beam's own options go under `beam:`)" in err
    assert not (tmp_path / "out").exists()


def test_run_help_says_required_gives_one_default_uses_dashes_and_lists_beams_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    assert "(default: )" not in flat and "(default: None)" not in flat
    for flag in ("--input INPUT", "--output OUTPUT"):
        entry = text.split(f"\n  {flag}", 1)[1].split("\n  --", 1)[0]
        assert "(required)" in entry and "(default" not in entry, entry
    entries = text.split("\n  --")
    assert not [e for e in entries if e.count("(default") > 1]
    usage = text.split("\n\n", 1)[0]
    assert "--llm-url" in usage and "--llm_url" not in usage
    for beam_flag in ("--runner", "--direct_num_workers", "--direct_running_mode", "--project", "--temp_location"):
        assert beam_flag in flat


def test_beams_own_options_still_pass(tmp_path, capsys, stub_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    code, out, _ = fret_run(capsys, "--input", str(inp), "--output", str(tmp_path / "out"), "--llm_url",
                            stub_llm.base_url, "--progress", "false", "--runner", "DirectRunner",
                            "--direct_num_workers", "1", "--num-neighbors", "3")
    assert code == 0 and "2 inputs = 2 written" in out and str(tmp_path / "out") in out


def test_a_parquet_input_without_the_text_column_is_refused_with_its_columns(tmp_path, capsys, stub_llm):
    topics = ["tea", "rain", "salt", "wool"]
    pq.write_table(pa.Table.from_pylist([{"doc_id": f"d{i}", "heading": t.title(), "body": f"a passage about {t}"}
                                         for i, t in enumerate(topics)]), tmp_path / "in.parquet")
    code, _, err = fret_run(capsys, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"),
                            "--llm_url", stub_llm.base_url)
    assert code == 2 and "no 'text' column" in err and "doc_id, heading, body" in err and "--text-field" in err
    assert not (tmp_path / "out").exists()
    # --text-field / --id-field name the columns that hold them
    code, out, _ = fret_run(capsys, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"),
                            "--llm_url", stub_llm.base_url, "--progress", "false", "--text-field", "body",
                            "--id-field", "doc_id", "--title_field", "heading", "--num-neighbors", "3")
    assert code == 0, out
    written = read_output(tmp_path / "out")
    assert sorted(e["seed_passage_id"] for e in written["examples"]) == ["d0", "d1", "d2", "d3"]
    assert {e["positive"]["title"] for e in written["examples"]} <= {t.title() for t in topics}


def test_a_jsonl_input_without_the_text_field_is_refused(tmp_path, capsys, stub_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"body": "a passage"}, b"{broken", {"body": "another"}])
    code, _, err = fret_run(capsys, "--input", str(inp), "--output", str(tmp_path / "out"), "--llm_url",
                            stub_llm.base_url)
    assert code == 2 and "'text' field" in err and "body" in err


def test_a_run_that_writes_nothing_exits_non_zero_and_says_why(tmp_path, capsys, stub_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": "   "}, {"text": ""}, b"not json"])
    code, out, err = fret_run(capsys, "--input", str(inp), "--output", str(tmp_path / "out"), "--llm_url",
                              stub_llm.base_url, "--progress", "false")
    assert code == 1 and "nothing was written" in err
    assert "3 inputs = 0 written + 0 filtered + 3 dead-lettered" in out
    assert "empty_text 2" in out and "malformed_record 1" in out  # the top reasons, with counts


def test_overwrite_never_removes_what_fret_did_not_write(tmp_path, capsys, stub_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "important.txt").write_text("keep me")
    (out / "sub" / "keep.csv").write_text("a,b\n")
    code, _, err = fret_run(capsys, "--input", str(inp), "--output", str(out), "--llm_url", stub_llm.base_url,
                            "--overwrite")
    assert code == 2 and "important.txt" in err and "sub" in err
    assert (out / "important.txt").read_text() == "keep me" and (out / "sub" / "keep.csv").exists()
    # a fret output (with fret report's card and plots) is replaced whole
    run = tmp_path / "run"
    for _ in range(2):
        code, printed, _ = fret_run(capsys, "--input", str(inp), "--output", str(run), "--llm_url",
                                    stub_llm.base_url, "--progress", "false", "--overwrite", "--num-neighbors", "3")
        assert code == 0, printed
        assert cli.main(["report", str(run)]) == 0
        capsys.readouterr()
    assert json.loads((run / "manifest.json").read_text())["written"] == 2


def test_export_of_no_rows_exits_non_zero(tmp_path, capsys, stub_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:3])
    run = tmp_path / "run"
    assert fret_run(capsys, "--input", str(inp), "--output", str(run), "--llm_url", stub_llm.base_url,
                    "--progress", "false", "--num-neighbors", "3")[0] == 0
    code = cli.main(["export", str(run), "--format", "sentence-transformers", "--output", str(tmp_path / "st"),
                     "--negatives", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "no row was exported" in err and "--negatives" in err


def test_ctrl_c_keeps_the_journal_leaves_no_shard_and_says_how_to_resume(tmp_path):
    """SIGINT while a query's scoring is held (a known state, not a time): one line, exit 130,
    no dataset shard without a manifest, no traceback; progress claimed no more than the
    journal holds; --resume then finishes with every input accounted for."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import pyarrow.dataset as ds

    from tests.jobkit import run_job
    from tests.query_gate import QueryGateProxy

    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:10])
    out = tmp_path / "out"
    with StubLLM(generate_fn=distinct_queries) as stub:
        held = [json.loads(distinct_queries(f"<passage>\nTitle: {p['title']}\n"))["query"] for p in PASSAGES[5:10]]
        with QueryGateProxy(stub.base_url, hold=held) as proxy:
            job = subprocess.Popen([sys.executable, "-m", "beam_jobs.fret_job", "--input", str(inp), "--output",
                                    str(out), "--llm_url", proxy.base_url, "--num_neighbors", "3",
                                    "--llm_batch_size", "4",  # a quarter: one query per rerank batch
                                    "--score_order", "query"],  # the gate holds queries: query order
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                while not (proxy.held.is_set() and list(out.glob("_journal/score/*.parquet"))):
                    assert job.poll() is None, job.communicate()[1].decode()[-3000:]
                    proxy.held.wait(0.2)
                job.send_signal(signal.SIGINT)
                stdout, stderr = (b.decode() for b in job.communicate(timeout=600))
            finally:
                if job.poll() is None:
                    os.kill(job.pid, signal.SIGKILL)
        assert job.returncode == 130, stderr[-3000:]
        assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
        assert "re-run the same command with --resume" in stderr and str(out / "_journal") in stderr
        assert not (out / "manifest.json").exists() and not list(out.glob("examples/*.parquet"))
        assert not list(out.glob("beam-temp-*")) and list(out.glob("_journal/generate/*.parquet"))
        journaled = ds.dataset(sorted(out.glob("_journal/score/*.parquet"))).count_rows()
        claimed = [int(n) for n in re.findall(r"rerank[^:]*: (\d+)", stdout)]
        assert max(claimed, default=0) <= journaled, (claimed, journaled)
        resumed = run_job(inp, out, stub.base_url, "--num_neighbors", "3", "--score_order", "query", "--resume")
    assert resumed["manifest"]["counts"]["journal_hits_score"] == journaled
    assert resumed["manifest"]["inputs"] == 10 == resumed["manifest"]["written"]


SUBCOMMANDS = ["run", "serve", "demo", "inspect", "report", "export", "train", "eval", "ablate", "soup"]


def _parsers():
    """Every subcommand's parser, captured as it is built by `fret <command> --help`."""
    import argparse
    from unittest import mock

    parsers = {}
    real = argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        if self.prog.startswith("fret "):
            parsers.setdefault(self.prog.split()[1], self)
        return real(self, args, namespace)

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture):
        for command in SUBCOMMANDS:
            with pytest.raises(SystemExit):
                cli.main([command, "--help"])
    return parsers


def test_every_flag_of_every_subcommand_has_help_both_spellings_and_one_switch_style(capsys):
    parsers = _parsers()
    assert sorted(parsers) == sorted(SUBCOMMANDS)
    for command, parser in parsers.items():
        for action in parser._actions:
            if action.dest in ("help", "version"):
                continue
            assert action.help and action.help.strip(), f"fret {command} {action.option_strings or action.dest}"
            longs = [o for o in action.option_strings if o.startswith("--")]
            for flag in longs:  # --name-with-dashes and --name_with_underscores alike
                for other in (flag.replace("_", "-"), "--" + flag[2:].replace("-", "_")):
                    assert other in action.option_strings, f"fret {command}: {flag} without {other}"
            if command == "run" and action.type is not None and getattr(action.type, "__name__", "") == "parse_bool":
                assert action.nargs == "?" and action.const is True, f"{longs[0]}: one switch style"
    run_help = parsers["run"].format_help()
    assert "(default: 20)" in run_help and "(default: auto)" in run_help  # defaults are shown
    capsys.readouterr()
    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.strip()


def test_switches_take_a_bare_flag_or_a_value():
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_jobs.options import FretOptions

    def parsed(*argv):
        return PipelineOptions(list(argv)).view_as(FretOptions)

    assert parsed("--overwrite").overwrite is True and parsed("--overwrite", "false").overwrite is False
    assert parsed("--progress").progress is True and parsed("--progress", "false").progress is False
    assert parsed("--keep-candidates", "false", "--quality_filter").keep_candidates is False
    assert parsed().overwrite is False and parsed().progress is True


def test_a_wrong_server_url_is_told_what_is_likely_wrong():
    from beam_jobs.preflight import discover_model
    from pipeline.llm.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError) as v1:
        discover_model(url + "/v1", None, timeout=5)
    assert "drop the /v1" in str(v1.value) and f"({url})" in str(v1.value)
    with pytest.raises(ValueError) as plain:
        discover_model(url, None, timeout=5)
    assert "fret serve" in str(plain.value) and "--llm_model" not in str(plain.value)


def test_a_wrong_model_name_and_a_server_that_is_not_openai_are_said_as_such(tmp_path, capsys, stub_llm):
    """`--llm-model tiny-llm` against a server serving tiny-llm-v1 said the server "lacks what
    scoring needs ... need vLLM"; a web server on the port said "cannot reach"."""
    import functools
    import http.server
    import threading

    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    code, _, err = fret_run(capsys, "--input", str(inp), "--output", str(tmp_path / "out"), "--llm-url",
                            stub_llm.base_url, "--llm-model", "tiny-llm")
    assert code == 2 and "serves no model 'tiny-llm'; it serves: stub-llm" in " ".join(err.split())
    assert "lacks what scoring needs" not in err and not (tmp_path / "out").exists()
    # `python -m http.server` in a folder: it answers every GET, with files or a 404 page
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{web.server_address[1]}"
        for flags in ((), ("--llm-model", "tiny-llm")):
            code, _, err = fret_run(capsys, "--input", str(inp), "--output", str(tmp_path / "out"), "--llm-url",
                                    url, *flags)
            flat = " ".join(err.split())
            assert code == 2 and "answered, but not as an OpenAI-compatible server" in flat, err
            assert "HTTP 404" in flat and "cannot reach" not in flat
        web.shutdown()


def test_readmes_beam_flags_command_runs_with_two_worker_threads(tmp_path, stub_llm):
    """README's `python -m beam_jobs.fret_job ... --direct_running_mode multi_threading` failed 2
    times in 3 (two DoFn setups importing transformers at once); the imports now take one lock
    (pipeline.embedding.import_model_libraries). bench/README.md gives the 3-run checks."""
    import subprocess
    import sys

    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:8])
    done = subprocess.run([sys.executable, "-m", "beam_jobs.fret_job", "--input", str(inp), "--output",
                           str(tmp_path / "out"), "--llm_url", stub_llm.base_url, "--runner", "DirectRunner",
                           "--direct_num_workers", "2", "--direct_running_mode", "multi_threading",
                           "--progress", "false"], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "manifest.json").exists()


def test_model_libraries_import_whole_from_threads_started_at_once(tmp_path):
    """The race itself, in a fresh interpreter: eight threads released together each import the
    libraries and take AutoTokenizer from transformers."""
    import subprocess
    import sys

    code = ("import threading\n"
            "from pipeline.embedding import import_model_libraries\n"
            "gate, errors = threading.Barrier(8), []\n"
            "def work():\n"
            "    gate.wait()\n"
            "    try:\n"
            "        import_model_libraries()\n"
            "        from transformers import AutoTokenizer\n"
            "        from sentence_transformers import SentenceTransformer\n"
            "    except Exception as exc:\n"
            "        errors.append(repr(exc))\n"
            "threads = [threading.Thread(target=work) for _ in range(8)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "print(errors); raise SystemExit(1 if errors else 0)\n")
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommands_help_gives_each_default_once_and_dash_forms(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    assert "(default: )" not in text and "(default: None)" not in " ".join(text.split())
    assert not [e for e in text.split("\n  --") if " ".join(e.split()).count("(default") > 1]
    usage = text.split("\n\n", 1)[0]
    assert not [flag for flag in __import__("re").findall(r"\[(--[\w-]+)", usage) if "_" in flag], usage
