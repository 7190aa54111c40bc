"""Filters: exact and near-duplicate queries and the LLM auto-rater (decontamination: pipeline.decontamination)."""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from typing import Iterable, Sequence

from pipeline.llm.client import LLMClient
from pipeline.llm.types import GenerationResult
from pipeline.prompts import load_prompt
from schemas import QualityRating

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalize_query(text: str) -> str:
    """Case-, accent-width- and punctuation-insensitive form used for exact duplicate checks."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", text).split())


def words(text: str) -> list[str]:
    return normalize_query(text).split()


def shingles(text: str, n: int = 3) -> set[str]:
    tokens = words(text)
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclasses.dataclass(frozen=True)
class NearDupConfig:
    """MinHash LSH whose banding follows the threshold.

    Two queries with Jaccard J share a band with probability 1 - (1 - J^rows)^bands. `rows` is
    the largest that still finds a pair at exactly the threshold with probability >= `recall`
    (bands = num_perm // rows): more rows would miss pairs, fewer would only compare more."""

    threshold: float = 0.8  # Jaccard over word 3-gram shingles
    shingle: int = 3
    num_perm: int = 128  # MinHash permutations
    recall: float = 0.99  # chance that a pair at exactly the threshold is compared

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise ValueError("--near-dup-threshold must be in (0, 1] (0 disables the filter)")
        if not 0 < self.recall < 1 or self.num_perm < 1:
            raise ValueError("recall must be in (0, 1) and num_perm >= 1")

    @functools.cached_property  # minhash_bands asks for it once per query
    def rows(self) -> int:
        fitting = [r for r in range(1, self.num_perm + 1)
                   if band_recall(self.threshold, self.num_perm // r, r) >= self.recall]
        return max(fitting) if fitting else 1

    @property
    def bands(self) -> int:
        return self.num_perm // self.rows

    @property
    def recall_at_threshold(self) -> float:
        return band_recall(self.threshold, self.bands, self.rows)


def band_recall(jaccard_value: float, bands: int, rows: int) -> float:
    """P(two sets with this Jaccard similarity share at least one LSH band)."""
    return 1.0 - (1.0 - jaccard_value ** rows) ** bands


@functools.lru_cache(maxsize=8)
def _empty_minhash(num_perm: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1)  # its permutations are drawn once, then copied


def minhash_signature(text: str, num_perm: int, shingle: int = 3):
    """datasketch's MinHash of the word shingles (its 32-bit hashes; 5.6x faster than one blake2b
    per shingle and permutation, which this module used before); None when there are none."""
    grams = shingles(text, shingle)
    if not grams:
        return None
    signature = _empty_minhash(num_perm).copy()
    signature.update_batch([g.encode("utf-8", "surrogatepass") for g in sorted(grams)])
    return signature


def minhash_bands(text: str, config: NearDupConfig = NearDupConfig()) -> list[str]:
    """LSH band keys: two queries with Jaccard >= threshold share one with probability >= config.recall.

    The banding is ours, not datasketch's MinHashLSH: Beam groups queries by these keys across
    workers, where MinHashLSH is one in-memory index; its params are chosen for the threshold's
    recall (NearDupConfig), and a test checks the keys find what MinHashLSH(params=...) finds."""
    rows, bands = config.rows, config.bands
    signature = minhash_signature(text, bands * rows, config.shingle)
    if signature is None:
        return []
    values = signature.hashvalues.tolist()
    return [f"{b}:" + ",".join(map(str, values[b * rows:(b + 1) * rows])) for b in range(bands)]


def near_duplicate_pairs(bucket: Sequence[tuple[str, str]], config: NearDupConfig = NearDupConfig()
                         ) -> list[tuple[str, str]]:
    """Within one LSH bucket of (query_id, query): every pair (smaller id, larger id) whose
    Jaccard similarity reaches the threshold."""
    ordered = sorted(set(bucket))
    grams = [shingles(q, config.shingle) for _, q in ordered]
    return [(ordered[i][0], ordered[j][0]) for i in range(len(ordered)) for j in range(i + 1, len(ordered))
            if ordered[i][0] != ordered[j][0] and jaccard(grams[i], grams[j]) >= config.threshold]


def near_duplicates_to_drop(pairs: Iterable[tuple[str, str]]) -> set[str]:
    """Greedy in id order: a query is dropped when it is a near duplicate of a query that is *kept*.
    In a chain a~b~c where a and c differ, b goes and c stays: c has no surviving duplicate."""
    neighbours: dict[str, set[str]] = {}
    for a, b in pairs:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    kept: set[str] = set()
    dropped: set[str] = set()
    for qid in sorted(neighbours):
        if any(other < qid and other in kept for other in neighbours[qid]):
            dropped.add(qid)
        else:
            kept.add(qid)
    return dropped


@dataclasses.dataclass(frozen=True)
class RaterConfig:
    min_score: int = 3  # keep examples rated at least this (1-5)
    keep_unrated: bool = False  # a failed rating (bad JSON, cut off) dead-letters the example unless set
    max_tokens: int = 256
    temperature: float = 0.0
    max_passage_chars: int = 2000


async def rate_example(client: LLMClient, task: str, query: str, title: str, passage: str,
                       config: RaterConfig) -> GenerationResult[QualityRating]:
    prompt = load_prompt("quality_rater").render(task=task, query=query, title=title or "(none)",
                                                 passage=passage[:config.max_passage_chars])
    return await client.generate(prompt, QualityRating, max_tokens=config.max_tokens,
                                 temperature=config.temperature)
