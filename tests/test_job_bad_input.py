"""Property test through the whole job: a file of arbitrary good and bad records never crashes
it, every bad record gets a dead-letter row with a reason, and the good ones are still written."""

import hashlib
import json
import os

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipeline.testing.stub_llm import StubLLM
from tests.jobkit import run_job, write_jsonl

EXAMPLES = int(os.environ.get("FRET_JOB_HYPOTHESIS_EXAMPLES", "4"))
words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Z"]), min_size=3, max_size=10)
prose = st.lists(words, min_size=4, max_size=15).map(" ".join)  # under the 256-token budget: one passage
noise = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\x00"), max_size=50)

# (kind, line bytes): what a bad line must become is known from its kind.
BAD = {
    "malformed_json": st.sampled_from([b'{"text": "unterminated', b"not json at all", b"[1, 2, 3]", b'{"text": 5}']),
    # one line: a newline byte would cut it in two records (the file is read line by line)
    "invalid_utf8": st.binary(min_size=1, max_size=40).map(
        lambda b: b'{"text": "' + b"\xff\xfe" + b.replace(b"\n", b"?") + b'"}'),
    "empty": st.sampled_from(["", " ", "\t\n  ", "\x01\x02\x7f", "\u200b\u00a0\x1b"]).map(
        lambda t: json.dumps({"text": t}).encode()),
    "missing_text": st.just(b'{"title": "no text here"}'),
    "nul": prose.map(lambda t: json.dumps({"text": f"{t}\x00{t}"}).encode()),  # NUL is refused, not stripped
}
REASONS = {"malformed_json": {"malformed_record", "missing_field"}, "invalid_utf8": {"invalid_utf8"},
           "empty": {"empty_text"}, "missing_text": {"missing_field", "malformed_record"}, "nul": {"invalid_utf8"}}


def good_record(text: str, title: str, salt: int) -> bytes:
    return json.dumps({"title": title, "text": f"{text} record {salt}"}, ensure_ascii=bool(salt % 2)).encode()


@st.composite
def input_files(draw):
    lines, kinds = [], []
    for i in range(draw(st.integers(4, 8))):
        text = draw(st.one_of(prose, prose.map(lambda t: f"\x1b[0m{t}\x07"), st.tuples(noise, prose).map(" ".join)))
        lines.append(good_record(text, draw(st.one_of(st.just(""), words)), i))
        kinds.append("good")
    for kind in draw(st.lists(st.sampled_from(sorted(BAD)), min_size=1, max_size=6)):
        lines.append(draw(BAD[kind]))
        kinds.append(kind)
    order = draw(st.permutations(range(len(lines))))
    return [lines[i] for i in order], [kinds[i] for i in order]


def content_queries(prompt: str) -> str:
    digest = hashlib.sha256(prompt.rsplit("<passage>", 1)[1].encode()).hexdigest()[:10]
    return json.dumps({"task": "Given a query, find the passage", "query": f"query {digest}"})


# No shrinking: each example is a whole job run; the failing example is printed as drawn.
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate], print_blob=True)
@given(input_files())
def test_bad_records_are_dead_lettered_and_good_ones_written(tmp_path_factory, case):
    lines, kinds = case
    tmp = tmp_path_factory.mktemp("badinput")
    inp = write_jsonl(tmp / "in.jsonl", lines)
    with StubLLM(generate_fn=content_queries) as stub:
        out = run_job(inp, tmp / "out", stub.base_url, "--near_dup_threshold", "0")
    m = out["manifest"]
    assert m["inputs"] == m["written"] + m["filtered"] + m["dead_lettered"] == len(lines)
    letters = {d["source"].rsplit(":", 1)[1]: d for d in out["dead_letters"]}
    for number, kind in enumerate(kinds, start=1):
        if kind == "good":
            assert str(number) not in letters, letters.get(str(number))
        else:
            letter = letters[str(number)]
            assert letter["reason"] in REASONS[kind] and letter["detail"], (kind, letter)
    assert m["written"] == kinds.count("good") == len({e["seed_passage_id"] for e in out["examples"]})


def test_megabyte_records_through_the_job(tmp_path):
    """A megabyte of control characters around a sentence keeps the sentence; a megabyte of
    whitespace is dead-lettered; neither stalls or crashes the job."""
    lines = [json.dumps({"text": "\x01" * 1_000_000 + "The kettle switched off once the water boiled."}).encode(),
             json.dumps({"text": " \n" * 500_000}).encode(),
             json.dumps({"text": "Rain is liquid water that falls from clouds."}).encode()]
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    with StubLLM(generate_fn=content_queries) as stub:
        out = run_job(inp, tmp_path / "out", stub.base_url)
    assert out["manifest"]["written"] == 2 and out["manifest"]["dead_lettered"] == 1
    assert out["dead_letters"][0]["reason"] == "empty_text"
    texts = {e["positive"]["text"] for e in out["examples"]} | {
        n["text"] for e in out["examples"] for n in e["hard_negatives"]}
    assert "The kettle switched off once the water boiled." in texts
