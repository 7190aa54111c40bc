"""Stream training examples from Parquet shards (never all in memory) into batches."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow.dataset as ds


def format_query(task: str, query: str) -> str:
    """Gecko's query text."""
    return f"task: {task} | query: {query}"


def format_document(title: str, text: str) -> str:
    """Gecko's document text."""
    return f"title: {title or 'none'} | text: {text}"


@dataclasses.dataclass(frozen=True)
class TextTriple:
    query: str  # formatted
    positive: str  # formatted
    negatives: tuple[str, ...]  # formatted, at most the configured number


COLUMNS = ["task", "query", "positive", "hard_negatives"]


def _files(path: str | Path) -> list[str]:
    p = Path(path)
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*.parquet"))
    if p.exists():
        return [str(p)]
    return sorted(str(f) for f in Path().glob(str(path)))


def stream_examples(path: str | Path, num_negatives: int = 1, batch_rows: int = 1024) -> Iterator[TextTriple]:
    """Rows of FRet example shards as formatted (query, positive, negatives) triples."""
    files = _files(path)
    if not files:
        raise ValueError(f"no Parquet files at {path}; point --data at the job's examples/ folder")
    dataset = ds.dataset(files, format="parquet")
    for batch in dataset.to_batches(columns=COLUMNS, batch_size=batch_rows):
        for row in batch.to_pylist():
            yield row_to_triple(row, num_negatives)


def row_to_triple(row: dict, num_negatives: int = 1) -> TextTriple:
    """One row of the FRet example layout as formatted texts."""
    negatives = tuple(format_document(n["title"], n["text"]) for n in (row["hard_negatives"] or []))
    return TextTriple(query=format_query(row["task"], row["query"]),
                      positive=format_document(row["positive"]["title"], row["positive"]["text"]),
                      negatives=negatives[:num_negatives])


def count_examples(path: str | Path) -> int:
    return ds.dataset(_files(path), format="parquet").count_rows()


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


def batched(items: Iterable[TextTriple], batch_size: int, drop_last: bool = True) -> Iterator[list[TextTriple]]:
    """Batches without a repeated positive (it would be a false in-batch negative); a repeat
    waits for the next batch instead of being dropped."""
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
    while rest and not drop_last:
        batch, seen, later = [], set(), []
        for item in rest:
            (later if item.positive in seen or len(batch) == batch_size else batch).append(item)
            seen.add(item.positive)
        yield batch
        rest = later


def epoch_batches(path: str | Path, batch_size: int, num_negatives: int, seed: int, epoch: int,
                  shuffle_buffer: int = 10_000, skip: int = 0) -> Iterator[list[TextTriple]]:
    """One epoch of batches in a deterministic order (seed, epoch); `skip` resumes mid-epoch."""
    stream = shuffled(stream_examples(path, num_negatives), shuffle_buffer, seed * 1_000_003 + epoch)
    for index, batch in enumerate(batched(stream, batch_size)):
        if index >= skip:
            yield batch


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


def beir_to_triples(folder: str | Path, split: str, task: str) -> list[TextTriple]:
    """A BEIR split as training triples (no hard negatives)."""
    return [row_to_triple(row) for row in beir_example_rows(folder, split, task)]


def write_beir_as_examples(folder: str | Path, split: str, task: str, path: str | Path) -> None:
    """Write a BEIR split as a Parquet file the trainer reads like the job's examples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(beir_example_rows(folder, split, task)), path)
