"""Read seed passages: parse, validate, assign ids, split over-long texts.

Every input record becomes a Passage or a DeadLetter with a reason; nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import unicodedata
from typing import Any, Callable, Iterator, Union

from pipeline import ids
from pipeline.embedding import max_seq_length
from pipeline.text_format import passage_text
from schemas import DeadLetter, InputPassage, Passage, RecordValidationError

PAYLOAD_CHARS = 2000  # how much of a bad input a dead-letter row keeps
MAX_INPUT_CHARS = 5_000_000  # longer texts are refused rather than split (likely not prose)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def dead_letter(record_id: str, stage: str, reason: str, detail: str, payload: Any = "", source: str = "") -> DeadLetter:
    if not isinstance(payload, str):
        try:
            payload = json.dumps(payload, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            payload = repr(payload)
    # Lone surrogates cannot be written as UTF-8; keep them visible instead.
    payload = payload[:PAYLOAD_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
    detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return DeadLetter(record_id=record_id, source=source, stage=stage, reason=reason,  # type: ignore[arg-type]
                      detail=detail, payload=payload, created_at=now())


@dataclasses.dataclass(frozen=True)
class InputFields:
    """Which field of an input record is the text, the title and the id (--text-field, ...)."""

    text: str = "text"
    title: str = "title"
    id: str = "id"

    def pick(self, data: dict) -> dict:
        """The record in InputPassage's names; with the default id field, BEIR's `_id` counts too."""
        picked = {"text": data.get(self.text), "title": data.get(self.title), "id": data.get(self.id)}
        if picked["id"] is None and self.id == "id" and "_id" in data:  # BEIR corpus files name the id "_id"
            picked["id"] = data["_id"]
        return {k: v for k, v in picked.items() if v is not None or k == "text"}


DEFAULT_FIELDS = InputFields()


def parse_jsonl_line(line: bytes, source: str, fields: InputFields = DEFAULT_FIELDS) -> Union[InputPassage, DeadLetter]:
    """One raw JSONL line -> InputPassage, or a DeadLetter saying what is wrong with it."""
    record_id = source
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return dead_letter(record_id, "read", "invalid_utf8", f"line is not valid UTF-8: {exc}",
                           line.decode("utf-8", "backslashreplace"), source)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return dead_letter(record_id, "read", "malformed_record", f"not a JSON object: {exc}", text, source)
    return validate_record(data, source, fields)


def validate_record(data: Any, source: str, fields: InputFields = DEFAULT_FIELDS) -> Union[InputPassage, DeadLetter]:
    if not isinstance(data, dict):
        return dead_letter(source, "read", "malformed_record",
                           f"a record must be a JSON object with a {fields.text!r} field", data, source)
    original = data
    data = fields.pick(data)
    record_id = str(data.get("id") or source)
    if data.get("id") is not None and not isinstance(data["id"], str):
        data["id"] = str(data["id"])
    if data["text"] is None:
        return dead_letter(record_id, "read", "missing_field",
                           f"record has no {fields.text!r} field (its fields: {', '.join(map(str, original))}); "
                           "--text-field names the field that holds the text", original, source)
    if isinstance(data.get("text"), str):
        if not data["text"].strip():
            return dead_letter(record_id, "read", "empty_text", "text is empty or whitespace only", data, source)
        if "\x00" in data["text"] or _has_lone_surrogate(data["text"]) or _has_lone_surrogate(data.get("title", "")):
            return dead_letter(record_id, "read", "invalid_utf8", "text holds NUL or unpaired surrogate code points",
                               data, source)
        if len(data["text"]) > MAX_INPUT_CHARS:
            return dead_letter(record_id, "read", "text_too_long",
                               f"text has {len(data['text'])} characters; the limit is {MAX_INPUT_CHARS}",
                               data, source)
    try:
        return InputPassage.parse(data)
    except RecordValidationError as exc:
        return dead_letter(record_id, "read", "malformed_record", str(exc), data, source)


def _has_lone_surrogate(text: str) -> bool:
    return isinstance(text, str) and any("\ud800" <= ch <= "\udfff" for ch in text)


_WS = re.compile(r"[ \t\r\f\v]+")
# Unicode's category Cc (C0, DEL, C1), fixed by its stability policy, less tab and newline: one
# regex pass instead of a category lookup per character (a tenth of the job's own time at 20k passages)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def normalize_text(text: str) -> str:
    """Strip control characters (C0 and C1) that break prompts and collapse runs of spaces; keep newlines."""
    text = _CONTROL.sub("", text)
    return "\n".join(_WS.sub(" ", line).strip() for line in text.splitlines()).strip()


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    # Per passage, counted on what retrieval embeds: the title, the text and the embedder's
    # special tokens. The job takes the smaller of --max-passage-tokens and the embedder's
    # max_seq_length, so the embedder reads every token of every passage.
    max_tokens: int = 256
    overlap_sentences: int = 0
    special_tokens: int = 0  # what the tokenizer adds around a text ([CLS] and [SEP]: 2)


_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|\n{2,}")


class TitleTooLong(ValueError):
    """The title alone fills the embedder's budget: no passage of this record could be read whole."""


def split_passage(record: InputPassage, source_id: str, count_tokens: Callable[[str], int],
                  config: SplitConfig = SplitConfig()) -> list[Passage]:
    """Split an over-long record into passages whose embedded form (title, text and special
    tokens, as retrieval embeds them) has at most `max_tokens` tokens, on sentence boundaries
    where possible, on words otherwise. Short records come back whole. `count_tokens` counts a
    plain string without special tokens."""
    text, title = normalize_text(record.text), normalize_text(record.title)
    if not any(unicodedata.category(ch)[0] not in "CZ" for ch in text):
        return []  # nothing visible: only spaces, format characters (zero-width, bidi marks) or unassigned
    base_id = record.id or ids.passage_id(title, text)

    count_plain = count_tokens

    def embedded(chunk: str) -> int:
        return count_plain(passage_text(title, chunk)) + config.special_tokens

    if embedded(text) <= config.max_tokens:
        return [Passage(id=base_id, title=title, text=text, source_id=source_id, chunk=0)]
    if embedded(".") > config.max_tokens // 2:
        raise TitleTooLong(f"the title takes {embedded('.') - 1} of the {config.max_tokens} tokens the embedder "
                           "reads per passage; shorten it, or raise --max-passage-tokens if the embedder reads more")
    count_tokens = embedded  # every count below is of the embedded form
    pieces: list[str] = []
    for sentence in (s.strip() for s in _SENTENCE.split(text)):
        if not sentence:
            continue
        if count_tokens(sentence) <= config.max_tokens:
            pieces.append(sentence)
        else:
            pieces.extend(_split_words(sentence, count_tokens, config.max_tokens))
    chunks: list[str] = []
    current: list[str] = []
    for piece in pieces:
        candidate = " ".join(current + [piece])
        if current and count_tokens(candidate) > config.max_tokens:
            chunks.append(" ".join(current))
            current = current[-config.overlap_sentences:] if config.overlap_sentences else []
        current.append(piece)
    if current:
        chunks.append(" ".join(current))
    return [Passage(id=f"{base_id}#{i}", title=title, text=chunk, source_id=source_id, chunk=i)
            for i, chunk in enumerate(chunks)]


def _split_words(sentence: str, count_tokens: Callable[[str], int], max_tokens: int) -> Iterator[str]:
    words = sentence.split(" ")
    current: list[str] = []
    for word in words:
        if current and count_tokens(" ".join(current + [word])) > max_tokens:
            yield " ".join(current)
            current = []
        if count_tokens(word) > max_tokens:  # one unbroken "word" longer than the budget
            yield from _split_characters(word, count_tokens, max_tokens)
            continue
        current.append(word)
    if current:
        yield " ".join(current)


def _split_characters(word: str, count_tokens: Callable[[str], int], max_tokens: int) -> Iterator[str]:
    """The longest prefixes that fit, found by bisection: exact whatever the tokenizer does."""
    while word:
        low, high = 1, len(word)
        while low < high:
            mid = (low + high + 1) // 2
            if count_tokens(word[:mid]) <= max_tokens:
                low = mid
            else:
                high = mid - 1
        yield word[:low]
        word = word[low:]


def whitespace_token_count(text: str) -> int:
    return len(text.split())


def conflict_letter(passage_id: str, texts: int, title: str, text: str, source: str) -> DeadLetter:
    """The dead letter of one version of an id that `texts` different texts share."""
    return dead_letter(passage_id, "read", "duplicate_id_conflict",
                       f"id {passage_id!r} is used by {texts} different texts; give each text its own id",
                       {"title": title, "text": text}, source)


def embedder_budget(split: SplitConfig, tokenizer, model_path: str) -> SplitConfig:
    """The split config the embedder can read whole: at most its max_seq_length tokens, its
    special tokens counted."""
    limit = max_seq_length(model_path, tokenizer)
    specials = len(tokenizer("", add_special_tokens=True)["input_ids"])
    return dataclasses.replace(split, max_tokens=min(split.max_tokens, limit or split.max_tokens),
                               special_tokens=specials)
