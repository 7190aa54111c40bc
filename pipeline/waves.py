"""Waves: the corpus cut into parts that one machine runs one after another in bounded memory.

A wave is the set of input records whose source hashes to it, so every chunk of a record, and
every accounting unit, lives in exactly one wave. Whatever must be decided over the whole corpus
(duplicate passages, duplicate queries) is decided on small keys first; each wave then applies
the decisions to its own records. The decisions are the same as the one-pipeline job's.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, NamedTuple

from pipeline import ids


AUTO_ABOVE = 100_000  # input records: one pipeline peaked at about 2 GiB at 100k passages, 5.8 GiB at 300k
AUTO_WAVE_SIZE = 30_000  # the size bench/scale.py measured: 1.5 GiB at 30k, 1.7 GiB at 300k


def auto_wave_size(records: int) -> int:
    """--wave_size auto on the DirectRunner: waves only where one pipeline's memory would grow
    past a few GiB (below it, one pipeline is a little faster: no scratch files, one start)."""
    return AUTO_WAVE_SIZE if records > AUTO_ABOVE else 0


def num_waves(records: int, wave_size: int) -> int:
    if wave_size < 1:
        raise ValueError("--wave_size must be >= 1 (0 turns waves off)")
    return max(1, math.ceil(records / wave_size))


def wave_of(source_id: str, waves: int) -> int:
    """Stable across processes and runs (Python's hash() is salted)."""
    digest = hashlib.blake2b(source_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % waves


class PassageKey(NamedTuple):
    """What passage deduplication needs of a passage: no text, a hash of it."""

    id: str
    source_id: str
    chunk: int
    content: str  # ids.passage_id(title, text)

    @property
    def unit(self) -> str:
        return f"{self.source_id}#{self.chunk}"


def passage_key(passage) -> PassageKey:
    return PassageKey(passage.id, passage.source_id, passage.chunk, ids.passage_id(passage.title, passage.text))


class Drop(NamedTuple):
    """Why a passage does not go on: `duplicate` (filtered) or `conflict` (dead-lettered, `texts`
    different texts share its id). `detail` is the filtered record's detail."""

    kind: str
    detail: str = ""
    texts: int = 0


def resolve_id_group(members: Iterable[PassageKey]) -> tuple[list[PassageKey], list[tuple[PassageKey, Drop]]]:
    """Keys sharing an id -> (kept, drops): one is kept when their texts agree (the first by
    source), every one is a conflict when they do not (beam_jobs.read's rule)."""
    members = sorted(members, key=lambda m: m.source_id)
    texts = len({m.content for m in members})
    if texts > 1:
        return [], [(m, Drop("conflict", texts=texts)) for m in members]
    detail = f"same id and text as {members[0].source_id}"
    return members[:1], [(m, Drop("duplicate", detail)) for m in members[1:]]


def resolve_content_group(members: Iterable[PassageKey]) -> tuple[list[PassageKey], list[tuple[PassageKey, Drop]]]:
    """Keys sharing a text under different ids -> the smallest id is kept."""
    members = sorted(members, key=lambda m: (m.id, m.source_id))
    detail = f"same text as passage {members[0].id}"
    return members[:1], [(m, Drop("duplicate", detail)) for m in members[1:]]


class UnitRef(NamedTuple):
    """A seed passage reduced to its accounting unit: what the query filters need of it
    (pipeline.accounting.unit_id reads source_id and chunk)."""

    source_id: str
    chunk: int
