"""Dead letters: whatever cannot be stored is kept, with its reason, in one JSON Lines blob.

One blob per delivered batch (Event Hubs) or per imported file, named from the batch's partition
and sequence numbers or the file's content hash, so a redelivered batch overwrites its own dead
letters rather than adding copies. A row in ``dead_letters`` points at each blob so operators can
query them; the blob holds the original bodies.
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
        entry: dict[str, Any] = {"reason": reason}
        if raw is not None:
            try:
                entry["body"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                entry["body_base64"] = base64.b64encode(raw).decode("ascii")
        else:
            entry["body"] = body
        entry.update({k: _jsonable(v) for k, v in context.items() if v is not None})
        self.items.append(entry)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def blob_name(self) -> str:
        return deadletter_blob(self.source, self.key)

    def flush(self, store: BlobStore, container: str, engine: Engine) -> str | None:
        """Write the blob and its pointer row; returns the blob name, or None when empty."""
        if not self.items:
            return None
        lines = "\n".join(json.dumps(i, default=str, ensure_ascii=False) for i in self.items)
        store.upload(container, self.blob_name, (lines + "\n").encode(), "application/x-ndjson")
        with engine.begin() as conn:
            conn.execute(
                insert_if_absent(dead_letters, ["blob_path"], conn.dialect.name),
                [
                    {
                        "blob_path": f"{container}/{self.blob_name}",
                        "source": self.source,
                        "n_items": len(self.items),
                        "first_reason": self.items[0]["reason"][:1000],
                        "created_at": datetime.now(UTC).replace(tzinfo=None),
                    }
                ],
            )
        return self.blob_name


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value
