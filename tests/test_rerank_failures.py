"""A failed score dead-letters its query with that request's own reason and server message."""

import asyncio

from pipeline.llm.client import LLMClient
from pipeline.llm.types import ClientConfig
from pipeline.rerank import Candidate, RerankConfig, restamped, score_query
from pipeline.testing.stub_llm import Fault, StubLLM
from schemas import DeadLetter, QueryKnobs, QueryRecord

QUERY = QueryRecord(query_id="q1", passage_id="p0", task="Given a question, find its answer",
                    query="how do kettles boil water", knobs=QueryKnobs(query_length="short", difficulty="easy"))
CANDIDATES = [Candidate(f"p{i}", f"Title {i}", f"Passage number {i} about kettles.", i == 0, i + 1, 0.9 - i / 10)
              for i in range(4)]


def score(stub: StubLLM, method: str = "first_token"):
    async def go():
        async with LLMClient(ClientConfig(base_urls=(stub.base_url,), model="stub-llm", max_retries=0,
                                          timeout_s=30)) as client:
            return await score_query(client, QUERY, CANDIDATES, RerankConfig(rc_method=method))
    return asyncio.run(go())


def is_ql(body: dict) -> bool:
    """QL asks for echo; the first-token RC request never does."""
    return bool(body.get("echo"))


def test_a_failed_ql_request_is_reported_with_its_own_reason_and_message():
    with StubLLM() as stub:
        stub.add_faults(Fault("status", 400, message="This model's maximum context length is 2048 tokens",
                              path="completions", when=is_ql, repeat=True))
        letter = score(stub)
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "llm_http_error", letter.detail
    assert "QL scoring" in letter.detail and "maximum context length" in letter.detail


def test_a_timed_out_ql_request_is_a_timeout_not_a_bad_score():
    with StubLLM() as stub:
        stub.add_faults(Fault("status", 503, path="completions", when=is_ql, repeat=True))
        letter = score(stub)
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "llm_unavailable", letter.detail
    assert "HTTP 503" in letter.detail


def test_a_failed_rc_request_is_reported_as_rc():
    with StubLLM() as stub:
        stub.add_faults(Fault("status", 400, message="bad logprob_token_ids", path="completions",
                              when=lambda body: "logprob_token_ids" in body, repeat=True))
        letter = score(stub)
    assert isinstance(letter, DeadLetter) and letter.reason == "llm_http_error"
    assert "RC scoring" in letter.detail and "bad logprob_token_ids" in letter.detail


def test_without_faults_every_candidate_is_scored():
    with StubLLM() as stub:
        scores = score(stub)
    assert not isinstance(scores, DeadLetter)
    assert [s.passage_id for s in scores] == [c.passage_id for c in CANDIDATES]


def test_a_replayed_pair_letter_names_the_query_that_replays_it():
    """A pair's journal key is its content: another query with the same task and text (from another
    seed, or given without a positive) replays the letter, which must then name that query."""
    with StubLLM() as stub:
        stub.add_faults(Fault("status", 400, message="bad request", path="completions", when=is_ql, repeat=True))
        letter = score(stub)
    assert isinstance(letter, DeadLetter) and letter.detail.startswith("query q1: ")
    twin = QUERY.model_copy(update={"query_id": "q2", "passage_id": "p7"})
    given = QUERY.model_copy(update={"query_id": "g9", "passage_id": "", "query": "kettle boiling"})
    for query, record_id in ((twin, "p7"), (given, "g9")):
        replayed = restamped(letter, query)
        assert (replayed.record_id, replayed.payload) == (record_id, query.query)
        assert replayed.detail.startswith(f"query {query.query_id}: ") and "q1" not in replayed.detail
        assert replayed.detail.split(": ", 1)[1] == letter.detail.split(": ", 1)[1]  # the failure itself is kept
