"""Review round three's smaller items: overlapping globs, the manifest's config and its atomic write."""

import json

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.read import ReadSeedPassages
from beam_jobs.waves import count_records
from tests.jobkit import write_jsonl


def test_overlapping_globs_read_each_file_once(tmp_path):
    """`--input 'dir/*.jsonl,dir/a.jsonl'` matched a.jsonl twice: its records were read twice
    and the job failed its accounting after all the LLM work was paid for."""
    write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": f"passage a {i}"} for i in range(3)])
    write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": f"passage b {i}"} for i in range(2)])
    patterns = f"{tmp_path}/*.jsonl,{tmp_path}/a.jsonl,{tmp_path}/a*.jsonl"
    assert count_records(patterns) == 5
    with BeamTestPipeline() as p:
        read = p | ReadSeedPassages(patterns, embedder="all-MiniLM-L6-v2")
        assert_that(read.passages | beam.Map(lambda ps: ps.id), equal_to(["a0", "a1", "a2", "b0", "b1"]))


def test_the_manifest_config_records_wave_size():
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_jobs.options import FretOptions, effective_config

    for flag, recorded in (("auto", "auto"), ("5000", 5000), ("0", 0)):
        opts = PipelineOptions(["--input", "x", "--output", "y", "--wave_size", flag]).view_as(FretOptions)
        assert json.loads(effective_config(opts, "m"))["wave_size"] == recorded


def test_a_manifest_write_that_fails_leaves_no_partial_manifest(tmp_path, monkeypatch):
    from beam_jobs.write import write_manifest
    from pipeline.accounting import ManifestAccumulator, Outcome
    from pipeline.llm.usage import UsageMeter

    real_create = FileSystems.create

    class HalfWriter:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[: len(data) // 2])
            raise IOError("injected: the disk filled up")

        def close(self):
            self._f.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    monkeypatch.setattr(FileSystems, "create", staticmethod(lambda path, *a, **k: HalfWriter(real_create(path, *a, **k))))
    acc = ManifestAccumulator()
    acc.add_outcome(Outcome("u1", "written"))
    meta = dict(run_id="r", started_at=__import__("datetime").datetime.now(), llm_model="m", embedder="e",
                prompts={}, config="{}")
    path = str(tmp_path / "manifest.json")
    with pytest.raises(IOError, match="injected"):
        write_manifest(acc, {}, 1, UsageMeter(), path, meta)
    assert not (tmp_path / "manifest.json").exists(), "a reader would have taken half a manifest as the run's"
    assert not list(tmp_path.iterdir()), "no temporary file is left behind"
