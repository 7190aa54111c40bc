"""Build samples/pydoc-retrieval/, a small real retrieval set in BEIR format, from CPython's
standard-library docstrings (PSF License).

Query: the one-line summary a developer wrote for a function or class ("Return the number of
items in a deque."). Relevant document: the rest of that docstring, which never repeats the
summary line. Nothing is generated. Split by a hash of the name: 80% train, 20% test.

Run: python scripts/make_pydoc_retrieval.py
"""

import hashlib
import importlib
import inspect
import json
import pkgutil
import sys
import sysconfig
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "samples" / "pydoc-retrieval"
STDLIB = sysconfig.get_paths()["stdlib"]
SKIP = ("test", "idlelib", "tkinter", "turtle", "lib2to3", "ensurepip", "venv", "antigravity", "this",
        "pydoc_data", "__main__", "distutils", "msilib", "crypt", "nis", "spwd", "ossaudiodev")


def docstrings():
    seen_names = set()
    for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        if not info.name.isidentifier() or info.name.startswith("_") or info.name.startswith(SKIP):
            continue
        if not str(getattr(info.module_finder, "path", "")).startswith(STDLIB):
            continue  # the standard library only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(info.name)
            except Exception:
                continue
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            objects = [(f"{info.name}.{attr}", obj)]
            if inspect.isclass(obj):
                objects += [(f"{info.name}.{attr}.{m}", f) for m, f in sorted(vars(obj).items())
                            if not m.startswith("_") and inspect.isfunction(f)]
            for name, item in objects:
                if name in seen_names or not (inspect.isfunction(item) or inspect.isclass(item)):
                    continue
                seen_names.add(name)
                doc = inspect.getdoc(item)
                if doc:
                    yield name, doc


def split(doc: str):
    lines = doc.strip().split("\n")
    summary = lines[0].strip()
    body = "\n".join(lines[1:]).strip()
    if not (20 <= len(summary) <= 200) or len(body) < 80 or summary.endswith(":") or summary in body:
        return None
    return summary, body[:1500]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "qrels").mkdir(exist_ok=True)
    corpus, queries, qrels = [], [], {"train": [], "test": []}
    summaries = set()
    for name, doc in docstrings():
        pair = split(doc)
        if pair is None or pair[0] in summaries:
            continue
        summary, body = pair
        summaries.add(summary)
        doc_id, query_id = f"d:{name}", f"q:{name}"
        corpus.append({"_id": doc_id, "title": name, "text": body})
        queries.append({"_id": query_id, "text": summary})
        bucket = "test" if int(hashlib.sha256(name.encode()).hexdigest(), 16) % 5 == 0 else "train"
        qrels[bucket].append((query_id, doc_id))
    with open(OUT / "corpus.jsonl", "w", encoding="utf-8") as f:
        for row in corpus:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(OUT / "queries.jsonl", "w", encoding="utf-8") as f:
        for row in queries:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    for bucket, pairs in qrels.items():
        with open(OUT / "qrels" / f"{bucket}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q, d in pairs:
                f.write(f"{q}\t{d}\t1\n")
    print(f"{len(corpus)} documents, {len(qrels['train'])} train and {len(qrels['test'])} test queries "
          f"(Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
