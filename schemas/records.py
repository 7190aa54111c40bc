"""Every record the pipeline reads or writes. The Arrow schemas derive from these models."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal, Optional

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas import arrow

RelevanceLabel = Literal["highly_relevant", "somewhat_relevant", "not_relevant"]
MiningStrategy = Literal["top", "lowest", "random", "rank_window", "margin"]
QueryLength = Literal["short", "medium", "long"]
Difficulty = Literal["easy", "medium", "hard"]
Stage = Literal["read", "split", "generate", "retrieve", "rerank", "rate", "mine", "filter", "write"]
# Machine-readable reasons an input produced no example.
DeadLetterReason = Literal[
    "empty_text",
    "invalid_utf8",
    "malformed_record",
    "missing_field",
    "duplicate_id_conflict",
    "text_too_long",
    "title_too_long",
    "llm_length",
    "llm_invalid_json",
    "llm_schema_mismatch",
    "llm_invalid_utf8",
    "llm_unavailable",
    "llm_timeout",
    "llm_http_error",
    "llm_bad_response",
    "no_candidates",
    "embedder_refused",
    "positive_not_in_corpus",
    "query_not_found",
    "internal_error",
]
FilterReason = Literal[
    "duplicate_passage",
    "duplicate_query",
    "near_duplicate_query",
    "low_quality",
    "decontaminated",
]

# LLM-written strings: grammar engines may let a weak model emit raw control characters,
# which JSON forbids inside strings; the pattern keeps them out of the grammar.
def text_pattern(max_chars: int) -> str:
    """1..max_chars characters, none a control character.

    The length lives in the pattern because xgrammar drops maxLength once a pattern is
    present, and its maxLength rule alone lets control characters through. Repetition is
    chained in blocks of 128 because xgrammar 0.2.8 fails to compile larger bounds.
    """
    block = r"[^\x00-\x1f]"
    blocks = [rf"{block}{{1,{min(128, max_chars)}}}"]
    left = max_chars - 128
    while left > 0:
        blocks.append(rf"{block}{{0,{min(128, left)}}}")
        left -= 128
    return "^" + "".join(blocks) + "$"


class Record(BaseModel):
    """Base of every record: immutable, no unknown fields, one Arrow schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    SCHEMA_VERSION: ClassVar[int] = 1

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        return arrow.model_schema(cls)

    @classmethod
    def record_id_of(cls, data: Any) -> str:
        if isinstance(data, dict):
            for key in ("example_id", "query_id", "id", "record_id", "passage_id", "run_id"):
                if data.get(key):
                    return str(data[key])
        return "<no id>"

    @classmethod
    def parse(cls, data: Any):
        """Validate one record; errors name the model, the record id and the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecordValidationError(cls.__name__, cls.record_id_of(data), exc) from None


class RecordValidationError(ValueError):
    def __init__(self, model: str, record_id: str, exc: ValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "<record>"
            problems.append(f"field '{where}': {err['msg']}")
        self.model = model
        self.record_id = record_id
        self.problems = problems
        super().__init__(f"{model} record {record_id!r} is invalid: " + "; ".join(problems))


class InputPassage(Record):
    """A seed passage as a user supplies it (JSONL or Parquet). The id is optional."""

    id: Optional[str] = Field(None, description="user id; a content hash is assigned when absent")
    title: str = Field("", description="document title, may be empty")
    text: str = Field(..., description="passage text")

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty or whitespace; give the passage some text or drop the record")
        return value


class Passage(Record):
    """A validated passage of the seed corpus, with a content-addressed id."""

    id: str = Field(..., min_length=1, description="passage id (user id or content hash)")
    title: str = Field("", description="document title")
    text: str = Field(..., min_length=1, description="passage text")
    source_id: str = Field(..., description="id of the input record the passage came from")
    chunk: int = Field(0, ge=0, description="index of the chunk within an over-long input")


class QueryKnobs(Record):
    """Sampled generation knobs, drawn from a seeded RNG and kept for provenance."""

    query_length: QueryLength = Field(..., description="requested query length")
    difficulty: Difficulty = Field(..., description="requested understanding level")


class GeneratedQuery(Record):
    """The LLM's output for one passage: a task description and a query (what the LLM must emit)."""

    task: str = Field(..., pattern=text_pattern(256), description="retrieval task description")
    query: str = Field(..., pattern=text_pattern(256), description="query for the passage")


class QualityRating(Record):
    """The auto-rater's output for one example (what the LLM must emit)."""

    score: int = Field(..., ge=1, le=5, description="1 = unusable, 5 = realistic and correct")
    reason: str = Field("", pattern=r"^[^\x00-\x1f]{0,128}$", description="short justification")


class CrossEncoderScores(Record):
    """A served cross-encoder's scores of one query's candidates (the journal's record of them)."""

    query_id: str
    passage_ids: list[str]
    scores: list[float]


class PassageRef(Record):
    """A passage as it appears inside an example."""

    id: str
    title: str = ""
    text: str


class GivenQuery(Record):
    """A query a user brought (--queries), with what came with it: a positive (an id in the corpus,
    or a text that joins the corpus), a task, negatives. `source` is the accounting unit."""

    query_id: str = Field(..., min_length=1, description="the row's id, or a content hash of the row")
    query: str = Field(..., description="the query text")
    task: Optional[str] = Field(None, description="the row's task / instruction; None: --queries_task")
    positive_id: Optional[str] = Field(None, description="the positive's id in the corpus")
    positive: Optional[PassageRef] = Field(None, description="the positive as text, when given as text")
    known_positive_ids: list[str] = Field(default_factory=list, description="more positives (BEIR qrels): "
                                                                            "never mined as negatives")
    positive_chunks: list[PassageRef] = Field(default_factory=list, description="a positive text split like a "
                                                                               "corpus record: its chunks after "
                                                                               "the first (known positives)")
    known_positives: list[PassageRef] = Field(default_factory=list, description="other positive texts "
                                                                               "(FlagEmbedding's pos)")
    negatives: list[PassageRef] = Field(default_factory=list, description="given negatives (texts), kept as given")
    positive_id_as_given: Optional[str] = Field(None, description="the id the row named, when it named a duplicate "
                                                                  "text that was dropped: positive_id is the kept copy")
    layout: str = Field(..., description="fret | pairs | flagembedding | beir")
    source: str = Field(..., description="file and line (BEIR: the qrels line)")


class QueryRecord(Record):
    """A query tied to its seed passage: generated from it, or given with it as the positive."""

    query_id: str = Field(..., description="content hash of (passage id, task, query, sample index)")
    passage_id: str = Field(..., description="seed passage id; empty for a given query without a positive")
    sample: int = Field(0, ge=0, description="index among the queries generated for the passage")
    task: str = Field(..., description="task description written by the LLM")
    query: str = Field(..., description="query written by the LLM")
    knobs: Optional[QueryKnobs] = Field(None, description="the generation knobs; None for a given query")
    source: str = Field("generated", description="generated, or given:LAYOUT for a query from --queries")
    unit: Optional[str] = Field(None, description="accounting unit of a given query (its row); generated "
                                                  "queries count under their seed passage")
    known_positive_ids: list[str] = Field(default_factory=list, description="passages never mined as negatives")
    positive_id_as_given: Optional[str] = Field(None, description="see GivenQuery.positive_id_as_given")
    prompt_tokens: int = Field(0, ge=0, description="prompt tokens reported by the server")
    completion_tokens: int = Field(0, ge=0, description="completion tokens reported by the server")


class CandidateScore(Record):
    """One passage retrieved for a query, with its LLM scores and ranks."""

    passage_id: str
    title: str = ""
    text: str = ""
    is_seed: bool = Field(..., description="whether this is the passage the query was generated from")
    retrieval_rank: int = Field(..., ge=0, description="1-based rank among the N neighbours; 0 if not retrieved")
    retrieval_score: Optional[float] = Field(None, description="embedder cosine similarity")
    ql: float = Field(..., description="log P(query | passage), summed over the query tokens")
    ql_mean: float = Field(..., description="ql divided by the number of query tokens")
    rc: float = Field(..., description="relevance score from the graded label log-likelihoods")
    rc_label_logprobs: dict[str, float] = Field(default_factory=dict, description="log P(label) per label")
    ql_rank: Optional[int] = Field(None, ge=1, description="None when QL was not scored (--scores)")
    rc_rank: Optional[int] = Field(None, ge=1, description="None when RC was not scored (--scores)")
    ce: Optional[float] = Field(None, description="the served cross-encoder's score, when it ranked (--scores ce)")
    ce_rank: Optional[int] = Field(None, ge=1)
    fused: float = Field(..., description="reciprocal rank fusion of the ranks of the scores used (--scores)")
    fused_rank: int = Field(..., ge=1)


class PairScore(Record):
    """The LLM's raw scores of one (query, passage) pair: the unit of passage-major scoring and of
    its journal. Ranks and fusion come later, over a query's whole candidate list."""

    query_id: str
    passage_id: str
    ql: float = Field(..., description="log P(query | passage), summed over the query tokens")
    ql_mean: float = Field(..., description="ql divided by the number of query tokens")
    rc_label_logprobs: dict[str, float] = Field(..., description="log P(label) per relevance label")


class HardNegative(Record):
    """A mined hard negative with the scores that chose it."""

    id: str
    title: str = ""
    text: str
    fused_rank: int = Field(..., ge=1, description="rank by fused LLM score among the candidates")
    retrieval_rank: int = Field(..., ge=0)
    ql: float
    rc: float
    fused: float
    ce: Optional[float] = None


class ExtraPositive(Record):
    """A retrieved neighbour the scores rate as relevant as the positive (README: False negatives):
    never a negative; a second positive for exports that take several."""

    id: str
    title: str = ""
    text: str
    score: float = Field(..., description="its --extra-positive-score value (the positive's is positive_extra_score)")
    fused_rank: int = Field(..., ge=1)
    retrieval_rank: int = Field(..., ge=0)
    ql: float
    rc: float
    fused: float
    ce: Optional[float] = None


class Provenance(Record):
    """Where an example came from: models, prompts, parameters and time."""

    llm_model: str
    embedder: str
    prompts: dict[str, str] = Field(..., description="prompt name -> content hash")
    params: str = Field(..., description="job parameters as sorted JSON")
    created_at: dt.datetime


class TrainingExample(Record):
    """One FRet training example: task, query, relabelled positive and hard negatives."""

    example_id: str = Field(..., description="content hash of the query id and positive id")
    query_id: str
    task: str
    query: str
    positive: PassageRef
    seed_passage_id: str = Field(..., description="the passage the query was generated from, or the given "
                                                  "positive; empty when a given query came without one")
    positive_id_as_given: Optional[str] = Field(None, description="the positive's id as the query row named it, "
                                                                  "when that id was a dropped duplicate of "
                                                                  "seed_passage_id's text")
    known_positive_ids: list[str] = Field(default_factory=list, description="the query's other known positives "
                                                                          "(ids, or t-... text keys): never negatives")
    positive_changed: bool = Field(..., description="true when the LLM relabelled the positive")
    query_source: str = Field("generated", description="generated, or given:LAYOUT (fret, pairs, flagembedding, "
                                                       "beir) for a query from --queries")
    positive_source: Literal["seed", "relabelled", "top_fused"] = Field(
        "seed", description="seed: the seed stayed the positive; relabelled: the LLM chose another passage; "
                            "top_fused: no positive was given, the top fused candidate is the positive")
    positive_ql: float
    positive_rc: float
    positive_fused: float
    positive_ce: Optional[float] = Field(None, description="the cross-encoder's score, when it ranked (--scores ce)")
    hard_negatives: list[HardNegative]
    extra_positives: list[ExtraPositive] = Field(default_factory=list, description="neighbours rated as relevant "
                                                                                  "as the positive (--extra-"
                                                                                  "positives keep)")
    never_negative: dict[str, int] = Field(default_factory=dict, description="retrieved neighbours kept out of the "
                                                                           "negatives, by rule (README: False "
                                                                           "negatives)")
    candidates: Optional[list[CandidateScore]] = Field(None, description="every scored candidate, if kept")
    knobs: Optional[QueryKnobs] = Field(None, description="the generation knobs; None for a given query")
    quality: Optional[float] = Field(None, description="auto-rater score, when the rater ran")
    provenance: Provenance


class DeadLetter(Record):
    """An input that produced no example, with a machine-readable reason."""

    record_id: str = Field(..., description="input id, passage id or query id (see stage)")
    source: str = Field("", description="input file and line, when known")
    stage: Stage
    reason: DeadLetterReason
    detail: str = Field("", description="human-readable explanation")
    payload: str = Field("", description="the offending input, truncated")
    created_at: dt.datetime


class FilteredRecord(Record):
    """An input dropped on purpose (duplicate, low quality, contaminated), with the reason."""

    record_id: str
    stage: Stage
    reason: FilterReason
    detail: str = ""
    created_at: dt.datetime


class EmbeddingEntry(Record):
    """One passage's vector, journaled as soon as its batch is embedded: --resume never embeds
    that text with that embedder again."""

    key: str = Field(..., description="hash of (embedder, the exact text it embedded)")
    vector: bytes = Field(..., description="float32, little-endian, as the embedder returned it")


class IndexEntry(Record):
    """One passage of an index shard file (OUTPUT/_index/, removed when the job ends): the search
    reads the shards from disk one at a time, so no query is copied once per shard."""

    passage_id: str
    title: str = ""
    text: str
    vector: bytes = Field(..., description="float32, little-endian, as the embedder returned it")


class JournalEntry(Record):
    """One finished unit of LLM work, written as soon as it is done so a crashed job can resume.

    The key hashes everything the result depends on (inputs, prompt, model, parameters), so a
    changed configuration never reuses an old result."""

    key: str
    stage: str = Field(..., description="generate | rerank | rate")
    payload: str = Field(..., description="the stage's result as JSON (see beam_jobs.journal)")
    created_at: dt.datetime


ALL_RECORDS: tuple[type[Record], ...] = (
    InputPassage,
    Passage,
    QueryKnobs,
    GeneratedQuery,
    QualityRating,
    GivenQuery,
    QueryRecord,
    CandidateScore,
    PairScore,
    CrossEncoderScores,
    PassageRef,
    HardNegative,
    Provenance,
    TrainingExample,
    DeadLetter,
    FilteredRecord,
    EmbeddingEntry,
    IndexEntry,
    JournalEntry,
)
