"""README.md is a promise: its flag table, prompt names and commands must match the code."""

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

from beam_jobs.options import FretOptions
from pipeline.prompts import available, load_prompt

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")

# How the table writes defaults that are not literal values.
WORDS = {"off": False, "on": True, "true": True, "false": False, "none": "", '""': "",
         "the server's first model": "", "runner decides": 0}


def fret_run_parser() -> argparse.ArgumentParser:
    """The parser `fret run --help` prints (beam_jobs/cli.py builds it the same way)."""
    parser = argparse.ArgumentParser(prog="fret run")
    FretOptions._add_argparse_args(parser)
    parser.add_argument("--config")
    return parser


def flag_table() -> list[tuple[str, str]]:
    """(flag, default as written) for every row of the flag table."""
    rows = []
    for line in TEXT.splitlines():
        if not line.startswith("| `--"):
            continue
        flags_cell, default_cell = (c.strip() for c in line.strip("|").split("|")[:2])
        flags = re.findall(r"`(--[\w-]+)`", flags_cell)
        defaults = [d.strip() for d in default_cell.split(",")] if len(flags) > 1 else [default_cell]
        assert len(flags) == len(defaults), f"README row {line[:60]!r}: {len(flags)} flags, {len(defaults)} defaults"
        rows += list(zip(flags, defaults))
    return rows


def as_value(written: str):
    text = written.strip("`").strip()
    if text in WORDS:
        return WORDS[text]
    text = re.sub(r"\s*s$", "", text)  # "120 s"
    try:
        return float(text)
    except ValueError:
        return text


def test_the_flag_table_lists_every_flag_with_its_real_default():
    actions = {s: a for a in fret_run_parser()._actions for s in a.option_strings}
    table = flag_table()
    assert len(table) > 20
    for flag, written in table:
        assert flag in actions, f"README lists {flag}, which `fret run` does not have"
        default = actions[flag].default
        default = "" if default is None else default
        expected = float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else default
        assert as_value(written) == expected, f"README says {flag} defaults to {written}; the code says {default!r}"
    listed = {actions[f].dest for f, _ in table}
    missing = {a.dest for a in actions.values() if a.dest != "help"} - listed - {"input", "output"}
    assert not missing, f"flags of `fret run` missing from README's table: {sorted(missing)}"


def test_prompt_names_in_the_readme_are_the_ones_the_job_loads():
    mentioned = set(re.findall(r"\b([a-z_]+)_v(\d+)\b", TEXT))
    assert mentioned, "the README names no prompt"
    names = set(available())
    for name, version in mentioned:
        assert name in names, f"README names prompt {name}_v{version}, which prompts/ does not have"
        assert int(version) == load_prompt(name).version, (
            f"README names {name}_v{version}; the job loads {name}_v{load_prompt(name).version}")
    assert names <= {n for n, _ in mentioned}, f"README does not name every prompt: {sorted(names)}"


def readme_commands() -> list[list[str]]:
    """`fret <command> ...` lines of the README's bash blocks (continuations joined, comments cut)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", TEXT, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("fret "):
                commands.append(shlex.split(line))
    return commands


def test_every_fret_command_in_the_readme_uses_flags_that_exist():
    commands = readme_commands()
    assert {c[1] for c in commands} >= {"run", "train", "eval", "inspect", "export"}
    helps: dict[str, str] = {}
    for command in commands:
        sub = command[1]
        if sub not in helps:
            done = subprocess.run([sys.executable, "-m", "beam_jobs.cli", sub, "--help"], capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            helps[sub] = done.stdout
        for flag in (a.split("=")[0] for a in command[2:] if a.startswith("--")):
            spelled = {flag, flag.replace("-", "_").replace("__", "--")}
            assert any(f in helps[sub] for f in spelled), f"README runs `fret {sub} {flag}`; `fret {sub}` has no such flag"


def test_the_demo_section_says_its_llm_is_random():
    demo = TEXT.split("## Running the job")[0]
    assert "make demo" in demo and "random-weight" in demo and "noise" in demo


def test_the_ql_counters_the_readme_explains_are_the_ones_the_code_counts():
    """README once named `ql_resend_*`; the code counts ql_retry_*, ql_uncached_* and ql_echo_straddle."""
    source = (Path(__file__).resolve().parents[1] / "pipeline" / "llm" / "token_ql.py").read_text()
    reasons = set(re.findall(r'reason = \("(\w+)"|else "(\w+)" if|"(\w+)", retries', source))
    counted = {"ql_echo_straddle", "ql_retry_json_out_of_range"} | {f"ql_uncached_{r}" for group in reasons
                                                                   for r in group if r}
    assert {"ql_uncached_guard", "ql_uncached_no_cache_count", "ql_uncached_non_finite"} <= counted
    documented = set(re.findall(r"`(ql_(?:retry|uncached|echo|resend)_\w+)`", TEXT))
    assert counted <= documented and documented <= counted | {"ql_uncached_json_out_of_range"}, documented ^ counted


def test_the_journal_folders_and_rc_range_the_readme_gives_are_the_real_ones():
    from beam_jobs.cli import main as fret
    from pipeline.journal import STAGES

    listed = re.search(r"_journal/\{([\w,.]+)\}", TEXT).group(1).split(",")
    assert {s for s in listed if s != "..."} <= {"embed", *STAGES} and {"embed", "generate", "score"} <= set(listed)
    top = max(v["value"] for v in load_prompt("relevance_classification").labels.values())
    assert "expected relevance in [0, 1]" not in TEXT and f"in [0, {top:g}]" in TEXT
    import contextlib
    import io

    shown = io.StringIO()
    with contextlib.redirect_stdout(shown), contextlib.suppress(SystemExit):
        fret(["export", "--help"])
    assert f"in [0, {top:g}]" in " ".join(shown.getvalue().split())


def test_the_rc_prompt_help_names_the_real_default():
    newest = max(available()["relevance_classification"])
    assert f"(default: the newest, {newest})" in " ".join(fret_run_parser().format_help().split())
