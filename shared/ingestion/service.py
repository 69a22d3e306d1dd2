"""The ingestion service: one batch of Event Hubs events in, readings committed, rejects kept.

Called by the Event Hubs-triggered function (and by the local runner, the simulator and the
tests, the same way). The order of effects is what makes it safe under at-least-once delivery:

1. decode and validate every event; collect valid readings and dead letters;
2. insert the valid readings idempotently in one transaction: if SQL is unreachable this raises,
   the host retries the whole batch, and nothing has been dead-lettered yet;
3. write the batch's dead letters (deterministic blob name: a retry overwrites it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine

from shared.blobs import BlobStore
from shared.ingestion.deadletters import DeadLetters
from shared.ingestion.store import InsertCounts, insert_readings
from shared.ingestion.validation import InvalidReading, Reading, validate_reading

log = logging.getLogger(__name__)


class EventLike(Protocol):
    """What the service needs of an event (``azure.functions.EventHubEvent`` has it)."""

    def get_body(self) -> bytes: ...

    @property
    def sequence_number(self) -> int | None: ...

    @property
    def enqueued_time(self) -> datetime | None: ...

    @property
    def partition_key(self) -> str | None: ...


@dataclass
class IngestResult:
    events: int = 0
    counts: InsertCounts = field(default_factory=InsertCounts)
    rejected: int = 0
    deadletter_blob: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "received": self.counts.received,
            "inserted": self.counts.inserted,
            "duplicates": self.counts.duplicates,
            "conflicts": self.counts.conflicts,
            "rejected": self.rejected,
            "deadletter_blob": self.deadletter_blob,
            "seconds": round(self.seconds, 4),
        }


def decode_body(body: bytes) -> list[Any]:
    """The readings in one event body: a JSON object or a JSON list of them."""
    decoded = json.loads(body)
    return decoded if isinstance(decoded, list) else [decoded]


def batch_key(events: Sequence[EventLike], partition: str | None) -> str:
    """A deterministic name for a batch: partition and first/last sequence numbers."""
    seqs = [e.sequence_number for e in events if e.sequence_number is not None]
    part = partition or "p"
    if seqs:
        return f"{part}/{min(seqs):012d}-{max(seqs):012d}"
    import hashlib

    digest = hashlib.sha256()
    for e in events:
        digest.update(e.get_body())
    return f"{part}/sha256-{digest.hexdigest()[:16]}"


def ingest_events(
    events: Sequence[EventLike],
    engine: Engine,
    store: BlobStore,
    deadletter_container: str,
    partition: str | None = None,
    now: datetime | None = None,
) -> IngestResult:
    """Validate, insert and dead-letter one delivered batch; see the module docstring."""
    started = time.perf_counter()
    now = now or datetime.now(UTC).replace(tzinfo=None)
    valid: list[Reading] = []
    dead = DeadLetters("eventhub", batch_key(events, partition))
    for event in events:
        raw = event.get_body()
        context = {
            "partition": partition,
            "partition_key": event.partition_key,
            "sequence_number": event.sequence_number,
            "enqueued_time": event.enqueued_time,
        }
        try:
            items = decode_body(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            dead.add(f"undecodable event body: {exc}", raw=raw, **context)
            continue
        for index, item in enumerate(items):
            try:
                valid.append(validate_reading(item, now))
            except InvalidReading as exc:
                dead.add(str(exc), body=item, item_index=index, **context)
    result = IngestResult(events=len(events), rejected=len(dead))
    result.counts = insert_readings(engine, valid)
    result.deadletter_blob = dead.flush(store, deadletter_container, engine)
    result.seconds = time.perf_counter() - started
    log.info("ingested event batch", extra={"ingest": result.as_dict()})
    return result


def ingest_readings(
    items: Iterable[Any],
    engine: Engine,
    store: BlobStore,
    deadletter_container: str,
    source: str,
    key: str,
    now: datetime | None = None,
) -> IngestResult:
    """Validate and insert decoded reading objects (CSV import); rejects go to one blob."""
    started = time.perf_counter()
    now = now or datetime.now(UTC).replace(tzinfo=None)
    valid: list[Reading] = []
    dead = DeadLetters(source, key)
    for index, item in enumerate(items):
        try:
            valid.append(validate_reading(item, now))
        except InvalidReading as exc:
            dead.add(str(exc), body=item, row=index + 1)
    result = IngestResult(events=0, rejected=len(dead))
    result.counts = insert_readings(engine, valid)
    result.deadletter_blob = dead.flush(store, deadletter_container, engine)
    result.seconds = time.perf_counter() - started
    return result
