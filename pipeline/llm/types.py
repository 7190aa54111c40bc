"""What the LLM client takes and returns: its configuration, result records and errors.

A failure is a field on a result (reason + detail), never an exception that tears down a batch;
the errors are for callers that want one (`LLMClient.post_json`, the start-up probe).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Generic, Literal, Optional, TypeVar

from pydantic import BaseModel

FailureReason = Literal[
    "length",  # finish_reason == "length": the answer was cut off
    "invalid_json",  # the text is not JSON
    "schema_mismatch",  # JSON that does not match the pydantic model
    "invalid_utf8",  # the model's bytes were not UTF-8; the server replaced them with U+FFFD
    "timeout",  # retries exhausted, the last attempt timed out
    "connection_error",  # retries exhausted, the last attempt could not connect
    "server_error",  # retries exhausted on 5xx / 429
    "http_error",  # a non-retryable 4xx (bad request, unknown model, ...)
    "bad_response",  # a 200 whose body lacks what the protocol promises
]

LabelMethod = Literal["exact", "first_token"]
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
ModelT = TypeVar("ModelT", bound=BaseModel)


class LLMError(Exception):
    """Base class; `reason` is a FailureReason."""

    reason: FailureReason = "bad_response"

    def __init__(self, message: str, reason: FailureReason | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class RetriesExhaustedError(LLMError):
    """Every attempt of one request failed with a transient error."""

    def __init__(self, url: str, attempts: int, elapsed_s: float, last_error: str, reason: FailureReason):
        self.url, self.attempts, self.last_error = url, attempts, last_error
        super().__init__(
            f"POST {url} failed after {attempts} attempts in {elapsed_s:.1f}s; last error: {last_error}. "
            "Check that the server is up (GET /health) and not overloaded, or raise the job's --llm-retries / "
            "--llm-timeout (ClientConfig.max_retries / timeout_s).",
            reason,
        )


class HTTPStatusError(LLMError):
    """A non-retryable HTTP status (4xx other than 408/409/425/429)."""

    def __init__(self, url: str, status: int, body: str):
        self.status = status
        super().__init__(f"POST {url} returned HTTP {status}: {body[:500]}", "http_error")


if TYPE_CHECKING:
    from pipeline.llm.local_server import LocalServerSpec


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    base_urls: tuple[str, ...]  # e.g. ("http://127.0.0.1:8000",); /v1 is appended
    model: str  # served model name
    max_concurrency: int = 32  # in-flight requests per client; vLLM batches what arrives together
    timeout_s: float = 120.0  # per attempt
    max_retries: int = 4  # attempts after the first
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    max_retry_after_s: float = 60.0  # longest server-requested wait (Retry-After) honoured
    api_key: Optional[str] = dataclasses.field(default=None, repr=False)  # never printed
    # In-worker mode: the worker starts this server (one per machine) before the first request.
    local_server: Optional["LocalServerSpec"] = None

    def __post_init__(self):
        if not self.base_urls:
            raise ValueError("give at least one LLM base URL, e.g. http://127.0.0.1:8000")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("max_concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")


@dataclasses.dataclass
class RequestStats:
    """Token and request accounting for metrics (Beam counters read these)."""

    requests: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def snapshot(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LLMResult:
    ok: bool = False
    reason: Optional[FailureReason] = None
    detail: str = ""
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    status: Optional[int] = None  # the HTTP status of a refused request (a non-retryable 4xx)

    def fail(self, reason: FailureReason, detail: str) -> "LLMResult":
        self.ok, self.reason, self.detail = False, reason, detail
        return self


@dataclasses.dataclass
class GenerationResult(LLMResult, Generic[ModelT]):
    value: Optional[ModelT] = None  # the validated pydantic object
    text: str = ""  # raw model text, kept for dead-letter rows
    finish_reason: Optional[str] = None


@dataclasses.dataclass
class LikelihoodResult(LLMResult):
    logprob_sum: float = float("nan")  # log P(continuation | prefix)
    logprob_mean: float = float("nan")
    num_tokens: int = 0  # continuation tokens scored
    tokens: tuple[str, ...] = ()
    token_logprobs: tuple[float, ...] = ()


@dataclasses.dataclass
class LabelResult(LLMResult):
    logprobs: dict[str, float] = dataclasses.field(default_factory=dict)  # label -> log P(label | prompt)
    num_tokens: dict[str, int] = dataclasses.field(default_factory=dict)
