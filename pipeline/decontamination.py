"""Evaluation-set decontamination: drop training examples that quote an evaluation text.

GPT-3's 13-gram rule was made for long documents. A BEIR query has 5-10 words, so under it a
query only ever matches itself. The rule here depends on the length L (in normalised words) of
each evaluation text:

- any L: a generated query equal to it (after `normalize_query`) is contaminated;
- `min_words` <= L < `ngram` (queries, titles): a training query or positive passage that
  *contains* it, as a run of whole words, is contaminated;
- L >= `ngram` (passages): a training text that shares a run of n words with it is contaminated,
  n = min(ngram, max(min_ngram, L // 2)): half of a short passage's words in a row, never fewer
  than `min_ngram` (8), and GPT-3's 13 from 26 words on.

Every run of words is kept as a 64-bit hash, in one sorted numpy array: 8 bytes a key, so the
n-grams of a million-passage corpus fit in memory. Two distinct texts collide with
probability about keys / 2^64 (3e-12 for 50M keys): a hash hit is taken as a match.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Iterable, Optional, Sequence

import numpy as np

from pipeline.filtering import words

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2^64
_INVERSE = np.uint64(pow(0x9E3779B97F4A7C15, -1, 2**64))
_WHOLE_TEXT = 0  # the size tag of whole-text keys; runs of words are tagged with their length (>= 1)


@dataclasses.dataclass(frozen=True)
class DecontamConfig:
    ngram: int = 13  # n for evaluation passages of 2n words and more (GPT-3's contamination rule)
    min_ngram: int = 8  # n never falls below this for shorter evaluation passages
    min_words: int = 4  # shorter evaluation texts only match an equal generated query

    def __post_init__(self):
        if self.ngram < 1 or self.min_words < 1 or self.min_ngram < 1:
            raise ValueError("--decontam-ngram and the word minimums must be >= 1")

    def passage_ngram(self, length: int) -> int:
        """n for an evaluation passage of `length` words."""
        return min(self.ngram, max(self.min_ngram, length // 2))

    def sizes(self) -> range:
        """Every run length an evaluation key can have: what a training text is cut into."""
        return range(min(self.min_words, self.ngram), self.ngram + 1)


def eval_texts(line: str) -> list[str]:
    """The texts of one line of an evaluation file: JSONL (title/text/query fields) or plain text."""
    line = line.strip()
    if not line:
        return []
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return [line]  # a plain text file: one text per line
    if isinstance(record, dict):
        return [str(record[k]) for k in ("title", "text", "query") if record.get(k)]
    return [str(record)]


@functools.lru_cache(maxsize=1 << 20)
def _word_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _finish(h: np.ndarray, size) -> np.ndarray:
    """splitmix64's finaliser over (hash xor size tag): spreads the polynomial's low bits."""
    with np.errstate(over="ignore"):
        tag = np.asarray(size, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93)
        z = h ^ tag
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class _Runs:
    """Polynomial hashes of any run of words in O(1) each, by prefix sums (all mod 2^64):
    H(i, j) = sum_{k=i}^{j-1} w_k P^(j-1-k) = P^(j-1) * (S[j] - S[i]), S[k] = sum_{m<k} w_m P^-m.
    P is odd, so it has an inverse mod 2^64. One scan serves every run length and every text
    of a batch: a run is valid when it lies inside one text."""

    def __init__(self, tokens: Sequence[str]):
        count = len(tokens)
        w = np.fromiter((_word_hash(t) for t in tokens), dtype=np.uint64, count=count)
        self.powers = _powers(_MULTIPLIER, count)  # P^k
        with np.errstate(over="ignore"):
            scaled = w * _powers(_INVERSE, count)  # w_k P^-k
            self.sums = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(scaled, dtype=np.uint64)])

    def hashes(self, starts: np.ndarray, length) -> np.ndarray:
        """Polynomial hashes of the runs tokens[start:start+length] (length: a scalar or per start)."""
        ends = starts + length
        with np.errstate(over="ignore"):
            return self.powers[ends - 1] * (self.sums[ends] - self.sums[starts])


def _powers(base: np.uint64, count: int) -> np.ndarray:
    values = np.full(count, base, dtype=np.uint64)
    if count:
        values[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(values, dtype=np.uint64)


def run_hashes(tokens: Sequence[str], sizes: Iterable[int]) -> dict[int, np.ndarray]:
    """{n: key of tokens[i:i+n] for every i} for each n in `sizes` (those no longer than the text)."""
    wanted = sorted(n for n in set(sizes) if 1 <= n <= len(tokens))
    if not wanted:
        return {}
    runs = _Runs(tokens)
    return {n: _finish(runs.hashes(np.arange(len(tokens) - n + 1), n), n) for n in wanted}


def whole_text_key(tokens: Sequence[str]) -> np.ndarray:
    if not tokens:
        return np.empty(0, dtype=np.uint64)
    return _finish(_Runs(tokens).hashes(np.zeros(1, dtype=np.int64), len(tokens)), _WHOLE_TEXT)


def eval_keys(text: str, config: DecontamConfig = DecontamConfig()) -> np.ndarray:
    """The keys one evaluation text contributes (see the module docstring for the rule)."""
    return eval_keys_batch([text], config)


def eval_keys_batch(texts: Sequence[str], config: DecontamConfig = DecontamConfig()) -> np.ndarray:
    """The keys of many evaluation texts, hashed in one pass over their words."""
    token_lists = [words(t) for t in texts]
    token_lists = [t for t in token_lists if t]
    if not token_lists:
        return np.empty(0, dtype=np.uint64)
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    runs = _Runs([w for t in token_lists for w in t])
    keys = [_finish(runs.hashes(offsets, lengths), _WHOLE_TEXT)]
    # The run length each text is matched by: its whole length when short, the scaled n when long.
    run_length = np.array([config.passage_ngram(n) if n >= config.ngram else n for n in lengths], dtype=np.int64)
    matched = lengths >= min(config.min_words, config.ngram)
    for n in np.unique(run_length[matched]):
        texts_n = np.flatnonzero(matched & (run_length == n))
        counts = lengths[texts_n] - n + 1
        starts = np.repeat(offsets[texts_n], counts) + _ranges(counts)
        keys.append(_finish(runs.hashes(starts, int(n)), int(n)))
    return np.concatenate(keys)


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] without a Python loop."""
    total = int(counts.sum())
    ends = np.cumsum(counts)
    return np.arange(total) - np.repeat(ends - counts, counts)


@dataclasses.dataclass(frozen=True)
class EvalIndex:
    """The sorted, unique 64-bit keys of an evaluation set."""

    keys: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, dtype=np.uint64))

    @classmethod
    def build(cls, texts: Iterable[str], config: DecontamConfig = DecontamConfig(),
              batch: int = 2048) -> "EvalIndex":
        texts = list(texts)
        return cls.from_arrays([eval_keys_batch(texts[i:i + batch], config) for i in range(0, len(texts), batch)])

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> "EvalIndex":
        arrays = [a for a in arrays if len(a)]
        if not arrays:
            return cls()
        return cls(np.unique(np.concatenate(arrays)))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes

    def __contains__(self, key) -> bool:
        return bool(self.contains(np.asarray([key], dtype=np.uint64))[0])

    def contains(self, candidates: np.ndarray) -> np.ndarray:
        """A boolean mask: which of `candidates` are evaluation keys."""
        if not len(self.keys) or not len(candidates):
            return np.zeros(len(candidates), dtype=bool)
        at = np.searchsorted(self.keys, candidates)
        at[at == len(self.keys)] = 0
        return self.keys[at] == candidates


def contamination(texts: Sequence[str], index: EvalIndex, config: DecontamConfig = DecontamConfig(),
                  *, whole_text: bool = False) -> Optional[str]:
    """Why one of `texts` is contaminated (the first found), or None when every text is clean.

    whole_text: also match a text equal to an evaluation text (for generated queries)."""
    if not len(index):
        return None
    for text in texts:
        tokens = words(text)
        if whole_text and tokens and whole_text_key(tokens)[0] in index:
            return f"equals an evaluation text: {' '.join(tokens)!r}"
        for n, hashes in sorted(run_hashes(tokens, config.sizes()).items()):
            hits = np.flatnonzero(index.contains(hashes))
            if len(hits):
                start = int(hits[0])
                return f"shares {n} words in a row with an evaluation text: {' '.join(tokens[start:start + n])!r}"
    return None
