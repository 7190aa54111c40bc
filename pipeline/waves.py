"""Waves: the corpus cut into parts that one machine runs one after another in bounded memory.

A wave is the set of input records whose source hashes to it, so every chunk of a record, and
every accounting unit, lives in exactly one wave. Whatever must be decided over the whole corpus
(duplicate passages, by pipeline.passage_dedupe's rule; duplicate queries) is decided on small
keys first; each wave then applies the decisions to its own records. The decisions are the same
as the one-pipeline job's.
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple, Optional

AUTO_ABOVE = 100_000  # input records: one pipeline peaked at about 2 GiB at 100k passages, 5.8 GiB at 300k
AUTO_WAVE_SIZE = 30_000  # the size bench/scale.py measured: 1.5 GiB at 30k, 1.6 GiB at 300k


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


class UnitRef(NamedTuple):
    """A seed passage reduced to its accounting unit: what the query filters need of it
    (pipeline.accounting.unit_id reads source_id and chunk)."""

    source_id: str
    chunk: int


class QueryKey(NamedTuple):
    """A query reduced to what the query filters read of it (query_id, query, and a given
    query's own accounting unit): the filter holds every wave's queries at once, so it gets no
    task, knobs or token counts."""

    query_id: str
    query: str
    unit: Optional[str] = None  # a given query's row (pipeline.accounting.query_unit); None: its seed's


def query_key(query_and_passage) -> tuple[QueryKey, UnitRef]:
    """(QueryRecord, seed Passage or None) -> the filter's (query, unit) pair. The UnitRef's
    source names the query's wave: its seed's, or for a given query without a positive its row's."""
    query, passage = query_and_passage
    ref = UnitRef(passage.source_id, passage.chunk) if passage is not None else UnitRef(query.unit, 0)
    return QueryKey(query.query_id, query.query, query.unit), ref


def query_wave(query_and_passage, waves: int) -> int:
    """The wave a query is searched, reranked and written in: its seed passage's (whose text it
    needs), or its own row's when it came without a positive."""
    return wave_of(query_key(query_and_passage)[1].source_id, waves)
