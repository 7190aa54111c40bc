"""Build a BEIR-format retrieval set from this machine's English man pages (offline, human-written).

Query: the summary of a page's NAME line ("ls - list directory contents" -> "list directory
contents"). Document: its DESCRIPTION section, titled with the page name. Pages whose summary is
too short, repeated on another page, or whose description is too short are left out, and no
family of pages (the name up to its first `_`, `:`, `.` or `-`) gives more than
--max-per-family: this machine has 16,631 gcloud pages and 5,000 others. The rest are ordered by
a hash of their name, and the first --test become test queries, the next --train
train queries, and the first --corpus form the corpus (so the corpus holds every query's page and
distractors). Nothing is generated.

    python scripts/make_manpages_retrieval.py [--output ~/.cache/fret-distill/manpages-retrieval]

The pages come from Debian packages (manpages, manpages-dev and every installed package's own),
each under its own license, so the set is built on the machine and not committed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

SECTIONS = ("1", "2", "3", "5", "7", "8")
NAME_LINE = re.compile(r"^\s*(?P<names>[^\n]+?)\s+(?:\\\(em|\\-|-|\\\(en)\s+(?P<summary>.+)$")
HEADING = re.compile(r"^[A-Z][A-Z0-9 ,/&()-]*$")


def page_files(root: Path) -> list[Path]:
    files = []
    for section in SECTIONS:
        folder = root / f"man{section}"
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    return files


def read_source(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def name_summary(source: str) -> str | None:
    """The summary of the NAME section, from the troff source (man or mdoc macros)."""
    if ".so " in source[:200] and len(source) < 300:
        return None  # a link to another page
    nd = re.search(r"^\.Nd\s+(.+)$", source, re.M)  # mdoc
    if nd:
        return _clean_troff(nd.group(1))
    match = re.search(r'^\.S[Hh]\s+"?NAME"?\s*$(.*?)^\.S[Hh]\s', source, re.M | re.S)
    if not match:
        return None
    body = " ".join(line for line in match.group(1).splitlines() if line and not line.startswith((".", "'")))
    line = NAME_LINE.match(_clean_troff_escapes_only(body))
    return _clean_troff(line.group("summary")) if line else None


def _clean_troff_escapes_only(text: str) -> str:
    return re.sub(r"\\f[BIRP]|\\f\(..|\\f\[[^]]*\]|\\&|\\c", "", text)


def _clean_troff(text: str) -> str:
    text = _clean_troff_escapes_only(text)
    text = text.replace("\\-", "-").replace("\\(em", "-").replace("\\(en", "-").replace("\\e", "\\")
    text = re.sub(r"\\\(..|\\\[[^]]*\]|\\[*n]\(..|\\[*n].|\\s[-+]?\d", "", text)
    text = text.replace('"', "").replace("\\", "")
    return re.sub(r"\s+", " ", text).strip()


def render(path: Path) -> str:
    """The page as plain text: groff with both macro packages, no hyphenation, very long lines."""
    source = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    result = subprocess.run(["groff", "-mandoc", "-Tutf8", "-P-cbou", "-rLL=5000n", "-rHY=0", "-rIN=0n"],
                            input=source, capture_output=True, timeout=60, env={**os.environ, "LC_ALL": "C.UTF-8"})
    return result.stdout.decode("utf-8", errors="replace")


def description(rendered: str) -> str:
    """The DESCRIPTION section's text, whitespace collapsed."""
    lines, inside = [], False
    for line in rendered.splitlines():
        if line and not line[0].isspace() and HEADING.match(line.strip()):
            if inside:
                break
            inside = line.strip() == "DESCRIPTION"
            continue
        if inside:
            lines.append(line.strip())
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def page_name(path: Path) -> str:
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    stem, _, section = name.rpartition(".")
    return f"{stem}({section})"


def family(name: str) -> str:
    return re.split(r"[_:.(-]", name, maxsplit=1)[0].casefold()


def candidates(root: Path, min_summary_words: int, max_per_family: int) -> list[tuple[str, Path, str]]:
    """(name, file, summary) of every page with a usable, unrepeated summary, by hash of name,
    at most max_per_family of one family."""
    found = []
    for path in page_files(root):
        try:
            summary = name_summary(read_source(path))
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        if summary and len(summary.split()) >= min_summary_words:
            found.append((page_name(path), path, summary))
    counts: dict[str, int] = {}
    for _, _, summary in found:
        counts[summary.casefold()] = counts.get(summary.casefold(), 0) + 1
    unique = sorted((c for c in found if counts[c[2].casefold()] == 1),
                    key=lambda c: hashlib.sha256(c[0].encode()).hexdigest())
    taken: dict[str, int] = {}
    capped = []
    for c in unique:
        taken[family(c[0])] = taken.get(family(c[0]), 0) + 1
        if taken[family(c[0])] <= max_per_family:
            capped.append(c)
    return capped


def build(root: Path, output: Path, n_test: int, n_train: int, n_corpus: int, min_summary_words: int,
          min_description_words: int, max_description_words: int, workers: int, max_per_family: int) -> dict:
    pages = candidates(root, min_summary_words, max_per_family)
    kept: list[tuple[str, str, str]] = []  # (name, summary, description)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # groff runs in its own processes
        for start in range(0, len(pages), 256):
            chunk = pages[start:start + 256]
            for (name, _, summary), rendered in zip(chunk, pool.map(lambda c: render(c[1]), chunk)):
                words = description(rendered).split()
                if len(words) >= min_description_words:
                    kept.append((name, summary, " ".join(words[:max_description_words])))
            if len(kept) >= n_corpus:
                break
    if len(kept) < n_test + n_train:
        raise SystemExit(f"only {len(kept)} usable pages under {root}; need {n_test + n_train}")
    kept = kept[:n_corpus]
    output.mkdir(parents=True, exist_ok=True)
    (output / "qrels").mkdir(exist_ok=True)
    ids = {name: f"man-{i:05d}" for i, (name, _, _) in enumerate(kept)}
    with open(output / "corpus.jsonl", "w", encoding="utf-8") as f:
        for name, _, text in kept:
            f.write(json.dumps({"_id": ids[name], "title": name, "text": text}, ensure_ascii=False) + "\n")
    splits = {"test": kept[:n_test], "train": kept[n_test:n_test + n_train]}
    with open(output / "queries.jsonl", "w", encoding="utf-8") as f:
        for rows in splits.values():
            for name, summary, _ in rows:
                f.write(json.dumps({"_id": "q-" + ids[name], "text": summary}, ensure_ascii=False) + "\n")
    for split, rows in splits.items():
        with open(output / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for name, _, _ in rows:
                f.write(f"q-{ids[name]}\t{ids[name]}\t1\n")
    digest = hashlib.sha256()
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels/train.tsv"):
        digest.update((output / name).read_bytes())
    info = {"source": str(root), "sections": SECTIONS, "max_per_family": max_per_family,
            "candidates": len(pages), "documents": len(kept),
            "test_queries": len(splits["test"]), "train_queries": len(splits["train"]),
            "sha256": digest.hexdigest()[:16],
            "groff": subprocess.run(["groff", "--version"], capture_output=True, text=True).stdout.splitlines()[0]}
    (output / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cache = Path(os.environ.get("FRET_CACHE", Path.home() / ".cache" / "fret-distill"))
    parser.add_argument("--man-root", default="/usr/share/man")
    parser.add_argument("--output", default=str(cache / "manpages-retrieval"))
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--corpus", type=int, default=5000)
    parser.add_argument("--min-summary-words", type=int, default=3)
    parser.add_argument("--min-description-words", type=int, default=20)
    parser.add_argument("--max-description-words", type=int, default=300)
    parser.add_argument("--max-per-family", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    info = build(Path(args.man_root), Path(args.output), args.test, args.train, args.corpus,
                 args.min_summary_words, args.min_description_words, args.max_description_words, args.workers,
                 args.max_per_family)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
