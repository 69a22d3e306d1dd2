"""The ingestion service: one batch of Event Hubs events in, readings committed, rejects kept.

Called by the Event Hubs-triggered function (and by the local runner, the simulator and the
tests, the same way). The order of effects is what makes it safe under at-least-once delivery:

1. decode and validate every event; collect valid readings and dead letters;
2. insert the valid readings idempotently in one transaction: if SQL is unreachable this raises,
   the host retries the whole batch, and nothing has been dead-lettered yet;
3. write the batch's dead letters: one blob per event with rejected items (or conflicting
   values), named from its partition and sequence number, so a retry or a re-batched
   redelivery overwrites it and its pointer row is counted once.

Nothing in an event's content can make this raise (:func:`parse_event`): a poison item is
dead-lettered alone and the rest of the batch is stored. Only SQL or storage faults raise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine

from shared.blobs import BlobStore
from shared.ingestion.deadletters import DeadLetters, dead_letter_entry, flush_all
from shared.ingestion.store import InsertCounts, insert_readings
from shared.ingestion.validation import InvalidReading, Reading, reading_validator

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
    deadletter_blobs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "received": self.counts.received,
            "inserted": self.counts.inserted,
            "duplicates": self.counts.duplicates,
            "conflicts": self.counts.conflicts,
            "rejected": self.rejected,
            "deadletter_blobs": self.deadletter_blobs[:20],
            "seconds": round(self.seconds, 4),
        }


# json's C scanner, as json.loads uses it (same decoder settings), without json.loads' Python
# layers (encoding detection, whitespace regexes): a third of the cost of a one-reading body.
_scan_once = json.JSONDecoder().scan_once


def decode_body(body: bytes) -> list[Any]:
    """The readings in one event body: a JSON object or a JSON list of them.

    Raises ``ValueError`` (``json.JSONDecodeError``, ``UnicodeDecodeError``, or an integer
    literal past Python's 4,300-digit limit) or ``RecursionError`` (nesting deeper than the
    parser's limit, e.g. 100,000 ``[``): the caller dead-letters the event for either.

    The common body (UTF-8, starting with ``[`` or ``{``, nothing after the document) is scanned
    directly; anything else, or any error, goes through ``json.loads``, so what is accepted and
    the errors raised are exactly ``json.loads``'.
    """
    decoded: Any = _FALLBACK
    if body[:1] in (b"[", b"{"):
        try:
            text = body.decode("utf-8")
            value, end = _scan_once(text, 0)
            if end == len(text):
                decoded = value
        except (ValueError, RecursionError, StopIteration):
            pass
    if decoded is _FALLBACK:
        decoded = json.loads(body)
    return decoded if isinstance(decoded, list) else [decoded]


_FALLBACK = object()


@dataclass
class Rejected:
    """An item (or a whole event body) that cannot be stored, and why."""

    reason: str
    body: Any = None
    raw: bytes | None = None
    item_index: int | None = None
    event_raw: bytes | None = None  # the event's bytes, kept if ``body`` cannot be written

    def entry(self, **context: Any) -> dict[str, Any]:
        return dead_letter_entry(
            self.reason,
            self.body,
            self.raw,
            fallback_raw=self.event_raw,
            item_index=self.item_index,
            **context,
        )


def parse_event(
    raw: bytes, now: datetime, validate: Callable[[Any], Reading] | None = None
) -> tuple[list[tuple[int, Reading]], list[Rejected]]:
    """The valid readings (with their index in the body) and the rejected items of one event.

    Never raises because of the body's content: whatever it holds is a reading or a rejection
    with a reason, so one poison event cannot fail (and, after the host's retries, lose) the
    batch it came in. ``validate``: a :func:`reading_validator` for ``now``, to share across a
    batch's events.
    """
    try:
        items = decode_body(raw)
    except (ValueError, RecursionError) as exc:
        reason = "nesting too deep" if isinstance(exc, RecursionError) else str(exc)[:300]
        return [], [Rejected(f"undecodable event body: {reason}", raw=raw)]
    validate = validate or reading_validator(now)
    valid: list[tuple[int, Reading]] = []
    rejected: list[Rejected] = []
    for index, item in enumerate(items):
        try:
            valid.append((index, validate(item)))
        except InvalidReading as exc:
            rejected.append(Rejected(str(exc), body=item, item_index=index, event_raw=raw))
        except Exception as exc:  # noqa: BLE001 - a validator gap must cost one item, not a batch
            rejected.append(
                Rejected(
                    f"invalid reading: {type(exc).__name__}: {str(exc)[:200]}",
                    body=item,
                    item_index=index,
                    event_raw=raw,
                )
            )
    return valid, rejected


_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,32}")


def event_key(event: EventLike, raw: bytes, partition: str | None) -> str:
    """The dead-letter key of one event: unique per event, the same on every redelivery.

    Partition id and sequence number identify an event; without a usable partition id a hash
    of the body, enqueued time and offset keeps two partitions' equal sequence numbers apart.
    """
    seq = event.sequence_number
    if partition is not None and _SAFE_SEGMENT.fullmatch(partition) and seq is not None:
        return f"{partition}/{seq:012d}"
    digest = hashlib.sha256(raw)
    for part in (event.enqueued_time, getattr(event, "offset", None), partition, seq):
        digest.update(b"\x00" + str(part).encode("utf-8", "replace"))
    tag = "unknown-partition" if partition is None else "partition-sha256"
    number = f"{seq:012d}-" if isinstance(seq, int) else ""
    return f"{tag}/{number}{digest.hexdigest()[:20]}"


def _context(event: EventLike, partition: str | None) -> dict[str, Any]:
    """Where an event came from, for its dead letters (built only for events that have some)."""
    return {
        "partition": partition,
        "partition_key": event.partition_key,
        "sequence_number": event.sequence_number,
        "enqueued_time": event.enqueued_time,
    }


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
    validate = reading_validator(now)
    valid: list[Reading] = []
    origins: list[tuple[int, int]] = []  # (event position, item index) of each valid reading
    dead: dict[int, DeadLetters] = {}
    rejected = 0
    for position, event in enumerate(events):
        raw = event.get_body() or b""
        # The common event, one valid reading, inline; anything else through parse_event (which
        # decodes and validates the same way, and gives each reject its reason).
        try:
            items = decode_body(raw)
            if len(items) == 1:
                valid.append(validate(items[0]))
                origins.append((position, 0))
                continue
        except Exception:  # noqa: BLE001, S110 - parse_event says what was wrong
            pass
        good, bad = parse_event(raw, now, validate)
        for index, item in good:
            valid.append(item)
            origins.append((position, index))
        if bad:
            letters = dead[position] = DeadLetters("eventhub", event_key(event, raw, partition))
            letters.items.extend(r.entry(**_context(event, partition)) for r in bad)
            rejected += len(bad)
    result = IngestResult(events=len(events), rejected=rejected)
    result.counts = insert_readings(engine, valid)
    # A conflicting duplicate is not stored (the first value wins) but its value is kept.
    for batch_index, stored in result.counts.conflicting:
        position, index = origins[batch_index]
        event = events[position]
        if position not in dead:
            dead[position] = DeadLetters(
                "eventhub", event_key(event, event.get_body() or b"", partition)
            )
        reading = valid[batch_index]
        dead[position].items.append(
            dead_letter_entry(
                f"conflict: ({reading.device}, {reading.sensor}, {reading.ts.isoformat()}Z) is "
                f"stored with value {stored!r}; this reading's value {reading.value!r} was not "
                "stored",
                body={**reading._asdict(), "ts": reading.ts.isoformat() + "Z"},
                item_index=index,
                stored_value=stored,
                **_context(event, partition),
            )
        )
    result.deadletter_blobs = flush_all(
        [dead[p] for p in sorted(dead)], store, deadletter_container, engine
    )
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
    validate = reading_validator(now or datetime.now(UTC).replace(tzinfo=None))
    valid: list[Reading] = []
    dead = DeadLetters(source, key)
    for index, item in enumerate(items):
        try:
            valid.append(validate(item))
        except InvalidReading as exc:
            dead.add(str(exc), body=item, row=index + 1)
    result = IngestResult(events=0, rejected=len(dead))
    result.counts = insert_readings(engine, valid)
    blob = dead.flush(store, deadletter_container, engine)
    result.deadletter_blobs = [blob] if blob else []
    result.seconds = time.perf_counter() - started
    return result
