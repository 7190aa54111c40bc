"""Every record the pipeline reads or writes. The Arrow schemas derive from these models."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal, Optional

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas import arrow

RelevanceLabel = Literal["highly_relevant", "somewhat_relevant", "not_relevant"]
MiningStrategy = Literal["lowest", "random", "rank_window", "margin"]
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


class QueryRecord(Record):
    """A generated query, tied to its seed passage."""

    query_id: str = Field(..., description="content hash of (passage id, task, query, sample index)")
    passage_id: str = Field(..., description="seed passage id")
    sample: int = Field(0, ge=0, description="index among the queries generated for the passage")
    task: str = Field(..., description="task description written by the LLM")
    query: str = Field(..., description="query written by the LLM")
    knobs: QueryKnobs
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
    ql_rank: int = Field(..., ge=1)
    rc_rank: int = Field(..., ge=1)
    fused: float = Field(..., description="reciprocal rank fusion of the QL and RC ranks")
    fused_rank: int = Field(..., ge=1)


class PairScore(Record):
    """The LLM's raw scores of one (query, passage) pair: the unit of passage-major scoring and of
    its journal. Ranks and fusion come later, over a query's whole candidate list."""

    query_id: str
    passage_id: str
    ql: float = Field(..., description="log P(query | passage), summed over the query tokens")
    ql_mean: float = Field(..., description="ql divided by the number of query tokens")
    rc_label_logprobs: dict[str, float] = Field(..., description="log P(label) per relevance label")


class PassageRef(Record):
    """A passage as it appears inside an example."""

    id: str
    title: str = ""
    text: str


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
    seed_passage_id: str
    positive_changed: bool = Field(..., description="true when the LLM relabelled the positive")
    positive_ql: float
    positive_rc: float
    positive_fused: float
    hard_negatives: list[HardNegative]
    candidates: Optional[list[CandidateScore]] = Field(None, description="every scored candidate, if kept")
    knobs: QueryKnobs
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


class ScoreSummary(Record):
    """Distribution summary of one score over the written examples."""

    count: int
    mean: Optional[float] = None
    std: Optional[float] = None
    min: Optional[float] = None
    p50: Optional[float] = None
    max: Optional[float] = None


class TokenUsage(Record):
    """The LLM tokens one kind of request cost in this run, as the server counted them."""

    requests: int = 0
    prompt_sent: int = Field(0, description="prompt tokens sent (the server's usage.prompt_tokens)")
    prompt_computed: int = Field(0, description="prompt tokens the server computed: sent minus its prefix-cache "
                                                "hits (usage.prompt_tokens_details.cached_tokens)")
    completion: int = Field(0, description="completion tokens generated")
    cache_reported: int = Field(0, description="requests whose server reported cached tokens; for the others "
                                               "computed = sent (vLLM reports them with --enable-prompt-tokens-details)")


class RunManifest(Record):
    """Run-level summary written next to the shards."""

    run_id: str
    started_at: dt.datetime
    finished_at: dt.datetime
    counts: dict[str, int] = Field(..., description="counts at every stage")
    inputs: int
    written: int
    filtered: int
    dead_lettered: int
    relabel_rate: Optional[float] = None
    task_mix: dict[str, int] = Field(default_factory=dict)
    scores: dict[str, ScoreSummary] = Field(default_factory=dict)
    llm_model: str
    embedder: str
    prompts: dict[str, str]
    config: str = Field(..., description="effective configuration as sorted JSON")
    accounting: str = Field("", description="the job's own check: inputs = written + filtered + dead-lettered")
    resumed: bool = Field(False, description="run with --resume: finished LLM work was read from the journal")
    ranking_precision: dict[str, int] = Field(
        default_factory=dict, description="decimals QL and RC are rounded to before ranking (ties: retrieval rank, "
                                          "then passage id), so that float noise cannot change a ranking")
    tokens: dict[str, TokenUsage] = Field(
        default_factory=dict, description="LLM tokens by request kind (generate, ql, rc, rate) in this run; work "
                                          "replayed from the journal costs none")
    scoring: dict[str, str] = Field(
        default_factory=dict, description="how the LLM scored: score_order (passage | query), ql_path "
                                          "(prefix_cache: QL read the server's prefix cache over its token endpoint; "
                                          "echo: /v1/completions) and the RC prompt")
    phase_seconds: dict[str, float] = Field(
        default_factory=dict, description="a run in waves (--wave_size): wall seconds of each of its pipelines "
                                          "(plan, prepare-w00000, ..., filter, finish-w00000, ...); empty for one "
                                          "pipeline")


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
    QueryRecord,
    CandidateScore,
    PairScore,
    PassageRef,
    HardNegative,
    Provenance,
    TrainingExample,
    DeadLetter,
    FilteredRecord,
    ScoreSummary,
    TokenUsage,
    RunManifest,
    EmbeddingEntry,
    IndexEntry,
    JournalEntry,
)
