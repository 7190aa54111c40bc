"""Scratch files of a job run in waves: records that pass from one wave's pipeline to the next.

Layout: OUTPUT/_waves/<kind>/w<wave>-<uuid>.pkl, each a pickled list of records written
atomically; OUTPUT/_waves/<kind>/<name>.pkl for one-off values (counts, token meters, manifest
parts). Everything under _waves is removed when the job ends.
"""

from __future__ import annotations

import pickle
import uuid
from typing import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs.journal import write_atomically

SCRATCH_DIR = "_waves"
CHUNK_RECORDS = 2_000  # records per chunk file: small enough that a writer holds little per wave


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


def remove_scratch(output: str) -> None:
    folder = scratch_dir(output)
    if FileSystems.exists(folder):
        FileSystems.delete([folder])


class WriteWaveChunks(beam.DoFn):
    """(wave, record) -> chunk files of `kind`, one wave per file. A writer holds at most
    CHUNK_RECORDS records per wave, so the runner never holds the records after this step."""

    def __init__(self, folder: str, kind: str):
        self._folder, self._kind = folder, kind

    def start_bundle(self):
        self._buffers: dict[int, list] = {}

    def process(self, element):
        wave, record = element
        buffer = self._buffers.setdefault(wave, [])
        buffer.append(record)
        if len(buffer) >= CHUNK_RECORDS:
            self._flush(wave)

    def finish_bundle(self):
        for wave in list(self._buffers):
            self._flush(wave)

    def _flush(self, wave: int):
        records = self._buffers.pop(wave, [])
        if records:
            write_pickled(f"{self._folder}/{self._kind}/w{wave:05d}-{uuid.uuid4().hex}.pkl", records)


class ReadWaveChunks(beam.PTransform):
    """Chunk files -> their records. The paths are listed when the graph is built: the files are
    the previous pipeline's output."""

    def __init__(self, paths: Iterable[str]):
        super().__init__()
        self.paths = list(paths)

    def expand(self, pbegin):
        return (pbegin
                | "Paths" >> beam.Create(self.paths)
                | "Read" >> beam.FlatMap(read_pickled))
