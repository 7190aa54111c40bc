"""Stream training examples from Parquet shards (never all in memory) into batches."""

from __future__ import annotations

import dataclasses
import glob
import random
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Optional, Protocol

import pyarrow.parquet as pq

from pipeline.text_format import GECKO, TextFormat


@dataclasses.dataclass(frozen=True)
class TextTriple:
    query: str  # formatted
    positive: str  # formatted
    negatives: tuple[str, ...]  # formatted, at most the configured number


COLUMNS = ["task", "query", "positive", "hard_negatives"]


class Files(Protocol):
    """Where training shards live. `fret train` passes Beam's filesystems (gs://, s3://, ...), the
    layer the job writes through; LocalFiles serves library users without Beam."""

    def match(self, pattern: str) -> list[str]: ...

    def open(self, path: str) -> BinaryIO: ...


class LocalFiles:
    def match(self, pattern: str) -> list[str]:
        """A folder (every .parquet below it), a file, or a glob, relative or absolute."""
        path = Path(pattern).expanduser()
        if path.is_dir():
            return sorted(str(f) for f in path.rglob("*.parquet"))
        if path.is_file():
            return [str(path)]
        return sorted(f for f in glob.glob(str(path), recursive=True) if Path(f).is_file())

    def open(self, path: str) -> BinaryIO:
        return open(path, "rb")


def shard_files(path: str | Path, files: Files | None = None) -> list[str]:
    """The shards to train on. A job's --output folder means its examples/ (not the journal or
    the dead letters)."""
    files = files or LocalFiles()
    text = str(path).rstrip("/")
    if not any(c in text for c in "*?[") and not text.endswith(".parquet"):
        inside = files.match(text + "/examples")
        if inside:
            return inside
    found = files.match(text)
    if not found:
        raise ValueError(f"no Parquet files at {path}; point --data at the job's examples/ folder, a file or a glob")
    return found


def stream_examples(path: str | Path, num_negatives: int = 1, batch_rows: int = 1024,
                    files: Files | None = None, text_format: TextFormat = GECKO) -> Iterator[TextTriple]:
    """Rows of FRet example shards as formatted (query, positive, negatives) triples, one batch
    of rows in memory at a time."""
    files = files or LocalFiles()
    for name in shard_files(path, files):
        with files.open(name) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=COLUMNS):
                for row in batch.to_pylist():
                    yield row_to_triple(row, num_negatives, text_format)


def row_to_triple(row: dict, num_negatives: int = 1, text_format: TextFormat = GECKO) -> TextTriple:
    """One row of the FRet example layout as formatted texts."""
    negatives = tuple(text_format.document(n["title"], n["text"]) for n in (row["hard_negatives"] or []))
    return TextTriple(query=text_format.query(row["task"], row["query"]),
                      positive=text_format.document(row["positive"]["title"], row["positive"]["text"]),
                      negatives=negatives[:num_negatives])


def count_examples(path: str | Path, files: Files | None = None) -> int:
    files = files or LocalFiles()
    total = 0
    for name in shard_files(path, files):
        with files.open(name) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def shuffled(items: Iterable[TextTriple], buffer: int, seed: int) -> Iterator[TextTriple]:
    """A bounded shuffle buffer: memory stays at `buffer` items however large the data is."""
    rng = random.Random(seed)
    pool: list[TextTriple] = []
    for item in items:
        pool.append(item)
        if len(pool) >= buffer:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            yield pool.pop()
    rng.shuffle(pool)
    yield from pool


def batched(items: Iterable[TextTriple], batch_size: int, drop_last: bool = True,
            dropped: Optional[list] = None) -> Iterator[list[TextTriple]]:
    """Batches without a repeated positive (it would be a false in-batch negative); a repeat
    waits for the next batch instead. At the end of the stream what is left holds fewer distinct
    positives than a batch (every waiting repeat shares a positive with the unfinished batch), so
    with drop_last it cannot fill one: it goes to `dropped` when given, for the caller to count."""
    batch: list[TextTriple] = []
    seen: set[str] = set()
    waiting: list[TextTriple] = []
    for item in items:
        if item.positive in seen:
            waiting.append(item)
            continue
        batch.append(item)
        seen.add(item.positive)
        if len(batch) == batch_size:
            yield batch
            batch, seen = [], set()
            retry, waiting = waiting, []
            for w in retry:
                if w.positive in seen:
                    waiting.append(w)
                else:
                    batch.append(w)
                    seen.add(w.positive)
    rest = batch + waiting
    if drop_last:
        if dropped is not None:
            dropped.extend(rest)
        return
    while rest:
        batch, seen, later = [], set(), []
        for item in rest:
            (later if item.positive in seen or len(batch) == batch_size else batch).append(item)
            seen.add(item.positive)
        yield batch
        rest = later


def epoch_batches(path: str | Path, batch_size: int, num_negatives: int, seed: int, epoch: int,
                  shuffle_buffer: int = 10_000, skip: int = 0, files: Files | None = None,
                  text_format: TextFormat = GECKO, dropped: Optional[list] = None) -> Iterator[list[TextTriple]]:
    """One epoch of batches in a deterministic order (seed, epoch); `skip` resumes mid-epoch.
    `dropped` receives the end of the epoch that could not fill a batch."""
    stream = shuffled(stream_examples(path, num_negatives, files=files, text_format=text_format), shuffle_buffer,
                      seed * 1_000_003 + epoch)
    for index, batch in enumerate(batched(stream, batch_size, dropped=dropped)):
        if index >= skip:
            yield batch


def max_negatives(path: str | Path, files: Files | None = None) -> int:
    """The most hard negatives any example has: the negative columns the trainer needs."""
    import pyarrow.compute as pc

    files = files or LocalFiles()
    most = 0
    for name in shard_files(path, files):
        with files.open(name) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65_536, columns=["hard_negatives"]):
                lengths = pc.list_value_length(batch.column(0)).fill_null(0)
                most = max(most, int(pc.max(lengths).as_py() or 0))
    return most


def negative_columns(count: int) -> list[str]:
    return [f"negative_{i + 1}" for i in range(count)]


def training_rows(path: str, batch_size: int, negatives: int, seed: int, shuffle_buffer: int,
                  text_format: TextFormat, files: Files | None = None, on_epoch_end=None) -> Iterator[dict]:
    """Rows for sentence-transformers' trainer, epoch after epoch without end (the trainer stops at
    its max_steps): every `batch_size` consecutive rows are one batch without a repeated positive.
    A row has `negatives` negative columns; those it lacks repeat its positive, and `label` says
    how many are real, so the loss can mask the copies. `on_epoch_end(epoch, not_batched)` hears
    how many examples of each epoch could not fill a batch."""
    names = negative_columns(negatives)
    epoch = 0
    while True:
        dropped: list = []
        rows = 0
        for batch in epoch_batches(path, batch_size, negatives, seed, epoch, shuffle_buffer, 0, files, text_format,
                                   dropped):
            for triple in batch:
                rows += 1
                real = list(triple.negatives[:negatives])
                padded = real + [triple.positive] * (negatives - len(real))
                yield {"anchor": triple.query, "positive": triple.positive,
                       **dict(zip(names, padded)), "label": len(real)}
        if not rows:
            raise ValueError(f"{path} has fewer than --batch-size {batch_size} examples with distinct positives: "
                             "no batch can be formed")
        if on_epoch_end is not None:
            on_epoch_end(epoch, len(dropped))
        epoch += 1


def beir_example_rows(folder: str | Path, split: str, task: str) -> list[dict]:
    """A BEIR split in the FRet example layout (task/query/positive/hard_negatives), no negatives."""
    from pipeline.train.evaluate import load_beir

    corpus, queries, qrels = load_beir(folder, split)
    rows = []
    for qid, rels in sorted(qrels.items()):
        for did, score in sorted(rels.items()):
            if score > 0 and did in corpus:
                title, text = corpus[did]
                rows.append({"task": task, "query": queries[qid],
                             "positive": {"id": did, "title": title, "text": text}, "hard_negatives": []})
    return rows


def write_beir_as_examples(folder: str | Path, split: str, task: str, path: str | Path) -> None:
    """Write a BEIR split as a Parquet file the trainer reads like the job's examples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(beir_example_rows(folder, split, task)), path)
