"""The teacher's training text: docstrings of the third-party packages installed beside fret.

A pair is (title, summary, body): the qualified name, the one-line summary a developer wrote,
and the rest of the docstring, split by the same rule as samples/pydoc-retrieval. Sources are
parsed with `ast`, never imported, so no package code runs. CPython's standard library is not
read: the bundled samples come from it and stay held out; so do vendored copies of it, and
any pair whose summary or body start also occurs in the held-out sets.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

# Packages that vendor parts of the standard library (or are mostly generated API stubs).
SKIP_PACKAGES = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "backports", "typing_extensions",
                 "importlib_metadata", "importlib_resources", "zipp", "six", "dataclasses", "enum34")
MAX_BODY_CHARS = 1500  # as samples/pydoc-retrieval
MAX_FILE_BYTES = 1_000_000


@dataclasses.dataclass(frozen=True)
class DocPair:
    package: str
    title: str  # dotted module path + qualified name
    summary: str
    body: str


def split_docstring(doc: str) -> tuple[str, str] | None:
    """(summary, body) by samples/pydoc-retrieval's rule, or None when the docstring does not fit it."""
    lines = doc.strip().split("\n")
    summary = lines[0].strip()
    body = "\n".join(lines[1:]).strip()
    if not (20 <= len(summary) <= 200) or len(body) < 80 or summary.endswith(":") or summary in body:
        return None
    return summary, body[:MAX_BODY_CHARS]


def _documented(tree: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) of every documented class and function, depth first, in file order."""
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}.{node.name}"
            doc = ast.get_docstring(node)
            if doc:
                yield name, doc
            if isinstance(node, ast.ClassDef):
                yield from _documented(node, name)


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def held_out_keys(texts: Iterable[str]) -> set[str]:
    """Keys that mark a text as held out: its whitespace-normalised first 120 characters."""
    return {" ".join(t.split())[:120].lower() for t in texts if t.strip()}


def samples_held_out(root: Path) -> set[str]:
    """Every summary and passage of the bundled samples (the evaluation sets)."""
    texts = []
    for path in [root / "samples" / "passages.jsonl", root / "samples" / "pydoc-retrieval" / "corpus.jsonl",
                 root / "samples" / "pydoc-retrieval" / "queries.jsonl"]:
        with open(path, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return held_out_keys(texts)


def site_packages_dirs() -> list[Path]:
    """This interpreter's third-party package folders (the virtualenv's, never the standard library)."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths[key]).resolve() for key in ("purelib", "platlib") if Path(paths[key]).is_dir()})


def docstring_pairs(dirs: Iterable[Path], held_out: set[str], per_package: int = 1500) -> list[DocPair]:
    """At most `per_package` pairs from each top-level package, files in sorted order (deterministic);
    summaries are unique across the whole corpus."""
    pairs: list[DocPair] = []
    seen: set[str] = set()
    for root in dirs:
        packages = sorted(p for p in root.iterdir()
                          if (p.is_dir() and p.name.isidentifier() and (p / "__init__.py").exists())
                          and p.name not in SKIP_PACKAGES and not p.name.startswith("_"))
        for package in packages:
            count = 0
            for path in sorted(package.rglob("*.py")):
                relative = path.relative_to(root)
                if count >= per_package:
                    break
                if any(part.startswith("test") or part.startswith("_vendor") for part in relative.parts) \
                        or path.stat().st_size > MAX_FILE_BYTES:
                    continue
                try:
                    tree = ast.parse(path.read_text(encoding="utf-8"))
                except (SyntaxError, UnicodeDecodeError, ValueError):
                    continue
                for name, doc in _documented(tree, _module_name(relative)):
                    split = split_docstring(doc)
                    if split is None or count >= per_package:
                        continue
                    summary, body = split
                    if summary in seen or held_out_keys([summary, body]) & held_out:
                        continue
                    seen.add(summary)
                    pairs.append(DocPair(package=package.name, title=name, summary=summary, body=body))
                    count += 1
    return pairs
