"""Filters: exact and near-duplicate queries, evaluation-set decontamination, the LLM auto-rater."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from typing import Iterable, Optional, Sequence

from pipeline.llm.client import GenerationResult, LLMClient
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
    threshold: float = 0.8  # Jaccard over word 3-gram shingles
    shingle: int = 3
    bands: int = 16
    rows: int = 4  # 64 MinHash permutations in all


def _hash64(value: str, salt: int) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8,
                                          salt=salt.to_bytes(8, "little")).digest(), "little")


def minhash_bands(text: str, config: NearDupConfig = NearDupConfig()) -> list[str]:
    """LSH band keys: two queries with Jaccard >= threshold share one with high probability."""
    grams = shingles(text, config.shingle)
    if not grams:
        return []
    signature = [min(_hash64(g, seed) for g in grams) for seed in range(config.bands * config.rows)]
    return [f"{b}:" + ",".join(map(str, signature[b * config.rows:(b + 1) * config.rows]))
            for b in range(config.bands)]


def near_duplicates_to_drop(group: Sequence[tuple[str, str]], config: NearDupConfig = NearDupConfig()) -> set[str]:
    """Within one LSH bucket of (query_id, query): drop every query that is a near duplicate of
    one with a smaller id. Deterministic, so every bucket agrees."""
    ordered = sorted(group)
    grams = {qid: shingles(q, config.shingle) for qid, q in ordered}
    drop: set[str] = set()
    for i, (qid, _) in enumerate(ordered):
        for earlier, _ in ordered[:i]:
            if jaccard(grams[earlier], grams[qid]) >= config.threshold:
                drop.add(qid)
                break
    return drop


@dataclasses.dataclass(frozen=True)
class DecontamConfig:
    ngram: int = 13  # word n-grams, as in GPT-3's contamination analysis
    min_words: int = 3  # texts shorter than ngram are compared whole when at least this long


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


def eval_ngrams(texts: Iterable[str], config: DecontamConfig = DecontamConfig()) -> set[str]:
    grams: set[str] = set()
    for text in texts:
        grams |= _ngrams(text, config)
    return grams


def _ngrams(text: str, config: DecontamConfig) -> set[str]:
    tokens = words(text)
    n = config.ngram
    if len(tokens) < n:
        return {" ".join(tokens)} if len(tokens) >= config.min_words else set()
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def contamination(texts: Sequence[str], eval_grams: set[str], config: DecontamConfig = DecontamConfig()
                  ) -> Optional[str]:
    """An evaluation n-gram found in one of `texts` (the first text that has one), or None when clean."""
    if not eval_grams:
        return None
    for text in texts:
        shared = _ngrams(text, config) & eval_grams
        if shared:
            return min(shared)
    return None


@dataclasses.dataclass(frozen=True)
class RaterConfig:
    min_score: int = 3  # keep examples rated at least this (1-5)
    max_tokens: int = 256
    temperature: float = 0.0
    max_passage_chars: int = 2000


async def rate_example(client: LLMClient, task: str, query: str, title: str, passage: str,
                       config: RaterConfig) -> GenerationResult[QualityRating]:
    prompt = load_prompt("quality_rater").render(task=task, query=query, title=title or "(none)",
                                                 passage=passage[:config.max_passage_chars])
    return await client.generate(prompt, QualityRating, max_tokens=config.max_tokens,
                                 temperature=config.temperature)
