import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from schemas import (
    ALL_RECORDS,
    CandidateScore,
    CrossEncoderScores,
    DeadLetter,
    FilteredRecord,
    GeneratedQuery,
    GivenQuery,
    HardNegative,
    InputPassage,
    EmbeddingEntry,
    IndexEntry,
    JournalEntry,
    Passage,
    PairScore,
    PassageRef,
    Provenance,
    QualityRating,
    QueryKnobs,
    QueryRecord,
    RecordValidationError,
    RunManifest,
    ScoreSummary,
    TokenUsage,
    TrainingExample,
)
from schemas.arrow import rows_to_table, schema_description, table_to_records

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
KNOBS = QueryKnobs(query_length="short", difficulty="easy")
PROV = Provenance(llm_model="m", embedder="e", prompts={"query_generation": "abc"}, params="{}", created_at=NOW)
CAND = CandidateScore(
    passage_id="p2", title="T", text="x", is_seed=False, retrieval_rank=1, retrieval_score=0.5,
    ql=-3.0, ql_mean=-1.0, rc=1.5, rc_label_logprobs={"highly_relevant": -0.1, "not_relevant": -2.0},
    ql_rank=1, rc_rank=2, fused=1.5, fused_rank=1,
)
NEG = HardNegative(id="p9", title="", text="neg", fused_rank=20, retrieval_rank=19, ql=-9.0, rc=0.1, fused=0.1)
EXAMPLE = TrainingExample(
    example_id="e1", query_id="q1", task="t", query="q", positive=PassageRef(id="p2", title="T", text="x"),
    seed_passage_id="p1", positive_changed=True, positive_ql=-3.0, positive_rc=1.5, positive_fused=1.5,
    hard_negatives=[NEG], candidates=[CAND], knobs=KNOBS, quality=None, provenance=PROV,
)

SAMPLES = {
    InputPassage: [InputPassage(text="hello"), InputPassage(id="a", title="t", text="hi")],
    Passage: [Passage(id="p1", title="t", text="x", source_id="s", chunk=2)],
    QueryKnobs: [KNOBS],
    GeneratedQuery: [GeneratedQuery(task="t", query="q")],
    QualityRating: [QualityRating(score=4, reason="fine")],
    QueryRecord: [QueryRecord(query_id="q", passage_id="p", task="t", query="q", knobs=KNOBS),
                  QueryRecord(query_id="q", passage_id="", task="t", query="q", source="given:beir", unit="q.tsv:2",
                              known_positive_ids=["d1"])],
    GivenQuery: [GivenQuery(query_id="q", query="what", layout="pairs", source="f:1",
                            positive=PassageRef(id="p-1", text="x"), negatives=[PassageRef(id="p-2", text="n")]),
                 GivenQuery(query_id="q", query="what", task="t", positive_id="d1", known_positive_ids=["d2"],
                            layout="beir", source="qrels/train.tsv:2")],
    CandidateScore: [CAND, CAND.model_copy(update={"ql_rank": None, "ce": 0.5, "ce_rank": 1})],
    PairScore: [PairScore(query_id="q1", passage_id="p2", ql=-3.0, ql_mean=-1.0,
                          rc_label_logprobs={"highly_relevant": -0.1, "not_relevant": -2.0})],
    PassageRef: [PassageRef(id="p", text="x")],
    CrossEncoderScores: [CrossEncoderScores(query_id="q", passage_ids=["p1", "p2"], scores=[0.7, 0.1])],
    HardNegative: [NEG],
    Provenance: [PROV],
    TrainingExample: [EXAMPLE, EXAMPLE.model_copy(update={"candidates": None, "hard_negatives": []}),
                      EXAMPLE.model_copy(update={"knobs": None, "query_source": "given:pairs", "seed_passage_id": "",
                                                 "positive_source": "top_fused"})],
    DeadLetter: [DeadLetter(record_id="r", stage="read", reason="empty_text", created_at=NOW)],
    FilteredRecord: [FilteredRecord(record_id="r", stage="filter", reason="duplicate_query", created_at=NOW)],
    ScoreSummary: [ScoreSummary(count=0), ScoreSummary(count=2, mean=1.0, std=0.0, min=1.0, p50=1.0, max=1.0)],
    TokenUsage: [TokenUsage(), TokenUsage(requests=2, prompt_sent=90, prompt_computed=40, completion=2,
                                          cache_reported=2)],
    RunManifest: [RunManifest(
        run_id="r", started_at=NOW, finished_at=NOW, counts={"read": 3}, inputs=3, written=1, filtered=1,
        dead_lettered=1, relabel_rate=0.5, task_mix={"t": 1}, scores={"ql": ScoreSummary(count=1, mean=-1.0)},
        llm_model="m", embedder="e", prompts={"a": "b"}, config="{}",
        tokens={"rc": TokenUsage(requests=1, prompt_sent=9, prompt_computed=4, completion=1, cache_reported=1)},
    )],
    EmbeddingEntry: [EmbeddingEntry(key="je-1", vector=b"\x00\x00\x80?" * 3)],
    IndexEntry: [IndexEntry(passage_id="p1", text="t", vector=b"\x00\x00\x80?" * 3),
                 IndexEntry(passage_id="p2", title="T", text="u", vector=b"\x00\x00\x00\x00" * 3)],
    JournalEntry: [JournalEntry(key="k", stage="generate", payload='[["query", {}]]', created_at=NOW)],
}


def test_every_record_has_samples():
    assert set(SAMPLES) == set(ALL_RECORDS)


@pytest.mark.parametrize("model", ALL_RECORDS, ids=lambda m: m.__name__)
def test_parquet_round_trip(model, tmp_path):
    records = SAMPLES[model]
    table = rows_to_table(model, records)
    assert table.schema.equals(model.arrow_schema(), check_metadata=True)
    path = tmp_path / "x.parquet"
    pq.write_table(table, path, compression="zstd", use_compliant_nested_type=True)
    back = pq.read_table(path)
    assert back.schema.equals(model.arrow_schema(), check_metadata=True)
    assert table_to_records(model, back) == records
    assert schema_description(back.schema)["fret.record"] == model.__name__


def test_dead_letter_schema_matches_hand_written():
    expected = pa.schema([
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("payload", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ])
    assert DeadLetter.arrow_schema().equals(expected, check_metadata=False)


def test_training_example_nested_types_match_hand_written():
    schema = TrainingExample.arrow_schema()
    negative = pa.struct([
        pa.field("id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("fused_rank", pa.int64(), nullable=False),
        pa.field("retrieval_rank", pa.int64(), nullable=False),
        pa.field("ql", pa.float64(), nullable=False),
        pa.field("rc", pa.float64(), nullable=False),
        pa.field("fused", pa.float64(), nullable=False),
        pa.field("ce", pa.float64(), nullable=True),
    ])
    assert schema.field("hard_negatives").type.equals(pa.list_(pa.field("element", negative, nullable=False)))
    assert schema.field("quality").nullable and not schema.field("query").nullable
    assert schema.field("candidates").nullable
    entry = pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string(), nullable=False)])
    assert schema.field("provenance").type.field("prompts").type.equals(
        pa.list_(pa.field("element", entry, nullable=False)))
    assert schema.field("query").metadata is None or b"description" not in (schema.field("query").metadata or {})
    assert schema.field("positive_changed").metadata[b"description"].startswith(b"true when")


def test_schema_description_survives_parquet(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(rows_to_table(TrainingExample, [EXAMPLE]), path)
    meta = schema_description(pq.read_schema(path))
    assert "FRet training example" in meta["fret.description"]


def test_validation_error_names_record_field_and_fix():
    with pytest.raises(RecordValidationError) as err:
        InputPassage.parse({"id": "doc-7", "text": "   "})
    message = str(err.value)
    assert "InputPassage record 'doc-7'" in message and "field 'text'" in message and "whitespace" in message
    with pytest.raises(RecordValidationError, match="field 'bogus'"):
        InputPassage.parse({"id": "doc-8", "text": "ok", "bogus": 1})
    with pytest.raises(RecordValidationError, match="field 'retrieval_rank'"):
        CandidateScore.parse({**CAND.model_dump(), "retrieval_rank": -1})


def test_llm_output_model_rejects_control_characters_and_overlong_text():
    with pytest.raises(ValidationError):
        GeneratedQuery.model_validate_json('{"task": "a\\u0001b", "query": "q"}')
    with pytest.raises(ValidationError):
        GeneratedQuery(task="x" * 257, query="q")
    assert GeneratedQuery.model_validate_json('{"task": "t", "query": "‘quoted’ \\"x\\""}').query == '‘quoted’ "x"'
