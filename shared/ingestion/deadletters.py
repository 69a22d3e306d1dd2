"""Dead letters: whatever cannot be stored is kept, with its reason, in JSON Lines blobs.

Event Hubs: one blob per *event* with rejected items, named from its partition and sequence
number (``eventhub/<partition>/<sequence>.jsonl``), because the host redelivers from the last
checkpoint with batch boundaries of its own choosing: an event's rejects land in the same blob
however it is re-batched, and its pointer row is inserted once, so a redelivered rejected item
is never counted twice. Without a partition id (no trigger metadata) the name also carries a
hash of the event (body, enqueued time, offset), so two partitions with the same sequence
numbers never overwrite each other's. CSV imports: one blob per file, named from its content
hash. A row in ``dead_letters`` points at each blob so operators can query them; the blob holds
the original bodies, and for a conflicting duplicate reading the value that was not stored
beside the one that was (reason ``conflict``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from shared.blobs import BlobStore, deadletter_blob
from shared.db.dialects import insert_if_absent
from shared.db.schema import dead_letters


@dataclass
class DeadLetters:
    """Rejected items of one batch, written together by :meth:`flush`."""

    source: str
    key: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, reason: str, body: Any = None, raw: bytes | None = None, **context: Any) -> None:
        self.items.append(dead_letter_entry(reason, body, raw, **context))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def blob_name(self) -> str:
        return deadletter_blob(self.source, self.key)

    def content(self) -> bytes:
        """The JSON Lines blob (ASCII: a lone surrogate in a body stays an escape, not an
        encoding error)."""
        lines = [_line(i) for i in self.items]
        return ("\n".join(lines) + "\n").encode("ascii")

    def flush(self, store: BlobStore, container: str, engine: Engine) -> str | None:
        """Write the blob and its pointer row; returns the blob name, or None when empty."""
        written = flush_all([self], store, container, engine)
        return written[0] if written else None


def flush_all(
    batches: list[DeadLetters], store: BlobStore, container: str, engine: Engine
) -> list[str]:
    """Write the non-empty ``batches`` (blobs first, then their pointer rows in one transaction).

    Blobs are overwritten and pointer rows inserted only if absent, so a retry or a redelivery
    changes nothing. Returns the blob names written.
    """
    batches = [b for b in batches if b.items]
    if not batches:
        return []
    for batch in batches:
        store.upload(container, batch.blob_name, batch.content(), "application/x-ndjson")
    created = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            insert_if_absent(dead_letters, ["blob_path"], conn.dialect.name),
            [
                {
                    "blob_path": f"{container}/{batch.blob_name}",
                    "source": batch.source,
                    "n_items": len(batch.items),
                    "first_reason": batch.items[0]["reason"][:1000],
                    "created_at": created,
                }
                for batch in batches
            ],
        )
    return [batch.blob_name for batch in batches]


def _text_or_base64(raw: bytes) -> tuple[str, str]:
    try:
        return "body", raw.decode("utf-8")
    except UnicodeDecodeError:
        return "body_base64", base64.b64encode(raw).decode("ascii")


def dead_letter_entry(
    reason: str,
    body: Any = None,
    raw: bytes | None = None,
    fallback_raw: bytes | None = None,
    **context: Any,
) -> dict[str, Any]:
    """One dead-letter line as a JSON-ready dict, whatever ``body`` holds.

    ``raw``: the undecodable bytes (kept as text, or Base64 when not UTF-8). ``body``: the
    decoded item; if it cannot be written as JSON (nesting deeper than the encoder's recursion
    limit, an integer too long to print) the event's ``fallback_raw`` bytes are kept instead.
    """
    entry: dict[str, Any] = {"reason": reason}
    if raw is not None:
        key, text = _text_or_base64(raw)
        entry[key] = text
    else:
        try:
            json.dumps(body, default=str)
            entry["body"] = body
        except (ValueError, TypeError, RecursionError):
            entry["body_unserialisable"] = type(body).__name__
            if fallback_raw is not None:
                key, text = _text_or_base64(fallback_raw)
                entry[f"event_{key}"] = text
    entry.update({k: _jsonable(v) for k, v in context.items() if v is not None})
    return entry


def _line(entry: dict[str, Any]) -> str:
    try:
        return json.dumps(entry, default=str)
    except (ValueError, TypeError, RecursionError):  # a body at the encoder's recursion edge
        kept = {k: v for k, v in entry.items() if k != "body"}
        kept["body_unserialisable"] = type(entry.get("body")).__name__
        return json.dumps(kept, default=str)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value
