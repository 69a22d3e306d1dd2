"""Readings into SQL: validation, idempotent bulk insert, dead letters, Event Hubs and CSV paths."""

from shared.ingestion.service import IngestResult, ingest_events
from shared.ingestion.validation import Reading, validate_reading

__all__ = ["IngestResult", "Reading", "ingest_events", "validate_reading"]
