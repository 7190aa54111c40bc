"""What fret owns (issue 36): one marker, one rule, for fret run, export, report and train.

Each command writes a marker (pipeline.ownership.MARKER) when it claims a folder; --overwrite and
--resume remove only what the marker says fret wrote, and refuse a folder that holds anything else.
"""

import json

import pytest

from beam_jobs import cli
from beam_jobs.outputs import BeamStore
from pipeline import ownership
from pipeline.ownership import MARKER, Claim, LocalStore, OwnershipError
from tests.jobkit import write_jsonl
from tests.test_first_hour import fret_run, stub_llm  # noqa: F401 - the fixture
from tests.test_reliability import PASSAGES

CLAIMS = [Claim("examples", ("part*", ".*.partial")), Claim("manifest.json"), Claim("_journal", ("*",))]


def files_of(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("store", [LocalStore(), BeamStore()], ids=["local", "beam"])
def test_the_rule_removes_only_what_the_marker_claims(tmp_path, store):
    folder = str(tmp_path / "out")
    ownership.take(store, folder, "run", CLAIMS, "r1")  # absent: claimed
    for rel in ("examples/part-00000-of-00001.parquet", "manifest.json", "_journal/embed/a.parquet",
                ".manifest.json.0123abcd.partial", "examples/.part-1.0123abcd.partial"):
        store.write(f"{folder}/{rel}", b"fret")
    marker = ownership.read_marker(store, folder)
    assert marker.owns("examples/part-00000-of-00001.parquet") and marker.owns("_journal/embed/a.parquet")
    assert marker.owns(".manifest.json.0123abcd.partial"), "an interrupted atomic write of a claimed file"
    assert not marker.owns("examples/notes.txt") and not marker.owns("notes.txt") and not marker.owns("examples2/x")
    assert ownership.foreign(store, folder) == []
    # a plain re-run is refused, and says what to do
    with pytest.raises(OwnershipError, match="not empty.*--overwrite"):
        ownership.take(store, folder, "run", CLAIMS, "r2")
    # a user's file inside a fret folder: both --overwrite and --resume refuse, naming it, and delete nothing
    store.write(f"{folder}/examples/notes.txt", b"mine")
    before = files_of(tmp_path / "out")
    for how in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(OwnershipError, match="examples/notes.txt"):
            ownership.take(store, folder, "run", CLAIMS, "r2", **how)
    assert files_of(tmp_path / "out") == before
    store.delete(folder, ["examples/notes.txt"])
    # --resume keeps the journal and removes the rest; --overwrite removes everything it wrote
    ownership.take(store, folder, "run", CLAIMS, "r3", resume=True, keep=("_journal",))
    assert set(files_of(tmp_path / "out")) == {MARKER, "_journal/embed/a.parquet"}
    ownership.take(store, folder, "run", CLAIMS, "r4", overwrite=True)
    assert set(files_of(tmp_path / "out")) == {MARKER}
    runs = json.loads((tmp_path / "out" / MARKER).read_text())["runs"]
    assert [(r["run_id"], r["how"]) for r in runs] == [("r1", "new"), ("r3", "resume"), ("r4", "overwrite")]
    assert not (tmp_path / "out" / "examples").exists(), "the folders fret emptied go too"
    # a folder fret owns through and through (scratch) goes with its empty subfolders; removing
    # one claim leaves the others
    (tmp_path / "out" / "_journal" / "w00001" / "embed").mkdir(parents=True)
    store.write(f"{folder}/manifest.json", b"fret")
    assert ownership.remove(store, folder, ["_journal"]) == []
    assert set(files_of(tmp_path / "out")) == {MARKER, "manifest.json"} and not (tmp_path / "out" / "_journal").exists()


def test_a_folder_without_a_marker_is_never_deleted_from_and_the_error_says_why(tmp_path):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "keep.txt").write_text("mine")
    for how in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(OwnershipError, match=f"no {MARKER}: fret did not create it"):
            ownership.take(LocalStore(), str(tmp_path), "run", CLAIMS, "r", **how)
    assert (tmp_path / "examples" / "keep.txt").read_text() == "mine"
    # nor is a folder claimed by another command taken over
    other = tmp_path / "model"
    ownership.take(LocalStore(), str(other), "train", [Claim("model", ("*",))], "t")
    (other / "model").mkdir()
    (other / "model" / "config.json").write_text("{}")
    with pytest.raises(OwnershipError, match="output of `fret train`"):
        ownership.take(LocalStore(), str(other), "run", CLAIMS, "r", overwrite=True)


def test_a_claim_never_takes_a_path_that_exists_and_is_not_frets(tmp_path):
    folder = str(tmp_path)
    ownership.take(LocalStore(), folder, "run", CLAIMS, "r")
    (tmp_path / "README.md").write_text("the user's own notes")
    with pytest.raises(OwnershipError, match="README.md exists and fret did not write it"):
        ownership.claim(LocalStore(), folder, "run", [Claim("README.md")])
    ownership.claim(LocalStore(), folder, "run", [Claim("plot.png")])
    assert ownership.read_marker(LocalStore(), folder).owns("plot.png")
    assert (tmp_path / "README.md").read_text() == "the user's own notes"


# --- through the commands ------------------------------------------------------------------------------

def test_resume_and_overwrite_refuse_a_folder_fret_did_not_write(tmp_path, capsys, stub_llm):
    """Issue 36, defect 1: --overwrite refused this folder, then --resume deleted examples/notes.txt and
    manifest.json. Newcomer's finding 1: a folder of only fret-named folders lost the user's files."""
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    for name, layout in (("review", {"src/main.py": "print()", "examples/notes.txt": "mine", "manifest.json": "{}"}),
                         ("newcomer", {"examples/keep.txt": "mine", "filtered/my_filtered_rows.parquet": "rows"})):
        out = tmp_path / name
        for rel, text in layout.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(text)
        for flag in ("--overwrite", "--resume"):
            code, _, err = fret_run(capsys, "--input", str(inp), "--output", str(out), "--llm_url", stub_llm.base_url,
                                    "--progress", "false", flag)
            assert code == 2 and f"no {MARKER}" in err and "never deletes" in err, err
            assert files_of(out) == layout, f"{flag} deleted files fret never wrote"
    assert not stub_llm.requests, "refused before any work"


def test_a_users_file_inside_a_fret_run_is_kept_and_named(tmp_path, capsys, stub_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    run = tmp_path / "run"
    flags = ["--input", str(inp), "--output", str(run), "--llm_url", stub_llm.base_url, "--progress", "false",
             "--num-neighbors", "3"]
    assert fret_run(capsys, *flags)[0] == 0
    marker = json.loads((run / MARKER).read_text())
    assert marker["command"] == "run" and marker["runs"][0]["how"] == "new"
    assert not (run / "_index").exists() and not (run / "_waves").exists(), "scratch removed at the end"
    (run / "examples" / "notes.txt").write_text("mine")
    for flag in ("--overwrite", "--resume"):
        code, _, err = fret_run(capsys, *flags, flag)
        assert code == 2 and "examples/notes.txt" in err, err
    assert (run / "examples" / "notes.txt").read_text() == "mine"
    (run / "examples" / "notes.txt").unlink()
    assert fret_run(capsys, *flags, "--resume")[0] == 0
    assert [r["how"] for r in json.loads((run / MARKER).read_text())["runs"]] == ["new", "resume"]


def test_report_never_replaces_a_readme_of_the_users(tmp_path, capsys, stub_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    run = tmp_path / "run"
    assert fret_run(capsys, "--input", str(inp), "--output", str(run), "--llm_url", stub_llm.base_url,
                    "--progress", "false", "--num-neighbors", "3")[0] == 0
    (run / "README.md").write_text("my notes on this run")
    assert cli.main(["report", str(run)]) == 2
    assert "README.md exists and fret did not write it" in capsys.readouterr().err
    assert (run / "README.md").read_text() == "my notes on this run"
    (run / "README.md").unlink()
    assert cli.main(["report", str(run)]) == 0 and cli.main(["report", str(run)]) == 0  # its own card it replaces
    capsys.readouterr()
    # and --overwrite takes the card and plots away with the run
    assert fret_run(capsys, "--input", str(inp), "--output", str(run), "--llm_url", stub_llm.base_url,
                    "--progress", "false", "--num-neighbors", "3", "--overwrite")[0] == 0
    assert not (run / "README.md").exists()


def test_export_replaces_only_its_own_files_and_an_empty_export_leaves_none(tmp_path, capsys, stub_llm):
    """Newcomer's findings 4 (a corpus.jsonl of the user's was replaced) and 14 (an empty train-00000.parquet)."""
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:3])
    run = tmp_path / "run"
    assert fret_run(capsys, "--input", str(inp), "--output", str(run), "--llm_url", stub_llm.base_url,
                    "--progress", "false", "--num-neighbors", "3")[0] == 0
    dest = tmp_path / "beir"
    dest.mkdir()
    (dest / "corpus.jsonl").write_text("my corpus\n")
    for extra in ([], ["--overwrite"]):
        assert cli.main(["export", str(run), "--format", "beir", "--output", str(dest), *extra]) == 2
        assert "no " + MARKER in capsys.readouterr().err
    assert (dest / "corpus.jsonl").read_text() == "my corpus\n"
    fresh = tmp_path / "beir2"
    assert cli.main(["export", str(run), "--format", "beir", "--output", str(fresh)]) == 0
    assert cli.main(["export", str(run), "--format", "beir", "--output", str(fresh)]) == 2  # an earlier export
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--format", "beir", "--output", str(fresh), "--overwrite"]) == 0
    assert set(files_of(fresh)) == {MARKER, "corpus.jsonl", "queries.jsonl", "qrels/train.tsv"}
    empty = tmp_path / "st"
    assert cli.main(["export", str(run), "--format", "sentence-transformers", "--output", str(empty),
                     "--negatives", "2"]) == 1
    capsys.readouterr()
    assert not empty.exists(), "an export that writes no row leaves no file (and no folder)"


@pytest.mark.parametrize("waves", [[], ["--wave_size", "1"]], ids=["one-pipeline", "waves"])
def test_a_run_that_fails_after_writing_shards_leaves_none_and_keeps_its_journal(tmp_path, capsys, stub_llm,
                                                                                  monkeypatch, waves):
    """An ordinary error (here: the manifest write fails once the shards are written) cleans up as
    Ctrl-C does: no shard without its manifest, the journal kept, and --resume finishes the run."""
    import beam_jobs.fret_job as fret_job
    import beam_jobs.waves as waves_job
    from beam_jobs.preflight import OUTPUT_PARTS

    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    run = tmp_path / "run"
    flags = ["--input", str(inp), "--output", str(run), "--llm_url", stub_llm.base_url, "--progress", "false",
             "--num-neighbors", "3", *waves]

    def shards_then_fail(*args, **kwargs):
        assert list(run.glob("examples/part*")), "the examples were written before the manifest"
        raise OSError("disk full")

    for module in (fret_job, waves_job):
        monkeypatch.setattr(module, "write_manifest", shards_then_fail)
    with pytest.raises(Exception, match="disk full"):
        fret_run(capsys, *flags)
    left = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert not [f for f in left if f.split("/")[0] in OUTPUT_PARTS], sorted(left)
    assert MARKER in left and any(f.startswith("_journal/") for f in left), sorted(left)
    monkeypatch.undo()
    requests = len(stub_llm.requests)
    assert fret_run(capsys, *flags, "--resume")[0] == 0
    assert not [r for r in stub_llm.requests[requests:] if "messages" in r], "the journal's queries were reused"
