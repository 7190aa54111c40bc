"""Beam glue for the LLM work journal (pipeline/journal.py): atomic files and the lookup join.

Layout: OUTPUT/_journal/<stage>/<uuid>.parquet, one file per finished batch, written to a
hidden temporary name and renamed, so a killed job leaves whole files or none.
"""

from __future__ import annotations

import io
import uuid
from typing import Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas import JournalEntry
from schemas.arrow import rows_to_table

JOURNAL_DIR = "_journal"


def journal_dir(output: str) -> str:
    return f"{output.rstrip('/')}/{JOURNAL_DIR}"


class AtomicFile:
    """`with AtomicFile(path) as f: f.write(...)`: written to a hidden sibling and renamed on
    success (rename replaces an existing file), removed on failure: readers never see a partial file."""

    def __init__(self, path: str):
        folder, name = path.rsplit("/", 1)
        self.path, self.tmp = path, f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.partial"

    def __enter__(self):
        self._f = FileSystems.create(self.tmp, compression_type=CompressionTypes.UNCOMPRESSED)
        return self._f

    def __exit__(self, exc_type, *_):
        self._f.close()
        if exc_type is None:
            FileSystems.rename([self.tmp], [self.path])
        else:
            FileSystems.delete([self.tmp])


def write_atomically(path: str, data: bytes) -> None:
    with AtomicFile(path) as f:
        f.write(data)


def write_entries(folder: str, stage: str, entries: Sequence[JournalEntry]) -> Optional[str]:
    if not entries:
        return None
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(rows_to_table(JournalEntry, entries), buffer, compression="zstd")
    path = f"{folder}/{stage}/{uuid.uuid4().hex}.parquet"
    write_atomically(path, buffer.getvalue())
    return path


class _ReadEntries(beam.DoFn):
    def process(self, readable: fileio.ReadableFile):
        import pyarrow.parquet as pq

        with readable.open() as f:
            for row in pq.read_table(f, columns=["key", "payload"]).to_pylist():
                yield row["key"], row["payload"]


def _split(element):
    key, grouped = element
    payloads = list(grouped["done"])
    for item in grouped["item"]:
        if payloads:
            yield beam.pvalue.TaggedOutput("done", (item, payloads[0]))  # a retried bundle may have written twice
        else:
            yield key, item


class LookupJournal(beam.PTransform):
    """items -> main output `todo` of (key, item) still to run, and `done` of (item, payload)."""

    def __init__(self, folder: Optional[str], stage: str, key_fn: Callable):
        super().__init__()
        self.folder, self.stage, self.key_fn = folder, stage, key_fn

    def expand(self, items):
        keyed = items | "Key" >> beam.Map(lambda item, fn: (fn(item), item), self.key_fn)
        if self.folder is None:
            return keyed | "NoJournal" >> beam.Map(lambda kv: kv).with_outputs("done", main="todo")
        done = (items.pipeline
                | "JournalGlob" >> beam.Create([f"{self.folder}/{self.stage}/*.parquet"])
                | "MatchJournal" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                | "OpenJournal" >> fileio.ReadMatches()
                | "ReadJournal" >> beam.ParDo(_ReadEntries()))
        return ({"item": keyed, "done": done}
                | "JoinJournal" >> beam.CoGroupByKey()
                | "Split" >> beam.FlatMap(_split).with_outputs("done", main="todo"))
