"""Record models and their Arrow schemas: the one source of truth for every record."""

from schemas.records import *  # noqa: F401,F403
from schemas.records import ALL_RECORDS, Record, RecordValidationError  # noqa: F401
