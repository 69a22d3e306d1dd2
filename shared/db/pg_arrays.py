"""One-dimensional PostgreSQL arrays in the binary wire format, built in bulk.

psycopg adapts a list parameter element by element in Python: for ingestion's four arrays
(timestamps, device ids, sensor ids, values) that is ~2 µs a reading, as much as decoding and
validating it. These build the bytes PostgreSQL's ``array_recv`` reads (header, then each
element as a 4-byte length and its binary value) with numpy for the fixed-width elements and
cached pieces for the repeating ids and timestamps: ~0.2 µs a reading.

Pass them to a psycopg ``%b`` placeholder of a connection :func:`register`-ed first. psycopg is
imported only there: it is the PostgreSQL driver, not a dependency of the deployed app.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

# Element and array type OIDs (pg_type.dat; fixed since PostgreSQL 7).
TIMESTAMP, TIMESTAMP_ARRAY = 1114, 1115
VARCHAR, VARCHAR_ARRAY = 1043, 1015
FLOAT8, FLOAT8_ARRAY = 701, 1022

_PG_EPOCH = datetime(2000, 1, 1)  # binary timestamps are microseconds since then
_MICROSECOND = timedelta(microseconds=1)
_FIXED8 = np.dtype([("length", ">i4"), ("value", ">i8")])
_FLOAT8 = np.dtype([("length", ">i4"), ("value", ">f8")])
_LENGTH = struct.Struct(">i")
# Pieces seen before (ids repeat across every batch; timestamps across a batch's sensors).
_CACHE_LIMIT = 100_000
_id_pieces: dict[str, bytes] = {}
_micros: dict[datetime, int] = {}


class PgArray(bytes):
    """The binary value of an array parameter (its subclass says the array's type)."""

    oid = 0


class TimestampArray(PgArray):
    oid = TIMESTAMP_ARRAY


class VarcharArray(PgArray):
    oid = VARCHAR_ARRAY


class Float8Array(PgArray):
    oid = FLOAT8_ARRAY


def _header(element_oid: int, n: int) -> bytes:
    # ndim 1, no nulls, element type, then the dimension's length and lower bound (1).
    return struct.pack(">iiIii", 1, 0, element_oid, n, 1)


def timestamp_array(values: Sequence[datetime]) -> TimestampArray:
    """``timestamp[]`` of naive datetimes (microsecond precision, as PostgreSQL stores)."""
    micros = _micros
    if len(micros) > _CACHE_LIMIT:
        micros.clear()
    elements = np.empty(len(values), dtype=_FIXED8)
    elements["length"] = 8
    elements["value"] = [
        micros.get(v) or micros.setdefault(v, (v - _PG_EPOCH) // _MICROSECOND) for v in values
    ]
    return TimestampArray(_header(TIMESTAMP, len(values)) + elements.tobytes())


def varchar_array(values: Sequence[str]) -> VarcharArray:
    """``varchar[]`` of strings, UTF-8 (psycopg's client encoding)."""
    pieces = _id_pieces
    if len(pieces) > _CACHE_LIMIT:
        pieces.clear()
    get = pieces.get
    parts = [get(v) or pieces.setdefault(v, _piece(v)) for v in values]
    return VarcharArray(_header(VARCHAR, len(values)) + b"".join(parts))


def _piece(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return _LENGTH.pack(len(encoded)) + encoded


def float8_array(values: Sequence[float]) -> Float8Array:
    """``float8[]`` of floats."""
    elements = np.empty(len(values), dtype=_FLOAT8)
    elements["length"] = 8
    elements["value"] = values
    return Float8Array(_header(FLOAT8, len(values)) + elements.tobytes())


_DUMPERS: list[tuple[type, type]] = []


def register(dbapi_connection: Any) -> None:
    """Teach a psycopg connection to send :class:`PgArray` values as they are (binary)."""
    if not _DUMPERS:
        try:
            from psycopg.adapt import Dumper
            from psycopg.pq import Format
        except ImportError as exc:  # only PostgreSQL connections come here, and they are psycopg's
            raise RuntimeError("PostgreSQL ingestion needs the psycopg driver installed") from exc

        for kind in (TimestampArray, VarcharArray, Float8Array):
            dumper = type(
                f"{kind.__name__}Dumper",
                (Dumper,),
                {"format": Format.BINARY, "oid": kind.oid, "dump": lambda self, obj: obj},
            )
            _DUMPERS.append((kind, dumper))
    for kind, dumper in _DUMPERS:
        dbapi_connection.adapters.register_dumper(kind, dumper)
