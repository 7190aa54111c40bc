"""`fret inspect`, `fret report` and `fret export`: glue between an output folder on any Beam
filesystem and the pure functions in pipeline/inspection.py, report.py and export.py."""

from __future__ import annotations

import io
import itertools

from beam_jobs import outputs
from pipeline import export, inspection, ownership, report
from pipeline.ownership import Claim

EXPORT_ROWS_PER_FILE = 100_000  # sentence-transformers Parquet files stay bounded in memory


def _examples(output: str) -> list[str]:
    paths = outputs.shards(output, "examples")
    if not paths:
        raise ValueError(f"{output} has no examples/*.parquet shards")
    return paths


def _overview(output: str):
    manifest = outputs.read_manifest(output)
    shard_paths = {part: outputs.shards(output, part) for part in outputs.PARTS}
    row_counts = {part: outputs.row_count(paths) for part, paths in shard_paths.items()}
    stats = inspection.collect(outputs.iter_rows(_examples(output), columns=inspection.STATS_COLUMNS))
    return manifest, shard_paths, row_counts, stats


def inspect(output: str, rows: int = 3) -> str:
    output = output.rstrip("/")
    manifest, shard_paths, row_counts, stats = _overview(output)
    examples = list(itertools.islice(outputs.iter_rows(shard_paths["examples"], batch_size=max(rows, 1)), rows))
    schema = outputs.parquet_schema(shard_paths["examples"][0])
    schema_text = "\n".join(f"{f.name}: {f.type}" for f in schema)
    return inspection.format_summary(output, manifest, {p: len(s) for p, s in shard_paths.items()}, row_counts,
                                     schema_text, stats, examples)


def write_report(output: str, pretty_name: str | None = None) -> list[str]:
    """README.md (dataset card) and PNG plots, written next to the shards. Returns their paths."""
    output = output.rstrip("/")
    manifest, _, row_counts, stats = _overview(output)
    _claim_report_files(output)
    written = []
    for name, data in report.plots(stats).items():
        outputs.write_atomically(f"{output}/{name}", data)
        written.append(f"{output}/{name}")
    card = report.dataset_card(manifest, stats, row_counts, pretty_name)
    outputs.write_atomically(f"{output}/README.md", card.encode("utf-8"))
    return [f"{output}/README.md", *written]


def _claim_report_files(output: str) -> None:
    """The card and plots join the run folder's marker: a README.md of the user's is never replaced."""
    ownership.claim(outputs.BeamStore(), output, "run", [Claim(name) for name in ("README.md", *report.PLOTS)])


class ExportFolder:
    """The export's destination, owned by the rule of pipeline.ownership: checked before any row is
    read, claimed (and an earlier export removed, with --overwrite) only when the first file is
    written, and each file claimed before it is written. An export that writes nothing leaves nothing."""

    def __init__(self, dest: str, overwrite: bool):
        self.dest, self.overwrite, self.taken = dest.rstrip("/"), overwrite, False
        self.run_id = ownership.new_run_id()
        self._take(apply=False)

    def _take(self, apply: bool) -> None:
        ownership.take(outputs.BeamStore(), self.dest, "export", [], self.run_id, overwrite=self.overwrite,
                       apply=apply, what="--output", hint="pass --overwrite to replace the earlier export")

    def path(self, rel: str) -> str:
        if not self.taken:
            self._take(apply=True)
            self.taken = True
        ownership.claim(outputs.BeamStore(), self.dest, "export", [Claim(rel)])
        return f"{self.dest}/{rel}"


def run_export(output: str, fmt: str, dest: str, num_negatives: int = 1, split: str = "train",
               text_format: str = "plain", teacher_score: str = "fused", overwrite: bool = False) -> dict:
    """Write `fmt` files under `dest`; returns counts (rows written, rows skipped and why).
    `teacher_score` is one of export.TEACHER_SCORES, or "none" for no label column (sentence-transformers).
    `dest` must be new, empty, or an earlier export that `overwrite` replaces."""
    from pipeline.text_format import FORMATS

    output, dest = output.rstrip("/"), dest.rstrip("/")
    texts = FORMATS[text_format]
    if teacher_score != "none" and teacher_score not in export.TEACHER_SCORES:
        raise ValueError(f"unknown teacher score {teacher_score!r}; one of {export.TEACHER_SCORES} or none")
    if fmt == "flagembedding" and teacher_score == "none":
        raise ValueError("FlagEmbedding rows always carry pos_scores / neg_scores: pick a --teacher-score of "
                         f"{', '.join(export.TEACHER_SCORES)}")
    if fmt not in export.FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; one of {export.FORMATS}")
    shards = _examples(output)
    folder = ExportFolder(dest, overwrite)
    rows = outputs.iter_rows(shards)
    if fmt == "sentence-transformers":
        return _export_st(rows, folder, num_negatives, texts, None if teacher_score == "none" else teacher_score)
    if fmt == "flagembedding":
        lines = (export.flagembedding_row(row, texts, teacher_score).model_dump_json() for row in rows)
        first = next(lines, None)
        if first is None:
            return {"rows": 0, "teacher_score": teacher_score, "files": []}
        n = 0
        with outputs.AtomicFile(folder.path(f"{split}.jsonl")) as f:
            for line in itertools.chain([first], lines):
                f.write((line + "\n").encode("utf-8"))
                n += 1
        return {"rows": n, "teacher_score": teacher_score, "files": [f"{dest}/{split}.jsonl"]}
    if fmt == "beir":
        rows = iter(rows)
        first = next(rows, None)
        if first is None:
            return {"corpus": 0, "queries": 0, "qrels": 0, "files": []}
        rows = itertools.chain([first], rows)
        counts = {"corpus": 0, "queries": 0, "qrels": 0}
        with outputs.AtomicFile(folder.path("corpus.jsonl")) as corpus, \
                outputs.AtomicFile(folder.path("queries.jsonl")) as queries, \
                outputs.AtomicFile(folder.path(f"qrels/{split}.tsv")) as qrels:
            qrels.write(b"query-id\tcorpus-id\tscore\n")
            files = {"corpus": corpus, "queries": queries, "qrels": qrels}
            for kind, line in export.beir_lines(rows):
                files[kind].write((line + "\n").encode("utf-8"))
                counts[kind] += 1
        return {**counts, "files": [f"{dest}/corpus.jsonl", f"{dest}/queries.jsonl", f"{dest}/qrels/{split}.tsv"]}


def _export_st(rows, folder: ExportFolder, num_negatives: int, text_format, teacher_score) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.exports import LABEL_COLUMN, sentence_transformers_columns

    columns = sentence_transformers_columns(num_negatives)
    fields = [(c, pa.string()) for c in columns]
    if teacher_score:
        columns.append(LABEL_COLUMN)
        fields.append((LABEL_COLUMN, pa.list_(pa.float64(), num_negatives + 1)))
    schema = pa.schema(fields)
    written, skipped, files, part = 0, 0, [], 0
    batch: list[dict] = []

    def flush():
        nonlocal part
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(batch, schema=schema), buffer, compression="zstd")
        path = folder.path(f"train-{part:05d}.parquet")
        outputs.write_atomically(path, buffer.getvalue())
        files.append(path)
        part += 1
        batch.clear()

    for row in rows:
        converted = export.sentence_transformers_row(row, num_negatives, text_format, teacher_score)
        if converted is None:
            skipped += 1
            continue
        batch.append(converted)
        written += 1
        if len(batch) >= EXPORT_ROWS_PER_FILE:
            flush()
    if batch:  # an export of no row writes no file
        flush()
    return {"rows": written, "skipped_fewer_negatives": skipped, "columns": columns,
            "teacher_score": teacher_score or "none", "files": files}
