"""Index shards as files: the search's corpus side travels through the output folder, not as elements.

Layout: OUTPUT/_index/shard-<i>-of-<n>.parquet, IndexEntry rows sorted by passage id, each file
written atomically. The search reads them one at a time, so a worker holds one shard and one
query batch, and each query leaves the search with one merged top-N (no per-shard copies of it).
The driver removes the folder when the job has finished.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_jobs.journal import write_parquet_atomically
from schemas import IndexEntry
from schemas.arrow import model_schema

INDEX_DIR = "_index"


def index_dir(output: str) -> str:
    return f"{output.rstrip('/')}/{INDEX_DIR}"


def shard_path(folder: str, shard: int, num_shards: int) -> str:
    return f"{folder.rstrip('/')}/shard-{shard:05d}-of-{num_shards:05d}.parquet"


def write_shard(element, folder: str, num_shards: int) -> str:
    """(shard, [(ids, titles, texts, matrix), ...]) -> the path of its file, sorted by id so that
    a retried bundle writes the same bytes."""
    import pyarrow as pa

    shard, blocks = element
    blocks = list(blocks)
    ids = [pid for b in blocks for pid in b[0]]
    titles = [t for b in blocks for t in b[1]]
    texts = [t for b in blocks for t in b[2]]
    matrix = np.concatenate([np.asarray(b[3], dtype="<f4") for b in blocks])
    order = sorted(range(len(ids)), key=ids.__getitem__)
    table = pa.table({"passage_id": [ids[i] for i in order], "title": [titles[i] for i in order],
                      "text": [texts[i] for i in order], "vector": [matrix[i].tobytes() for i in order]},
                     schema=model_schema(IndexEntry))
    return write_parquet_atomically(shard_path(folder, shard, num_shards), table)


@dataclasses.dataclass
class IndexShard:
    """One shard in memory: ids and vectors for the search, titles and texts looked up by row."""

    ids: list[str]
    matrix: np.ndarray
    titles: object  # pyarrow arrays: one Python string is made per hit, not per passage
    texts: object

    def __post_init__(self):
        self.row_of = {pid: row for row, pid in enumerate(self.ids)}

    def title_text(self, passage_id: str) -> tuple[str, str]:
        row = self.row_of[passage_id]
        return self.titles[row].as_py(), self.texts[row].as_py()


def read_shard(path: str) -> IndexShard:
    import pyarrow.parquet as pq

    with FileSystems.open(path) as f:
        table = pq.read_table(f)
    vectors = table.column("vector").to_pylist()
    matrix = (np.frombuffer(b"".join(vectors), dtype="<f4").reshape(len(vectors), -1)
              if vectors else np.zeros((0, 0), dtype=np.float32))
    return IndexShard(table.column("passage_id").to_pylist(), matrix.astype(np.float32, copy=False),
                      table.column("title").combine_chunks(), table.column("text").combine_chunks())

