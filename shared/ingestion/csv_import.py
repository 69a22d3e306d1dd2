"""Importing readings from CSV files, through the same validation and idempotent insert.

Two layouts are recognised from the header:

* the reference layout ``TS,Device,Sensor,Value`` (case-insensitive), many sensors per file;
* the one-series layout ``timestamp,value`` (NAB and most exports), with device and sensor given.

Rejected rows go to one dead-letter blob per file, named from the file's content hash, so
re-importing the same file overwrites rather than duplicates.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from shared.blobs import BlobStore
from shared.ingestion.service import IngestResult, ingest_readings

REFERENCE_COLUMNS = ("ts", "device", "sensor", "value")
SERIES_COLUMNS = ("timestamp", "value")


class CsvLayoutError(ValueError):
    """The file as a whole cannot be imported (unknown layout, missing options)."""


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text  # validation rejects it with a reason naming the value's type


def read_csv_items(
    text: str, device: str | None = None, sensor: str | None = None
) -> list[dict[str, Any]]:
    """Reading objects from CSV text in either layout (see the module docstring)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise CsvLayoutError("the file is empty") from None
    if tuple(header[:4]) == REFERENCE_COLUMNS:
        if device or sensor:
            raise CsvLayoutError("--device/--sensor apply to timestamp,value files only")
        return [
            {
                "ts": _utc(row[0]),
                "device": row[1].strip(),
                "sensor": row[2].strip(),
                "value": _number(row[3]),
            }
            if len(row) >= 4
            else {"row": row}
            for row in reader
        ]
    if tuple(header[:2]) == SERIES_COLUMNS:
        if not device or not sensor:
            raise CsvLayoutError("a timestamp,value file needs --device and --sensor")
        return [
            {"ts": _utc(row[0]), "device": device, "sensor": sensor, "value": _number(row[1])}
            if len(row) >= 2
            else {"row": row}
            for row in reader
        ]
    raise CsvLayoutError(
        f"unknown CSV layout {','.join(header)!r}: expected TS,Device,Sensor,Value or "
        "timestamp,value"
    )


def _utc(text: str) -> str:
    # CSV timestamps without an offset are UTC; ISO parsing accepts "YYYY-MM-DD HH:MM:SS".
    return text.strip()


def import_csv(
    path: Path,
    engine: Engine,
    store: BlobStore,
    deadletter_container: str,
    device: str | None = None,
    sensor: str | None = None,
) -> IngestResult:
    """Import one CSV file; returns the counts (inserted, duplicates, conflicts, rejected)."""
    data = Path(path).read_bytes()
    items = read_csv_items(data.decode("utf-8-sig"), device, sensor)
    key = f"{Path(path).stem}-{hashlib.sha256(data).hexdigest()[:16]}"
    return ingest_readings(items, engine, store, deadletter_container, "import", key)
