"""Record models and their Arrow schemas: the one source of truth for every record."""

from schemas.records import *  # noqa: F401,F403
from schemas.records import Record, RecordValidationError  # noqa: F401
from schemas.records import ALL_RECORDS as _PIPELINE_RECORDS
from schemas.manifest import RunManifest, ScoreSummary, TokenUsage  # noqa: F401

ALL_RECORDS = (*_PIPELINE_RECORDS, ScoreSummary, TokenUsage, RunManifest)
