"""Build samples/passages.jsonl from CPython's standard-library docstrings.

Real, human-written text under the PSF License (which allows redistribution), available
offline on every machine. Run: python scripts/make_sample_passages.py
"""

import importlib
import inspect
import json
import re
import sys
from pathlib import Path

MODULES = [
    "json", "csv", "pathlib", "collections", "itertools", "functools", "datetime", "random",
    "statistics", "textwrap", "string", "re", "heapq", "bisect", "shutil", "tempfile", "zipfile",
    "gzip", "hashlib", "hmac", "secrets", "base64", "uuid", "urllib.parse", "http.client",
    "email.message", "sqlite3", "threading", "queue", "subprocess", "argparse", "logging",
    "contextlib", "dataclasses", "enum", "typing", "decimal", "fractions", "math", "cmath",
    "difflib", "pprint", "shlex", "glob", "fnmatch", "calendar", "time", "socket", "ssl",
    "unicodedata", "locale", "gettext", "copy", "pickle", "struct", "array", "weakref",
    "abc", "operator", "inspect", "traceback", "warnings", "asyncio", "concurrent.futures",
    "multiprocessing", "io", "os.path", "platform", "zlib", "lzma", "bz2", "tarfile",
    "configparser", "html", "xml.etree.ElementTree", "ipaddress", "graphlib", "timeit",
]
MIN_CHARS, MAX_CHARS, LIMIT = 160, 1500, 320


def clean(doc: str) -> str:
    doc = inspect.cleandoc(doc)
    doc = re.sub(r"\n{3,}", "\n\n", doc)
    return doc.strip()


def passages():
    seen = set()
    for name in MODULES:
        module = importlib.import_module(name)
        items = [(name, module)] + [
            (f"{name}.{attr}", obj) for attr, obj in sorted(vars(module).items())
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)
                                             or inspect.isbuiltin(obj))
            and getattr(obj, "__module__", name) in (name, module.__name__)
        ]
        for title, obj in items:
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            text = clean(doc)[:MAX_CHARS]
            if len(text) < MIN_CHARS or text in seen:
                continue
            seen.add(text)
            yield {"title": title, "text": text}


def main() -> int:
    out = Path(__file__).resolve().parents[1] / "samples" / "passages.jsonl"
    rows = list(passages())
    # An even spread over modules rather than the first modules only.
    step = max(1, len(rows) // LIMIT)
    rows = rows[::step][:LIMIT]
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} passages to {out} (Python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
