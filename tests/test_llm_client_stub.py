"""The client against the scripted stub: retries, timeouts, failures as data, token accounting."""

import asyncio
import json
import time
import typing

import pytest

from pipeline.generation import LLM_REASONS
from pipeline.llm.client import LLMClient
from pipeline.llm.types import ClientConfig, FailureReason, RetriesExhaustedError
from pipeline.testing.stub_llm import Fault, StubLLM, hashed_logprob
from schemas import GeneratedQuery
from schemas.records import DeadLetterReason


def make_client(*urls, **overrides) -> LLMClient:
    settings = dict(model="stub-llm", max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5.0)
    settings.update(overrides)
    return LLMClient(ClientConfig(base_urls=tuple(urls), **settings))


def run(coro):
    return asyncio.run(coro)


async def _generate(client, **kw):
    async with client:
        return await client.generate("write", GeneratedQuery, **kw)


def test_retry_on_500_then_success(stub_llm):
    stub_llm.add_faults(Fault("status", 500), Fault("status", 503))
    client = make_client(stub_llm.base_url)
    result = run(_generate(client))
    assert result.ok, result.detail
    assert result.value == GeneratedQuery(task="stub task", query="stub query")
    assert result.attempts == 3 and client.stats.retries == 2 and client.stats.failures == 0


def test_429_honours_retry_after(stub_llm):
    stub_llm.add_faults(Fault("status", 429, retry_after=0.3))
    client = make_client(stub_llm.base_url)
    start = time.perf_counter()
    result = run(_generate(client))
    assert result.ok and result.attempts == 2
    assert time.perf_counter() - start >= 0.3  # waited at least as long as the server asked


def test_exhausted_retries_give_a_clear_error(stub_llm):
    stub_llm.add_faults(*[Fault("status", 500)] * 4)
    client = make_client(stub_llm.base_url)
    result = run(_generate(client))
    assert not result.ok and result.reason == "server_error" and result.attempts == 4
    assert "failed after 4 attempts" in result.detail and "HTTP 500" in result.detail
    assert client.stats.failures == 1

    stub_llm.add_faults(*[Fault("status", 502)] * 4)

    async def raw():
        async with make_client(stub_llm.base_url) as c:
            await c.post_json("completions", {"prompt": "x"})

    with pytest.raises(RetriesExhaustedError, match="failed after 4 attempts.*HTTP 502"):
        run(raw())


def test_hung_server_hits_the_timeout(stub_llm):
    stub_llm.add_faults(*[Fault("hang", seconds=3.0)] * 2)
    client = make_client(stub_llm.base_url, timeout_s=0.3, max_retries=1)
    result = run(_generate(client))
    assert not result.ok and result.reason == "timeout"
    assert "timed out after 0.3s" in result.detail
    assert result.latency_s < 2.5  # gave up on both attempts well before the server answered


def test_connection_reset_is_retried(stub_llm):
    stub_llm.add_faults(Fault("reset"))
    result = run(_generate(make_client(stub_llm.base_url)))
    assert result.ok and result.attempts == 2


def test_dead_server_is_a_connection_error():
    from pipeline.llm.server import free_port

    client = make_client(f"http://127.0.0.1:{free_port()}", max_retries=1)
    result = run(_generate(client))
    assert not result.ok and result.reason == "connection_error"


def test_non_retryable_4xx_fails_at_once(stub_llm):
    stub_llm.add_faults(Fault("status", 400))
    client = make_client(stub_llm.base_url)
    result = run(_generate(client))
    assert not result.ok and result.reason == "http_error" and "HTTP 400" in result.detail
    assert client.stats.retries == 0


def test_fleet_fails_over_to_a_live_server(stub_llm):
    from pipeline.llm.server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    client = make_client(dead, stub_llm.base_url)

    async def many():
        async with client:
            return await asyncio.gather(*(client.generate("x", GeneratedQuery) for _ in range(6)))

    results = run(many())
    assert all(r.ok for r in results)
    assert len(stub_llm.requests) == 6  # every request landed on the live server in the end


def test_length_and_invalid_json_are_failures_not_data(stub_llm):
    stub_llm.add_faults(Fault("length"))
    result = run(_generate(make_client(stub_llm.base_url)))
    assert not result.ok and result.reason == "length" and result.value is None
    stub_llm.add_faults(Fault("garbage"))
    result = run(_generate(make_client(stub_llm.base_url)))
    assert not result.ok and result.reason == "invalid_json" and result.text.startswith("I cannot")
    stub_llm.add_faults(Fault("truncate"))
    result = run(_generate(make_client(stub_llm.base_url)))
    assert not result.ok and result.reason == "invalid_json"


def test_wrong_json_shape_is_schema_mismatch():
    with StubLLM(generate_fn=lambda p: json.dumps({"task": "t", "answer": "x"})) as stub:
        result = run(_generate(make_client(stub.base_url)))
    assert not result.ok and result.reason == "schema_mismatch"


def test_replacement_characters_are_invalid_utf8_not_a_valid_object():
    # Well-formed JSON that matches the schema, but the server decoded non-UTF-8 bytes to U+FFFD.
    with StubLLM(generate_fn=lambda p: json.dumps({"task": "find code", "query": "sort a \ufffd\ufffd\ufffd list"},
                                                  ensure_ascii=False)) as stub:
        result = run(_generate(make_client(stub.base_url)))
    assert not result.ok and result.reason == "invalid_utf8" and result.value is None
    assert "U+FFFD" in result.detail and "guidance" in result.detail


def test_every_client_failure_has_a_dead_letter_reason():
    assert set(typing.get_args(FailureReason)) == set(LLM_REASONS)
    assert set(LLM_REASONS.values()) <= set(typing.get_args(DeadLetterReason))


def test_no_seed_unless_asked(stub_llm):
    run(_generate(make_client(stub_llm.base_url)))
    assert "seed" not in stub_llm.requests[-1]
    run(_generate(make_client(stub_llm.base_url), seed=7))
    assert stub_llm.requests[-1]["seed"] == 7
    body = stub_llm.requests[-1]
    assert body["response_format"]["json_schema"]["schema"] == GeneratedQuery.model_json_schema()


def test_query_likelihood_scores_only_the_continuation():
    prefix, continuation = "Passage: cats purr.\nQuery:", " why do cats purr"

    def score(client):
        async def go():
            async with client:
                return await client.query_likelihood(prefix, continuation)
        return run(go())

    def prefix_sensitive(text_before, token):
        # Prefix tokens get wildly different values; continuation tokens depend only on themselves.
        if len(text_before) < len(prefix):
            return -100.0 * (1 + len(text_before))
        return hashed_logprob("", token)

    with StubLLM(logprob_fn=prefix_sensitive) as stub:
        result = score(make_client(stub.base_url))
    assert result.ok, result.detail
    assert result.tokens == (" why", " do", " cats", " purr")
    expected = sum(hashed_logprob("", t) for t in result.tokens)
    assert result.logprob_sum == pytest.approx(expected)
    assert result.logprob_mean == pytest.approx(expected / 4) and result.num_tokens == 4
    assert result.prompt_tokens > 0


def test_label_logprobs_cover_every_label(stub_llm):
    labels = [" Highly Relevant", " Somewhat Relevant", " Not Relevant"]

    async def go():
        async with make_client(stub_llm.base_url) as c:
            return await c.label_logprobs("Relevance:", labels)

    result = run(go())
    assert result.ok and set(result.logprobs) == set(labels)
    assert result.num_tokens == {" Highly Relevant": 2, " Somewhat Relevant": 2, " Not Relevant": 2}
    assert result.logprobs[" Not Relevant"] == pytest.approx(
        hashed_logprob("Relevance:", " Not") + hashed_logprob("Relevance: Not", " Relevant"))


def test_api_key_is_sent_but_never_printed(stub_llm):
    client = make_client(stub_llm.base_url, api_key="sk-secret-123")
    assert "sk-secret-123" not in repr(client.config)
    stub_llm.add_faults(*[Fault("status", 500)] * 4)
    result = run(_generate(client))
    assert "sk-secret-123" not in result.detail


def test_token_accounting(stub_llm):
    client = make_client(stub_llm.base_url)

    async def go():
        async with client:
            return await asyncio.gather(*(client.generate("a b c", GeneratedQuery) for _ in range(5)))

    results = run(go())
    assert client.stats.requests == 5
    assert client.stats.prompt_tokens == sum(r.prompt_tokens for r in results) > 0
    assert client.stats.completion_tokens == sum(r.completion_tokens for r in results) > 0


def test_first_token_labels_in_one_request(stub_llm):
    labels = [" Highly Relevant", " Somewhat Relevant", " Not Relevant"]

    async def go():
        async with make_client(stub_llm.base_url) as c:
            return await c.label_logprobs("Relevance:", labels, "first_token")

    result = run(go())
    assert result.ok, result.detail
    for label in labels:
        assert result.logprobs[label] == pytest.approx(hashed_logprob("Relevance:", " " + label.split()[0]))
    scoring = [r for r in stub_llm.requests if "logprob_token_ids" in r]
    assert len(scoring) == 1 and "echo" not in scoring[0] and "prompt_logprobs" not in scoring[0]


def test_first_token_labels_must_be_distinguishable(stub_llm):
    async def go():
        async with make_client(stub_llm.base_url) as c:
            return await c.label_logprobs("Relevance:", [" Very good", " Very bad"], "first_token")

    result = run(go())
    assert not result.ok and "distinct tokens" in result.detail


def test_concurrent_label_requests_share_one_tokenize_lookup(stub_llm):
    labels = [" Highly Relevant", " Somewhat Relevant", " Not Relevant"]

    async def go():
        async with make_client(stub_llm.base_url) as c:
            return await asyncio.gather(*(c.label_logprobs(f"q{i} Relevance:", labels, "first_token")
                                          for i in range(50)))

    assert all(r.ok for r in run(go()))
    tokenize = [r for r in stub_llm.requests if "add_special_tokens" in r]
    assert len(tokenize) == len(labels)  # not 50 x 3


def test_token_usage_is_metered_per_kind_under_concurrency(stub_llm):
    from pipeline.llm import usage

    labels = [" Highly Relevant", " Somewhat Relevant", " Not Relevant"]

    async def go():
        async with make_client(stub_llm.base_url) as c:
            async def batch():
                rc = [usage.metered("rc", c.label_logprobs(f"Query {i}\nRelevance:", labels, "first_token"))
                      for i in range(6)]
                ql = [usage.metered("ql", c.query_likelihood(f"Passage {i} text", " a query")) for i in range(4)]
                gen = [c.generate(f"write {i}", GeneratedQuery) for i in range(3)]  # the stage's own kind
                return await asyncio.gather(*rc, *ql, *gen)

            # Two batches at once on one client: each meter sees only its own requests.
            return await asyncio.gather(usage.measure("generate", batch()), usage.measure("generate", batch()))

    for results, meter in run(go()):
        counts = meter.usage()
        assert set(counts) == {"rc", "ql", "generate"}
        for kind, picked in (("rc", results[:6]), ("ql", results[6:10]), ("generate", results[10:])):
            assert counts[kind].requests == len(picked)
            assert counts[kind].prompt_sent == sum(r.prompt_tokens for r in picked) > 0
            assert counts[kind].completion == sum(r.completion_tokens for r in picked)
            # The stub reports no cached tokens: computed = sent, and no request counts as reported.
            assert counts[kind].prompt_computed == counts[kind].prompt_sent and counts[kind].cache_reported == 0


def test_cached_tokens_come_from_the_usage_details():
    from pipeline.llm.usage import UsageMeter, cached_tokens

    assert cached_tokens({"prompt_tokens": 90, "prompt_tokens_details": {"cached_tokens": 64}}) == 64
    assert cached_tokens({"prompt_tokens": 90, "prompt_tokens_details": None}) is None
    assert cached_tokens({"prompt_tokens": 90}) is None
    meter = UsageMeter()
    meter.add("rc", 90, 64, 1)
    meter.add("rc", 90, None, 1)
    other = UsageMeter()
    other.add("rc", 10, 0, 1)
    rc = meter.merge(other).usage()["rc"]
    assert (rc.requests, rc.prompt_sent, rc.prompt_computed, rc.completion, rc.cache_reported) == (3, 190, 126, 3, 2)
