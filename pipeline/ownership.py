"""What fret owns in a folder it writes: one record, one rule, for every command.

A command that writes into a folder (`fret run`, `fret export`, `fret train`, `fret report`) first
claims what it will write there, in the folder's marker file (MARKER): the command, its run ids,
and each claimed path, with the patterns of what fret creates under it when it is a folder. A path
is claimed only when nothing is there yet, so nothing a user put there is ever claimed.

The rule: a file is fret's when it is a claimed path, lies under one and matches its patterns, or
is an interrupted atomic write of one (".NAME.xxxx.partial" beside it). Removing and replacing
(--overwrite, --resume, the end of a run, Ctrl-C) touch fret's files only, and a folder that holds
anything else is refused with the names of what is not fret's. A folder with files and no marker
was not made by fret (or by a fret from before markers): it is never deleted from.

Paths go through a Store, so the same rule serves local folders and any Beam filesystem
(beam_jobs.outputs.BeamStore); pipeline/ stays free of Beam.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import json
import os
import re
import uuid
from pathlib import Path
from typing import Iterable, Optional, Protocol, Sequence

MARKER = ".fret-owner.json"
MARKER_VERSION = 1
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.partial$")  # beam_jobs.journal.AtomicFile's temporary name


class OwnershipError(ValueError):
    """A folder fret may not write into, or remove from, as asked; the message says why."""


class Store(Protocol):
    """The few file operations the rule needs; paths are '/'-separated, `folder` has no trailing '/'."""

    def files(self, folder: str) -> list[str]: ...  # every file below folder, relative to it

    def read(self, path: str) -> Optional[bytes]: ...  # None when there is no such file

    def write(self, path: str, data: bytes) -> None: ...  # atomically

    # files; then the folders below `folder` they emptied, and every empty folder below the `prune` paths
    def delete(self, folder: str, rels: Sequence[str], prune: Sequence[str] = ()) -> None: ...


class LocalStore:
    """The local filesystem (fret train's output)."""

    def files(self, folder: str) -> list[str]:
        root = Path(folder)
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)).replace(os.sep, "/") for p in root.rglob("*") if not p.is_dir())

    def read(self, path: str) -> Optional[bytes]:
        try:
            return Path(path).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, path: str, data: bytes) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
        tmp.write_bytes(data)
        tmp.replace(target)

    def delete(self, folder: str, rels: Sequence[str], prune: Sequence[str] = ()) -> None:
        for rel in rels:
            Path(folder, rel).unlink(missing_ok=True)
        remove_emptied_dirs(folder, rels, prune)


def remove_emptied_dirs(folder: str, rels: Sequence[str], prune: Sequence[str] = ()) -> None:
    """Remove the local folders below `folder` that held deleted files and are empty now (a user's
    file, or a user's empty folder elsewhere, keeps its folder), and the empty folders below each
    `prune` path (a claim that owns everything below it: a run's scratch folders)."""
    parents = {Path(folder, rel).parent for rel in rels} - {Path(folder)}
    for root in map(Path, (f"{folder}/{p}" for p in prune)):
        if root.is_dir():
            parents |= {p for p in root.rglob("*") if p.is_dir()} | {root}
    for parent in sorted(parents, key=lambda p: -len(p.parts)):  # deepest first
        while parent != Path(folder) and Path(folder) in parent.parents:
            try:
                parent.rmdir()  # only an empty folder
            except OSError:
                break
            parent = parent.parent


@dataclasses.dataclass(frozen=True)
class Claim:
    """A path fret writes, relative to the folder. `inside`: patterns (fnmatch, '*' crosses '/') of
    the files fret creates below it when it is a folder; empty for a single file."""

    path: str
    inside: tuple[str, ...] = ()

    def owns(self, rel: str) -> bool:
        if rel == self.path:
            return True
        if self.inside and rel.startswith(self.path + "/"):
            below = rel[len(self.path) + 1:]
            return any(fnmatch.fnmatchcase(below, pattern) for pattern in self.inside)
        head, _, name = rel.rpartition("/")
        partial = _PARTIAL.match(name)  # an interrupted atomic write of the claimed file
        return bool(partial and not self.inside and f"{head}/{partial['name']}".lstrip("/") == self.path)


@dataclasses.dataclass
class Marker:
    command: str
    claims: list[Claim]
    runs: list[dict]
    version: int = MARKER_VERSION

    def owns(self, rel: str) -> bool:
        return rel == MARKER or any(c.owns(rel) for c in self.claims)

    def to_json(self) -> bytes:
        return json.dumps({"written_by": "fret-distill", "version": self.version, "command": self.command,
                           "runs": self.runs, "claims": [{"path": c.path, "inside": list(c.inside)}
                                                          for c in self.claims]}, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "Marker":
        try:
            raw = json.loads(data)
            return cls(command=raw["command"], runs=list(raw["runs"]), version=int(raw["version"]),
                       claims=[Claim(c["path"], tuple(c["inside"])) for c in raw["claims"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise OwnershipError(f"{where} is not a marker fret can read ({exc}); fret will not delete from that "
                                 "folder: choose another, or empty it yourself") from None


def _marker_path(folder: str) -> str:
    return f"{folder}/{MARKER}"


def read_marker(store: Store, folder: str) -> Optional[Marker]:
    folder = folder.rstrip("/")
    data = store.read(_marker_path(folder))
    return None if data is None else Marker.from_json(data, _marker_path(folder))


def foreign(store: Store, folder: str, marker: Optional[Marker] = None) -> list[str]:
    """The files in `folder` that are not fret's, by the folder's marker (every file, without one)."""
    folder = folder.rstrip("/")
    marker = marker if marker is not None else read_marker(store, folder)
    return [rel for rel in store.files(folder) if marker is None or not marker.owns(rel)]


def _shown(paths: Sequence[str], limit: int = 8) -> str:
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _run_record(run_id: str, how: str) -> dict:
    return {"run_id": run_id, "how": how, "started_at": dt.datetime.now(dt.timezone.utc).isoformat()}


def take(store: Store, folder: str, command: str, claims: Iterable[Claim], run_id: str, *, overwrite: bool = False,
         resume: bool = False, keep: Sequence[str] = (), apply: bool = True, what: str = "--output",
         hint: str = "") -> Marker:
    """Claim `folder` for a command that is about to write it, or refuse with the reason.

    - absent or empty: claimed;
    - otherwise it must hold this command's marker and only fret's files, and the caller must say
      what to do: `overwrite` removes every fret file, `resume` every one except those under the
      claims named in `keep` (a run's journal).
    `apply=False` checks without touching anything."""
    folder = folder.rstrip("/")
    claims = list(claims)
    present = store.files(folder)
    if not present:
        marker = Marker(command, claims, [_run_record(run_id, "new")])
        if apply:
            store.write(_marker_path(folder), marker.to_json())
        return marker
    marker = read_marker(store, folder)
    if marker is None:
        raise OwnershipError(f"{what} {folder} holds {len(present)} files ({_shown(present, 3)}) and no {MARKER}: "
                             f"fret did not create it (or a fret from before ownership markers did), and it never "
                             f"deletes or replaces files it did not write. Choose a new {what}, or empty it yourself")
    if marker.command != command:
        raise OwnershipError(f"{what} {folder} holds the output of `fret {marker.command}`, not of `fret {command}`; "
                             f"choose another {what}")
    if not (overwrite or resume):
        raise OwnershipError(f"{what} {folder} is not empty ({len(present)} files); {hint or 'pass --overwrite to replace it'}")
    alien = [rel for rel in present if not marker.owns(rel)]
    if alien:
        raise OwnershipError(f"{'--overwrite' if overwrite else '--resume'} removes only what fret wrote (listed in "
                             f"{folder}/{MARKER}), and {folder} holds other things too: {_shown(alien)}. Move them "
                             f"out first, or choose another {what}")
    kept = [c for c in marker.claims if c.path in keep] if resume else []
    doomed = [rel for rel in present if rel != MARKER and not any(c.owns(rel) for c in kept)]
    updated = Marker(command, _merged(kept, claims), [*marker.runs, _run_record(run_id, "resume" if resume else "overwrite")])
    if apply:
        store.delete(folder, doomed, [c.path for c in marker.claims if "*" in c.inside and c not in kept])
        store.write(_marker_path(folder), updated.to_json())
    return updated


def _merged(first: Sequence[Claim], second: Sequence[Claim]) -> list[Claim]:
    by_path = {c.path: c for c in first}
    for c in second:
        by_path.setdefault(c.path, c)
    return list(by_path.values())


def claim(store: Store, folder: str, command: str, claims: Iterable[Claim], replace: bool = True) -> Marker:
    """Add claims to a folder fret already owns (a run folder gaining a dataset card, an export gaining
    files). A path that exists and is not fret's is refused; with `replace=False`, so is one that is."""
    folder = folder.rstrip("/")
    marker = read_marker(store, folder)
    present = set(store.files(folder))
    if marker is None:
        if present:
            raise OwnershipError(f"{folder} holds files and no {MARKER}: fret did not create it, and it writes only "
                                 "into folders it owns. Choose another folder")
        marker = Marker(command, [], [])
    claims = list(claims)
    for c in claims:
        taken = [rel for rel in present if rel == c.path or rel.startswith(c.path + "/")]
        alien = [rel for rel in taken if not marker.owns(rel)]
        if alien:
            raise OwnershipError(f"{folder}/{c.path} exists and fret did not write it ({_shown(alien, 3)}); fret does "
                                 "not replace files it did not write: move it, or choose another folder")
        if taken and not replace:
            raise OwnershipError(f"{folder}/{c.path} exists (written by an earlier fret {marker.command}); pass "
                                 "--overwrite to replace it")
    marker.claims = _merged(marker.claims, claims)
    store.write(_marker_path(folder), marker.to_json())
    return marker


def remove(store: Store, folder: str, paths: Iterable[str]) -> list[str]:
    """Delete fret's files under the given claimed paths (the whole claim: a folder's files that match
    its patterns). Anything else there stays. Returns what was deleted."""
    folder = folder.rstrip("/")
    marker = read_marker(store, folder)
    if marker is None:
        return []
    wanted = [c for c in marker.claims if c.path in set(paths)]
    doomed = [rel for rel in store.files(folder) if any(c.owns(rel) for c in wanted)]
    prune = [c.path for c in wanted if "*" in c.inside]  # fret's folder through and through: its empty folders too
    if doomed or prune:
        store.delete(folder, doomed, prune)
    return doomed


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]
