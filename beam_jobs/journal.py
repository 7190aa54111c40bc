"""Beam glue for the work journal (pipeline/journal.py): atomic files and the lookup join.

Layout: OUTPUT/_journal/<stage>/<uuid>.parquet, one file per finished batch, written to a
hidden temporary name and renamed, so a killed job leaves whole files or none. LLM stages
write JournalEntry rows; the passage embedder writes EmbeddingEntry rows under `embed`.
"""

from __future__ import annotations

import io
import uuid
from typing import Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from schemas import EmbeddingEntry, JournalEntry
from schemas.arrow import model_schema, rows_to_table

JOURNAL_DIR = "_journal"
EMBED_STAGE = "embed"


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


def write_parquet_atomically(path: str, table) -> str:
    """A zstd Parquet file that readers see whole or not at all."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    write_atomically(path, buffer.getvalue())
    return path


def _write_table(folder: str, stage: str, table) -> str:
    """One journal file under the stage's folder."""
    return write_parquet_atomically(f"{folder}/{stage}/{uuid.uuid4().hex}.parquet", table)


def write_entries(folder: str, stage: str, entries: Sequence[JournalEntry]) -> Optional[str]:
    if not entries:
        return None
    return _write_table(folder, stage, rows_to_table(JournalEntry, entries))


def write_vectors(folder: str, keys: Sequence[str], matrix) -> Optional[str]:
    """One embedded block's vectors, as EmbeddingEntry rows (float32 bytes: exact on reuse)."""
    if not len(keys):
        return None
    import numpy as np
    import pyarrow as pa

    rows = np.ascontiguousarray(matrix, dtype="<f4")
    return _write_table(folder, EMBED_STAGE, pa.table({"key": list(keys), "vector": [r.tobytes() for r in rows]},
                                                      schema=model_schema(EmbeddingEntry)))


class _ReadEntries(beam.DoFn):
    def __init__(self, value_column: str):
        self._value_column = value_column

    def process(self, readable: fileio.ReadableFile):
        import pyarrow.parquet as pq

        with readable.open() as f:
            table = pq.read_table(f, columns=["key", self._value_column])
        yield from zip(table.column("key").to_pylist(), table.column(self._value_column).to_pylist())


def _split(element):
    key, grouped = element
    payloads = list(grouped["done"])
    for item in grouped["item"]:
        if payloads:
            yield beam.pvalue.TaggedOutput("done", (item, payloads[0]))  # a retried bundle may have written twice
        else:
            yield key, item


def has_entries(folder: str, stage: str) -> bool:
    """Whether the stage's journal holds any file now; True when that cannot be checked (a
    Dataflow graph translated offline), so the lookup is kept rather than skipped."""
    try:
        return bool(FileSystems.match([f"{folder}/{stage}/*.parquet"])[0].metadata_list)
    except Exception:  # noqa: BLE001 - e.g. gs:// without credentials: keep the join
        return True


class LookupJournal(beam.PTransform):
    """items -> main output `todo` of (key, item) still to run, and `done` of (item, payload);
    the payload is the journal's `value_column` (the embed stage keeps `vector`).

    With no journal file for the stage when the graph is built (every fresh run), the join is
    left out: it would shuffle every item only to find nothing, and the DirectRunner holds a
    shuffle's whole input in memory."""

    def __init__(self, folder: Optional[str], stage: str, key_fn: Callable, value_column: str = "payload"):
        super().__init__()
        self.folder, self.stage, self.key_fn, self.value_column = folder, stage, key_fn, value_column

    def expand(self, items):
        keyed = items | "Key" >> beam.Map(lambda item, fn: (fn(item), item), self.key_fn)
        if self.folder is None or not has_entries(self.folder, self.stage):
            return keyed | "NoJournal" >> beam.Map(lambda kv: kv).with_outputs("done", main="todo")
        done = (items.pipeline
                | "JournalGlob" >> beam.Create([f"{self.folder}/{self.stage}/*.parquet"])
                | "MatchJournal" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                | "OpenJournal" >> fileio.ReadMatches()
                | "ReadJournal" >> beam.ParDo(_ReadEntries(self.value_column)))
        return ({"item": keyed, "done": done}
                | "JoinJournal" >> beam.CoGroupByKey()
                | "Split" >> beam.FlatMap(_split).with_outputs("done", main="todo"))
