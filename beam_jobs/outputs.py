"""Read and write a job's output folder on any Beam filesystem (local, gs://, s3://, ...).

Glue for `fret inspect`, `fret report` and `fret export`; what they compute lives in pipeline/.
"""

from __future__ import annotations

import json
from typing import Iterator, Optional, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.journal import AtomicFile, write_atomically  # noqa: F401 - the writers of this module's users

PARTS = ("examples", "dead_letters", "filtered")


def shards(output: str, part: str) -> list[str]:
    """The committed Parquet shards of one output part, sorted (Beam's temporary files are not matched)."""
    pattern = f"{output.rstrip('/')}/{part}/*.parquet"
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


class BeamFiles:
    """Training shards through Beam's filesystems (local, gs://, s3://...): `fret train` reads
    through the same layer the job wrote with. Implements pipeline.train.data.Files."""

    def match(self, pattern: str) -> list[str]:
        pattern = pattern.rstrip("/")
        if not any(c in pattern for c in "*?["):
            if pattern.endswith(".parquet") and FileSystems.exists(pattern):
                return [pattern]
            pattern += "/**"  # a folder: every shard below it
        found = FileSystems.match([pattern])[0].metadata_list
        return sorted(m.path for m in found if m.path.endswith(".parquet"))

    def open(self, path: str):
        return open_binary(path)


class BeamStore:
    """pipeline.ownership's Store on any Beam filesystem: the output folders of fret run, export, report."""

    def files(self, folder: str) -> list[str]:
        prefix = folder.rstrip("/") + "/"
        if not FileSystems.exists(folder.rstrip("/")):
            return []
        return sorted(m.path[len(prefix):] for m in FileSystems.match([prefix + "**"])[0].metadata_list
                      if m.path.startswith(prefix))

    def read(self, path: str) -> Optional[bytes]:
        if not FileSystems.exists(path):
            return None
        with open_binary(path) as f:
            return f.read()

    def write(self, path: str, data: bytes) -> None:
        write_atomically(path, data)

    def delete(self, folder: str, rels: Sequence[str], prune: Sequence[str] = ()) -> None:
        from pipeline.ownership import remove_emptied_dirs

        folder = folder.rstrip("/")
        paths = [f"{folder}/{rel}" for rel in rels]
        for start in range(0, len(paths), 1000):  # one call per thousand: object stores batch deletes
            FileSystems.delete(paths[start:start + 1000])
        if "://" not in folder:  # a local folder: its emptied subfolders go too (object stores have none)
            remove_emptied_dirs(folder, rels, prune)


def open_binary(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_manifest(output: str) -> dict:
    path = f"{output.rstrip('/')}/manifest.json"
    if not FileSystems.exists(path):
        raise ValueError(f"{output} has no manifest.json: is it the --output of a finished fret run?")
    with open_binary(path) as f:
        return json.loads(f.read().decode("utf-8"))


def parquet_schema(path: str):
    import pyarrow.parquet as pq

    with open_binary(path) as f:
        return pq.ParquetFile(f).schema_arrow


def row_count(paths: Sequence[str]) -> int:
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        with open_binary(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def iter_rows(paths: Sequence[str], columns: Optional[list[str]] = None, batch_size: int = 1024) -> Iterator[dict]:
    """Rows as dicts, one batch in memory at a time; of `columns`, those a shard has (one written by
    an older version may lack a newer column)."""
    import pyarrow.parquet as pq

    for path in paths:
        with open_binary(path) as f:
            shard = pq.ParquetFile(f)
            present = None if columns is None else [c for c in columns if c in shard.schema_arrow.names]
            for batch in shard.iter_batches(batch_size=batch_size, columns=present):
                yield from batch.to_pylist()



