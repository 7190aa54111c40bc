"""A model as journal keys name it: by what its results depend on, not only by its name.

A served name ("llm", "embedder") stays the same when the checkpoint behind it changes, and a
`fret train --output` folder is rewritten in place by the next training. Keys that held only the
name would hand a run with the changed model the old model's results from a shared --journal.

- A local folder (an embedder, `--llm_serve`'s model): its name and a digest of its files'
  contents (README files and dot-files aside: they change no result).
- A served model: its name and the weights the server says it loaded (vLLM's /v1/models `root`);
  a server that does not say is known by its name only.
- Anything else (a hub id that is not a local folder): its name; the hub's cache holds one revision.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

_CHUNK = 1 << 20
_digests: dict[tuple, str] = {}  # (folder, every file's name, size and mtime) -> digest: hashed once per change


def _counted(path: Path) -> list[Path]:
    """The files of a model folder whose bytes can change a result."""
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.lower().startswith("readme")
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def folder_digest(folder: str) -> str:
    """sha256 over every counted file's relative name and bytes, in name order (16 hex digits)."""
    path = Path(folder)
    files = _counted(path)
    signature = (str(path.resolve()), *((str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]))
    if signature not in _digests:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.relative_to(path).as_posix().encode("utf-8") + b"\0")
            with f.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
            digest.update(b"\0")
        _digests[signature] = digest.hexdigest()[:16]
    return _digests[signature]


def local_identity(name: str, path: Optional[str]) -> str:
    """`name#digest` when `path` is a local folder; `name` otherwise."""
    if path and Path(path).is_dir():
        return f"{name}#{folder_digest(path)}"
    return name


def served_identity(name: str, root: Optional[str]) -> str:
    """`name (root)` when the server names the weights it loaded under another name; `name` otherwise."""
    return f"{name} ({root})" if root and root != name else name
