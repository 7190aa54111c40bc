"""One rule for duplicate passages, for the one pipeline and for waves.

Passages that share an id are one passage when their texts agree (the first by source is kept)
and a conflict when they do not (every version is dead-lettered: we cannot tell which is right).
Passages that share a text under different ids keep the smallest id. The rule reads only small
keys (id, source, chunk, a hash of the text), so waves can decide it over the whole corpus
without holding the texts; the one pipeline applies it to the passages themselves.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, TypeVar

from pipeline import ids
from pipeline.accounting import Outcome, filtered, unit_id
from pipeline.ingest import conflict_letter

T = TypeVar("T")


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
    kept_id: str = ""  # a duplicate text: the id of the copy that was kept (its ids resolve to it)


def _keyed(members: Iterable[T], key: Callable[[T], PassageKey]) -> list[tuple[PassageKey, T]]:
    return [(key(m), m) for m in members]


def resolve_id_group(members: Iterable[T], key: Callable[[T], PassageKey] = lambda m: m
                     ) -> tuple[list[T], list[tuple[T, Drop]]]:
    """Members sharing an id -> (kept, drops). `key` gives a member's PassageKey (members are
    keys already by default)."""
    keyed = sorted(_keyed(members, key), key=lambda km: km[0].source_id)
    texts = len({k.content for k, _ in keyed})
    if texts > 1:
        return [], [(m, Drop("conflict", texts=texts)) for _, m in keyed]
    detail = f"same id and text as {keyed[0][0].source_id}"
    return [keyed[0][1]], [(m, Drop("duplicate", detail)) for _, m in keyed[1:]]


def resolve_content_group(members: Iterable[T], key: Callable[[T], PassageKey] = lambda m: m
                          ) -> tuple[list[T], list[tuple[T, Drop]]]:
    """Members sharing a text under different ids -> the smallest id is kept."""
    keyed = sorted(_keyed(members, key), key=lambda km: (km[0].id, km[0].source_id))
    detail = f"same text as passage {keyed[0][0].id}"
    return [keyed[0][1]], [(m, Drop("duplicate", detail, kept_id=keyed[0][0].id)) for _, m in keyed[1:]]


def drop_outcome(passage, drop: Drop) -> Outcome:
    """A dropped passage's outcome: a conflict is dead-lettered, a duplicate filtered."""
    if drop.kind == "conflict":
        letter = conflict_letter(passage.id, drop.texts, passage.title, passage.text, passage.source_id)
        return Outcome(unit_id(passage), "dead_lettered", letter)
    return filtered(unit_id(passage), passage.id, "read", "duplicate_passage", drop.detail)
