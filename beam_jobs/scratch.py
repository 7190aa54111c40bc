"""Scratch files of a job run in waves: records that pass from one wave's pipeline to the next.

Layout: OUTPUT/_waves/<kind>/w<wave>-<writer>-<shard>-of-<n>.pkl, each a stream of pickled records
written by Beam's WriteToFiles (to a temporary file, then moved into place once the bundle that
wrote it is committed: a retried bundle's records are never kept twice); OUTPUT/_waves/<kind>/
<name>.pkl for one-off values (counts, token meters, manifest parts), written atomically.
Everything under _waves is removed when the job ends.
"""

from __future__ import annotations

import pickle
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider

from beam_jobs.journal import write_atomically

SCRATCH_DIR = "_waves"


def scratch_dir(output: str) -> str:
    return f"{output.rstrip('/')}/{SCRATCH_DIR}"


def write_pickled(path: str, value) -> str:
    write_atomically(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def save(value, path: str) -> str:
    """write_pickled with the value first, as beam.Map passes it."""
    return write_pickled(path, value)


def read_pickled(path: str):
    with FileSystems.open(path) as f:
        return pickle.loads(f.read())


def scratch_files(folder: str, kind: str, name: str = "*") -> list[str]:
    """The sorted paths of OUTPUT/_waves/<kind>/<name>.pkl (name may be a glob)."""
    return sorted(m.path for m in FileSystems.match([f"{folder}/{kind}/{name}.pkl"])[0].metadata_list)


def wave_files(folder: str, kind: str, wave: int | None = None) -> list[str]:
    """The chunk files of one kind, of one wave or of all."""
    return scratch_files(folder, kind, f"w{wave:05d}-*" if wave is not None else "w*")


class _PickleStreamSink(fileio.FileSink):
    """(wave, record) elements -> one pickled record after another: written and read streaming."""

    def open(self, fh):
        self._fh = fh

    def write(self, element):
        pickle.dump(element[1], self._fh, protocol=pickle.HIGHEST_PROTOCOL)

    def flush(self):
        self._fh.flush()


def read_records(path: str) -> Iterator:
    """The records of one chunk file, one at a time."""
    with FileSystems.open(path) as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


class WriteWaveChunks(beam.PTransform):
    """(wave, record) -> chunk files of `kind`, one wave per file, through Beam's WriteToFiles.

    A bundle's records go to temporary files that are moved into place only once the bundle is
    committed, so a retried bundle (the BundleBasedDirectRunner retries, as Dataflow does) leaves
    no second copy, where a file named in process() did. `waves` bounds the files a bundle keeps
    open: WriteToFiles sends what does not fit through a GroupByKey, which the runner holds."""

    def __init__(self, folder: str, kind: str, waves: int = 1, writer: str = "chunks"):
        super().__init__()
        self._folder, self._kind, self._waves, self._writer = folder, kind, max(1, waves), writer

    def expand(self, pcoll):
        folder, writer = f"{self._folder}/{self._kind}", self._writer
        return pcoll | "Files" >> fileio.WriteToFiles(
            folder, destination=lambda element: f"w{element[0]:05d}-{writer}", sink=lambda _: _PickleStreamSink(),
            file_naming=fileio.destination_prefix_naming(".pkl"), temp_directory=StaticValueProvider(str, f"{folder}/.tmp"),
            max_writers_per_bundle=self._waves + 1)


def write_chunks(pcoll, label: str, folder: str, kind: str, waves: int = 1) -> None:
    """Several pipelines write one kind (outcomes: plan, prepare, filter): each step's label is
    unique over the pipelines of a run, and names its files apart from the others'."""
    pcoll | label >> WriteWaveChunks(folder, kind, waves, writer=label)


class ReadWaveChunks(beam.PTransform):
    """Chunk files -> their records. The paths are listed when the graph is built: the files are
    the previous pipeline's output."""

    def __init__(self, paths: Iterable[str]):
        super().__init__()
        self.paths = list(paths)

    def expand(self, pbegin):
        return (pbegin
                | "Paths" >> beam.Create(self.paths)
                | "Read" >> beam.FlatMap(read_records))
