"""Queries a user brings (--queries): the layouts people already have, read into GivenQuery.

Row layouts (JSONL lines or Parquet rows), chosen per row with --queries_layout auto:
- fret: `query`, and optionally `positive_id` (an id in the corpus), `positive` (a text, or
  {title, text}), `task`, `negatives` (texts), an id (`id`, `query_id`, `_id`)
- pairs (sentence-transformers pairs and triplets): `anchor`, `positive`, `negative` or
  `negative_1..k`; a row with none of the known names is read by position: query, positive,
  negatives (the first columns in order, as sentence-transformers itself reads them)
- flagembedding: `query`, `pos` (texts: the first is the positive, the others are known
  positives), `neg` (texts), `prompt` (the task)
BEIR train splits (a folder: queries.jsonl, qrels/SPLIT.tsv, the corpus as --input) are read by
`beir_query` and `qrel`: one GivenQuery per query with a positive qrel.

A text given with a row (a positive, a negative) joins the corpus unless the corpus already holds
the same text (matched on the normalized text alone: a title does not make it another passage).
Every row ends as a GivenQuery or a DeadLetter with its reason.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

from pipeline import ids
from pipeline.ingest import dead_letter, normalize_text
from schemas import DeadLetter, GivenQuery, Passage, PassageRef, QueryRecord

ROW_LAYOUTS = ("fret", "pairs", "flagembedding")
LAYOUTS = ("auto", *ROW_LAYOUTS, "beir")
DEFAULT_TASK = "Given a query, retrieve a passage that answers it"
ID_FIELDS = ("query_id", "id", "_id", "qid")
TASK_FIELDS = ("task", "prompt", "instruction")
MAX_QUERY_CHARS = 2000  # longer "queries" are passages pasted by mistake; the LLM prompts would overflow


TEXT_KEY_PREFIX = "t-"  # a known positive given by text is held as its key, beside ids


def text_key(text: str) -> str:
    """What a given text and a corpus passage are matched on: the normalized text, title aside."""
    return ids.content_id(TEXT_KEY_PREFIX, normalize_text(text))


def is_text_key(known_positive: str) -> bool:
    return known_positive.startswith(TEXT_KEY_PREFIX)


def detect_layout(data: dict) -> str:
    if "pos" in data:
        return "flagembedding"
    if "query" in data:
        return "fret"
    return "pairs"  # anchor/positive names, or the first columns in order


def parse_line(raw: bytes, source: str, layout: str = "auto") -> Union[GivenQuery, DeadLetter]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return _bad(source, "invalid_utf8", f"line is not valid UTF-8: {exc}", raw.decode("utf-8", "backslashreplace"))
    except json.JSONDecodeError as exc:
        return _bad(source, "malformed_record", f"not a JSON object: {exc}", raw.decode("utf-8", "replace"))
    return parse_row(data, source, layout)


def parse_row(data: Any, source: str, layout: str = "auto") -> Union[GivenQuery, DeadLetter]:
    """One JSONL object or Parquet row -> GivenQuery, or a DeadLetter that says what is wrong."""
    if not isinstance(data, dict):
        return _bad(source, "malformed_record", "a query row must be a JSON object", data)
    chosen = detect_layout(data) if layout == "auto" else layout
    if chosen not in ROW_LAYOUTS:
        raise ValueError(f"unknown query layout {layout!r}; one of {LAYOUTS}")
    try:
        fields = {"fret": _fret, "pairs": _pairs, "flagembedding": _flagembedding}[chosen](data)
    except _RowError as exc:
        return _bad(source, exc.reason, f"{chosen} row: {exc}", data)
    query = fields.pop("query")
    problem = _query_problem(query)
    if problem:
        return _bad(source, problem[0], problem[1], data)
    user_id = next((str(data[f]) for f in ID_FIELDS if data.get(f) is not None), "")
    task = next((data[f] for f in TASK_FIELDS if isinstance(data.get(f), str) and data[f].strip()), None)
    positive = fields.get("positive")
    positive_key = fields.get("positive_id") or (positive.text if positive else "")
    return GivenQuery(query_id=ids.content_id("g-", user_id, query, task or "", positive_key),
                      query=normalize_text(query), task=task, layout=chosen, source=source, **fields)


def beir_query(raw: bytes, source: str) -> Union[tuple[str, str], DeadLetter]:
    """A line of BEIR's queries.jsonl -> (query id, text)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _bad(source, "malformed_record", f"BEIR queries.jsonl line: {exc}", raw.decode("utf-8", "replace"))
    if not isinstance(data, dict) or data.get("_id") is None or not isinstance(data.get("text"), str):
        return _bad(source, "malformed_record", "a BEIR query line needs `_id` and `text`", data)
    return str(data["_id"]), data["text"]


def qrel(raw: bytes, source: str) -> Union[tuple[str, str, int], DeadLetter, None]:
    """A line of a BEIR qrels TSV -> (query id, corpus id, score); None for the header."""
    parts = raw.decode("utf-8", "replace").rstrip("\r\n").split("\t")
    if parts[:2] == ["query-id", "corpus-id"]:
        return None
    try:
        query_id, corpus_id, score = parts[0], parts[1], int(float(parts[2]))
    except (IndexError, ValueError):
        return _bad(source, "malformed_record", "a qrels line is query-id<TAB>corpus-id<TAB>score", "\t".join(parts))
    return query_id, corpus_id, score


def beir_given(query_id: str, texts: list[tuple[str, str]], qrels: list[tuple[str, int, str]]
               ) -> list[Union[GivenQuery, tuple[str, DeadLetter]]]:
    """One BEIR query's text(s) and qrels (corpus id, score, source) -> one GivenQuery (the
    best-graded positive plays the seed; the other positives are never mined as negatives),
    or a dead letter per qrels line when the query is missing or empty. Queries outside the split
    (no positive qrel) give nothing: they are not part of it."""
    positives = sorted((q for q in qrels if q[1] > 0), key=lambda q: (-q[1], q[2]))
    if not positives:
        return []
    if not texts:
        return [(source, _bad(source, "query_not_found", f"qrels name query {query_id!r}, which queries.jsonl "
                                                         "does not hold", query_id))
                for _, _, source in positives[:1]]
    text_source, text = sorted(texts)[0]
    problem = _query_problem(text)
    if problem:
        return [(positives[0][2], _bad(text_source, problem[0], problem[1], text))]
    best, _, source = positives[0]
    return [GivenQuery(query_id=ids.content_id("g-", query_id, text, "", best), query=normalize_text(text),
                       positive_id=best, known_positive_ids=sorted({c for c, _, _ in positives[1:]} - {best}),
                       layout="beir", source=source)]


def given_texts(query: GivenQuery) -> list[tuple[str, PassageRef]]:
    """(text key, passage) of each text that came with the row and may join the corpus."""
    refs = ([query.positive] if query.positive else []) + list(query.positive_chunks) + list(query.negatives)
    return [(text_key(r.text), r) for r in refs]


GIVEN_SOURCE = "given:"  # the source_id prefix of a given text that joined the corpus


def joined_passage(ref: PassageRef, source: str) -> Passage:
    """A given text that the corpus did not hold, as a passage of the corpus (a chunk of a split
    given text keeps its number, as a corpus record's chunks do)."""
    head, sep, tail = ref.id.rpartition("#")
    return Passage(id=ref.id, title=ref.title, text=normalize_text(ref.text), source_id=f"{GIVEN_SOURCE}{source}",
                   chunk=int(tail) if sep and tail.isdigit() and head else 0)


def split_given(query: GivenQuery, split: Callable[[PassageRef], list[PassageRef]]) -> GivenQuery:
    """The row with its texts split as corpus records are (`split`: the same splitter and budget,
    pipeline.ingest.split_passage). A positive that splits is its first chunk, as a positive named
    by record id is that record's first chunk; every other chunk joins the corpus and is a known
    positive (by text key, so a corpus chunk with that text is one too), as is every chunk of
    another known positive text (FlagEmbedding's other `pos`). A negative's chunks are negatives.
    Raises ingest.TitleTooLong as the corpus split does."""
    update: dict = {}
    known = list(query.known_positive_ids)
    if query.positive is not None:
        first, *rest = split(query.positive)
        if rest:
            update["positive"], update["positive_chunks"] = first, rest
            known += [text_key(r.text) for r in rest]
    for other in query.known_positives:
        known += [text_key(r.text) for r in split(other)]
    negatives = [chunk for negative in query.negatives for chunk in split(negative)]
    if len(negatives) != len(query.negatives):
        update["negatives"] = negatives
    if known != list(query.known_positive_ids):
        update["known_positive_ids"] = list(dict.fromkeys(known))
    return query.model_copy(update=update) if update else query


def positive_key(query: GivenQuery) -> Optional[tuple[str, str]]:
    """What the positive is looked up by in the corpus: ("id", id) or ("text", text key)."""
    if query.positive_id is not None:
        return "id", query.positive_id
    if query.positive is not None:
        return "text", text_key(query.positive.text)
    return None


def id_aliases(dropped_keys: Iterable[tuple[str, str]], kept_id: str) -> list[tuple[str, str]]:
    """(id, kept id) for each id a dropped duplicate answered to (corpus_keys: its own, and its
    record's for a first chunk): a positive or qrel naming it means the copy that was kept."""
    return [(key, kept_id) for kind, key in dropped_keys if kind == "id" and key != kept_id]


def ids_named(query: GivenQuery) -> list[str]:
    """The corpus ids a given row names: its positive's and its known positives'."""
    return sorted({i for i in (query.positive_id, *query.known_positive_ids) if i})


def resolve_aliases(query: GivenQuery, aliases: dict[str, str]) -> GivenQuery:
    """The row with the ids of dropped duplicates resolved to the kept copies: the positive is
    the kept copy (the id the row gave stays in positive_id_as_given); a known positive keeps its
    own id too (the rest of its record may be kept under it) and gains the kept copy's; so does
    a resolved positive's own id."""
    if not aliases:
        return query
    update: dict = {}
    known = set(query.known_positive_ids)
    if query.positive_id in aliases:
        update["positive_id"], update["positive_id_as_given"] = aliases[query.positive_id], query.positive_id
        known.add(query.positive_id)  # the rest of the named record, where it was kept, is its chunks
    resolved = known | {aliases[k] for k in known if k in aliases}
    if resolved != set(query.known_positive_ids):
        update["known_positive_ids"] = sorted(resolved)
    return query.model_copy(update=update)


def corpus_keys(passage: Passage) -> list[tuple[str, str]]:
    """The keys a corpus passage answers to: its id, its record's id for the first chunk of a
    record that was split (a positive named by record id is that record's first chunk), its text."""
    keys = [("id", passage.id)]
    if passage.chunk == 0 and passage.id.endswith("#0"):
        keys.append(("id", passage.id[:-2]))
    keys.append(("text", text_key(passage.text)))
    return keys


class CorpusRef(NamedTuple):
    """A pool passage as the join with given queries reads it, without its text: waves join the
    queries to the whole corpus on these keys, then each wave attaches its own passages."""

    id: str
    source_id: str
    chunk: int
    keys: tuple  # corpus_keys(passage)


def corpus_ref(passage: Passage) -> CorpusRef:
    return CorpusRef(passage.id, passage.source_id, passage.chunk, tuple(corpus_keys(passage)))


def ref_keys(ref: CorpusRef) -> list[tuple[str, str]]:
    return list(ref.keys)


def query_record(query: GivenQuery, seed, default_task: str) -> QueryRecord:
    """`seed`: the positive's Passage (or CorpusRef), None for a query that came without one."""
    known = list(query.known_positive_ids)
    return QueryRecord(query_id=query.query_id, passage_id=seed.id if seed else "", task=query.task or default_task,
                       query=query.query, knobs=None, source=f"given:{query.layout}", unit=query.source,
                       known_positive_ids=known, positive_id_as_given=query.positive_id_as_given)


def missing_positive(query: GivenQuery) -> DeadLetter:
    return _bad(query.source, "positive_not_in_corpus",
                f"the positive {query.positive_id!r} is not a passage id of --input (nor the id of a record "
                "that was split into chunks); check --id-field, or give the positive as text", query.model_dump())


class _RowError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _RowError("malformed_record", f"{what} must be a string, not {type(value).__name__}")
    return value


def _ref(value: Any, what: str) -> Optional[PassageRef]:
    """A text given with a row -> a passage, titled when given as {title, text}; None when blank."""
    title = ""
    if isinstance(value, dict):
        title, value = _text(value.get("title") or "", f"{what}.title"), value.get("text")
    text = normalize_text(_text(value, what))
    if not text:
        return None
    return PassageRef(id=ids.passage_id(normalize_text(title), text), title=normalize_text(title), text=text)


def _refs(values: Iterable[Any], what: str) -> list[PassageRef]:
    return [r for r in (_ref(v, what) for v in values) if r is not None]


def _fret(data: dict) -> dict:
    if "query" not in data:
        raise _RowError("missing_field", f"no `query` field (its fields: {', '.join(map(str, data))})")
    fields: dict = {"query": _text(data["query"], "query")}
    if data.get("positive_id") is not None:
        fields["positive_id"] = str(data["positive_id"])
    elif data.get("positive") is not None:
        fields["positive"] = _ref(data["positive"], "positive")
    negatives = data.get("negatives") or []
    if not isinstance(negatives, list):
        raise _RowError("malformed_record", "negatives must be a list of texts")
    fields["negatives"] = _refs(negatives, "a negative")
    return fields


def _pairs(data: dict) -> dict:
    if "anchor" in data:
        query, positive = data["anchor"], data.get("positive")
        negatives = ([data["negative"]] if "negative" in data else []) + [
            data[k] for k in sorted((k for k in data if k.startswith("negative_")), key=_column_number)]
    else:  # the first columns in order: query, positive, negatives
        values = [v for k, v in data.items() if k not in ID_FIELDS + TASK_FIELDS]
        if not values:
            raise _RowError("missing_field", "an empty row")
        query, positive, negatives = values[0], values[1] if len(values) > 1 else None, values[2:]
    fields: dict = {"query": _text(query, "the query (anchor)")}
    if positive is not None:
        fields["positive"] = _ref(positive, "the positive")
    fields["negatives"] = _refs(negatives, "a negative")
    return fields


def _column_number(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _flagembedding(data: dict) -> dict:
    pos, neg = data.get("pos") or [], data.get("neg") or []
    if not isinstance(pos, list) or not isinstance(neg, list):
        raise _RowError("malformed_record", "pos and neg must be lists of texts")
    positives = _refs(pos, "a pos text")
    fields: dict = {"query": _text(data.get("query"), "query"), "negatives": _refs(neg, "a neg text")}
    if positives:
        fields["positive"] = positives[0]
        # the other positives are excluded from the negatives by their text (they may not be in the corpus)
        fields["known_positive_ids"] = [text_key(p.text) for p in positives[1:]]
        fields["known_positives"] = positives[1:]  # split_given adds the keys of their chunks
    return fields


def _query_problem(query: str) -> Optional[tuple[str, str]]:
    if not normalize_text(query):
        return "empty_text", "the query is empty or whitespace only"
    if len(query) > MAX_QUERY_CHARS:
        return "text_too_long", f"the query has {len(query)} characters; the limit is {MAX_QUERY_CHARS}"
    return None


def _bad(source: str, reason: str, detail: str, payload: Any = "") -> DeadLetter:
    return dead_letter(source, "read", reason, detail, payload, source)
