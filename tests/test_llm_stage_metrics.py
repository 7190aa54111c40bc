"""Beam's LLM counters count each request once, with several stage instances sharing one client,
and the shared client's loop thread stops when the last instance is torn down."""

import threading

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.generate import GenerateQueries
from beam_jobs.llm_stage import StageSettings
from pipeline.generation import GenerationConfig
from pipeline.llm import blocking
from pipeline.llm.types import ClientConfig
from pipeline.testing.stub_llm import Fault, StubLLM
from schemas import Passage

PASSAGES = [Passage(id=f"p{i}", title=f"Title {i}", text=f"Passage number {i} about kettles and tea.",
                    source_id=f"in:{i}", chunk=0) for i in range(60)]


def counter(result, name: str) -> int:
    return sum(c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"])


def llm_threads() -> int:
    return sum(t.name == "fret-llm-loop" and t.is_alive() for t in threading.enumerate())


def test_two_instances_sharing_a_client_count_each_request_once(tmp_path):
    before = llm_threads()
    with StubLLM() as stub:
        stub.add_faults(*[Fault("status", 503, path="chat/completions") for _ in range(3)])  # 3 retries
        settings = StageSettings(ClientConfig(base_urls=(stub.base_url,), model="stub-llm", backoff_base_s=0.01),
                                 batch_size=8)
        options = PipelineOptions(direct_num_workers=2, direct_running_mode="multi_threading")
        p = beam.Pipeline(options=options)
        (p | beam.Create(PASSAGES) | "Generate" >> GenerateQueries(settings, GenerationConfig()))
        result = p.run()
        result.wait_until_finish()
        sent = sum("messages" in r for r in stub.requests)
    assert sent == len(PASSAGES) + 3
    assert counter(result, "llm_requests") == len(PASSAGES)  # once per request, however many instances
    assert counter(result, "llm_retries") == 3
    assert counter(result, "llm_failures") == 0
    assert counter(result, "llm_prompt_tokens") > 0
    assert blocking.live_clients() == 0 and llm_threads() == before, "the client's loop thread was stopped"


def test_one_client_per_process_and_config():
    config = ClientConfig(base_urls=("http://127.0.0.1:9",), model="m")
    a, b = blocking.acquire(config), blocking.acquire(config)
    other = blocking.acquire(ClientConfig(base_urls=("http://127.0.0.1:9",), model="m", timeout_s=5))
    try:
        assert a is b and other is not a
        assert blocking.live_clients() == 2
    finally:
        for llm in (a, b, other):
            llm.release()
    assert blocking.live_clients() == 0 and not a._thread.is_alive() and not other._thread.is_alive()
