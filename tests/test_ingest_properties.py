"""Property tests: no input line, however malformed, crashes the reader or is lost."""

import json
import os
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest import SplitConfig, parse_jsonl_line, split_passage, whitespace_token_count
from schemas import DeadLetter, InputPassage
from schemas.arrow import rows_to_table

SETTINGS = settings(max_examples=int(os.environ.get("FRET_HYPOTHESIS_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes_become_a_passage_or_a_dead_letter(raw):
    out = parse_jsonl_line(raw, "f.jsonl:1")
    assert isinstance(out, (InputPassage, DeadLetter))
    if isinstance(out, DeadLetter):
        rows_to_table(DeadLetter, [out])  # always writable to Parquet


texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=3000)


@SETTINGS
@given(text=st.one_of(texts, st.just(""), st.just(" \t\n"), texts.map(lambda t: t + "\x00")),
       title=st.one_of(st.none(), texts), ident=st.one_of(st.none(), st.text(max_size=20), st.integers()))
def test_any_unicode_record_is_accounted_for(text, title, ident):
    record = {"text": text}
    if title is not None:
        record["title"] = title
    if ident is not None:
        record["id"] = ident
    out = parse_jsonl_line(json.dumps(record).encode(), "f.jsonl:9")
    if isinstance(out, DeadLetter):
        assert out.reason in {"empty_text", "invalid_utf8", "malformed_record"} and out.detail
        rows_to_table(DeadLetter, [out])
        return
    passages = split_passage(out, "f.jsonl:9", whitespace_token_count, SplitConfig(max_tokens=40))
    for p in passages:
        assert p.text.strip() and whitespace_token_count(p.text) <= 40
        assert "\x00" not in p.text
    # Nothing of the text is lost but control characters and whitespace.
    kept = "".join(ch for p in passages for ch in p.text if not ch.isspace())
    original = "".join(ch for ch in text if unicodedata.category(ch) != "Cc" and not ch.isspace())
    visible = any(unicodedata.category(ch)[0] not in "CZ" for ch in text)
    assert kept == (original if visible else "")


def test_megabyte_text_splits_into_bounded_passages():
    text = ("word " * 200_000).strip()  # about a megabyte
    passages = split_passage(InputPassage(text=text), "big:1", whitespace_token_count, SplitConfig(max_tokens=256))
    assert sum(whitespace_token_count(p.text) for p in passages) == 200_000
    assert all(whitespace_token_count(p.text) <= 256 for p in passages)
