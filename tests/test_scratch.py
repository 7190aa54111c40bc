"""Scratch chunk files of waves: a retried bundle leaves no second copy of its records."""

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.scratch import ReadWaveChunks, WriteWaveChunks, wave_files


def test_a_bundle_retried_after_a_failed_write_leaves_each_record_once(tmp_path, monkeypatch):
    """The BundleBasedDirectRunner retries a failed bundle, as Dataflow does. One bundle writes
    two waves; creating the second file fails once, after the first was written. A file named in
    process() then held the first wave's records twice; Beam's file sink keeps one copy."""
    folder = str(tmp_path / "_waves")
    created = []
    real_create = FileSystems.create

    def create_failing_once(path, *args, **kwargs):
        if path.startswith(folder):
            created.append(path)
            if len(created) == 2:
                raise IOError("injected: the second file of the bundle could not be created")
        return real_create(path, *args, **kwargs)

    monkeypatch.setattr(FileSystems, "create", staticmethod(create_failing_once))
    elements = [(wave, f"w{wave}-r{i}") for wave in (0, 1) for i in range(5)]
    with beam.Pipeline(runner="BundleBasedDirectRunner", options=PipelineOptions()) as p:
        p | beam.Create(elements, reshuffle=False) | WriteWaveChunks(folder, "records", waves=2)
    assert len(created) > 2, "the bundle was retried"
    for wave in (0, 1):
        paths = wave_files(folder, "records", wave)
        with beam.Pipeline(options=PipelineOptions()) as p:
            records = p | ReadWaveChunks(paths) | beam.combiners.ToList()
            records | beam.Map(lambda got, wave=wave: _check(got, wave))


def _check(got, wave):
    assert sorted(got) == [f"w{wave}-r{i}" for i in range(5)], got


def test_two_pipelines_writing_one_kind_keep_both_files(tmp_path):
    """The plan, each prepare and the filter all write outcomes: one writer's files must never
    replace another's (Beam names final files by destination and shard only)."""
    folder = str(tmp_path / "_waves")
    for writer, records in (("WriteReadOutcomes", ["a", "b"]), ("WriteFilterOutcomes", ["c"])):
        with beam.Pipeline(options=PipelineOptions()) as p:
            p | beam.Create([(0, r) for r in records]) | WriteWaveChunks(folder, "outcomes", writer=writer)
    paths = wave_files(folder, "outcomes", 0)
    assert len(paths) == 2
    with beam.Pipeline(options=PipelineOptions()) as p:
        got = p | ReadWaveChunks(paths) | beam.combiners.ToList()
        got | beam.Map(lambda rows: _equal(sorted(rows), ["a", "b", "c"]))


def _equal(got, expected):
    assert got == expected, got
