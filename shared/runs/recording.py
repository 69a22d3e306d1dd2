"""Recording predictions: the blob trigger's service.

For each ``runs/<run_id>/<chunk_id>.predictions.parquet`` blob: parse it, replace the chunk's
rows in ``predictions`` and its per-sensor errors in ``run_errors`` (delete + insert in one
transaction: an upsert at chunk granularity), mark the chunk recorded, recount the run,
which finishes it when every chunk is in, and bring the anomaly events of the chunk's sensors
up to date (``shared.events``), all in that transaction. Delivered twice, the second delivery
finds the chunk recorded with the same ETag and changes nothing; even without an ETag it
rewrites the same rows and recomputes the same events.

The file is checked before anything is written, because a blob name is only a claim (anyone
with write access to the container, or a copy gone wrong, can put any file under any name):

* its ``scoring.chunk_id`` metadata names this chunk;
* every column is there with its type (``is_anomaly`` boolean, ``score`` a float in [0, 1],
  keys and counts without nulls), no (device, sensor, bucket) appears twice;
* its rows are exactly the chunk's in-window buckets (the chunk file in the chunks container
  lists them, with each sensor's model version) of every sensor not listed in its errors file,
  so another run's or chunk's file, a truncated copy or a file with foreign sensors or buckets
  outside the run's window cannot pass;
* its errors file (when it says sensors failed) is readable and names the chunk's sensors.

A file that fails a check is a failed delivery, recorded with its reason: a chunk not yet
recorded is marked failed (a later good file still records it); a chunk already recorded keeps
its rows, status and counts (a bad redelivery is refused and logged, never half-applied). A
file matching no chunk of a known run is logged and changes nothing. Neither raises: raising
would only make the host retry the same bad file five times and then park it in a poison
queue while the run stalls. What does raise, so that the host retries, are transient faults
(SQL or storage unreachable, see ``shared.db.retry.is_transient``) and a predictions file
whose errors file has not arrived yet (Azure ML's mounted outputs may upload the two out of
order).

Memory (issue 12): the file's bytes are held (the host hands them over), but not the file
decoded whole nor a Python tuple per row. The checks read ``CHECK_SLICE_ROWS`` rows at a time and
keep only each row's key, as one integer code (``_KeySpace``), compared by sorting; the rows are
then read again and written a slice of ``SLICE_ROWS`` at a time (``shared.db.bulk.insert_arrow``).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from azure.core.exceptions import AzureError, ResourceNotFoundError
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import DBAPIError

from scoring.features import (
    CONTEXT_COLUMN,
    ERROR_COLUMNS,
    EXPLANATION_COLUMNS,
    PREDICTION_COLUMNS,
)
from shared.alerts import deliver_quietly, enqueue_for_chunk
from shared.blobs import errors_blob, parse_predictions_blob
from shared.clock import utcnow
from shared.context import AppContext
from shared.db.bulk import SLICE_ROWS, insert_arrow
from shared.db.retry import error_class, is_transient
from shared.db.schema import predictions, run_chunks, run_errors
from shared.events.tracking import update_events_for_chunk
from shared.runs import records

log = logging.getLogger(__name__)

KIND_SENSOR = "sensor_error"
KIND_CHUNK = "chunk_error"
KIND_FOREIGN = "foreign_file"
META_ERRORS = b"scoring.errors"
META_CHUNK_ERROR = b"scoring.chunk_error"  # set by scoring.score for an unreadable chunk
META_CHUNK_ID = b"scoring.chunk_id"  # set by scoring.score: whose file this is
# Reasons are stored (VARCHAR(max)/TEXT) but also logged and shown: keep them readable.
MAX_REASON = 4000


class ErrorsFileMissing(RuntimeError):
    """The predictions file says sensors failed but its errors file is not there (yet)."""


class DeliveryRefused(ValueError):
    """A predictions file (or its errors file) that no retry can make recordable."""


@dataclass
class Delivery:
    """A checked predictions file (its bytes), its rows and anomalies, and the sensor errors."""

    data: bytes
    rows: int
    anomalies: int
    sensor_errors: list[tuple[str | None, str | None, str, str]]

    def slices(self, rows: int = SLICE_ROWS) -> Iterator[pa.Table]:
        """The file's rows as stored (see ``_stored_rows``), ``rows`` at a time: recording
        holds one slice of the values, not the file's (issue 12)."""
        file = _parquet(self.data)
        names = [
            c for c in (*PREDICTION_COLUMNS, *EXPLANATION_COLUMNS) if c in file.schema_arrow.names
        ]
        for batch in file.iter_batches(batch_size=rows, columns=names):
            yield _stored_rows(pa.Table.from_batches([batch]))


@dataclass
class RecordResult:
    outcome: str  # recorded | duplicate | failed_chunk | foreign
    run_id: str | None = None
    chunk_id: str | None = None
    rows: int = 0
    anomalies: int = 0
    errors: int = 0
    reason: str | None = None
    run_status: str | None = None


def record_predictions_blob(
    ctx: AppContext, name: str, data: bytes, etag: str | None = None
) -> RecordResult:
    """Record one predictions blob (``name`` with or without the container prefix)."""
    parsed = parse_predictions_blob(name)
    if parsed is None:
        log.warning("ignoring a blob that is not a predictions file", extra={"blob": name})
        return RecordResult(
            "foreign", reason=f"{name} is not runs/<run>/<chunk>.predictions.parquet"
        )
    run_id, chunk_id = parsed.run_id, parsed.chunk_id
    context = {"run_id": run_id, "chunk_id": chunk_id}
    with ctx.engine.connect() as conn:
        chunk = conn.execute(
            select(run_chunks).where(
                run_chunks.c.run_id == run_id, run_chunks.c.chunk_id == chunk_id
            )
        ).one_or_none()
    if chunk is None:
        # Not one of the run's chunks: nothing of any run is touched (a stray or hostile file
        # must not add errors to a run, finished or not); the log says what was ignored.
        reason = f"predictions file {name} matches no chunk of a known run"
        log.warning(reason, extra=context)
        return RecordResult("foreign", run_id, chunk_id, reason=reason)
    if chunk.status == records.CHUNK_RECORDED and etag is not None and chunk.etag == etag:
        log.info("predictions already recorded", extra=context)
        return RecordResult("duplicate", run_id, chunk_id, rows=chunk.n_predictions)

    run = records.get_run(ctx.engine, run_id)
    try:
        delivery = _check_delivery(ctx, run, chunk, data)
    except DeliveryRefused as exc:
        return _refuse(ctx, run_id, chunk_id, str(exc))
    try:
        return _write(ctx, name, etag, run_id, chunk_id, delivery)
    except DBAPIError as exc:
        if is_transient(exc):
            raise  # SQL unreachable or a deadlock victim: the host's retry is the cure
        # Refused by the database (a constraint, a value it cannot store): the transaction
        # rolled back, so nothing of it was written; the file is at fault, not the moment.
        return _refuse(
            ctx,
            run_id,
            chunk_id,
            f"predictions file refused by the database: {error_class(exc)}: "
            f"{str(exc.orig or exc).splitlines()[0] if str(exc.orig or exc) else ''}",
        )


def _write(
    ctx: AppContext,
    name: str,
    etag: str | None,
    run_id: str,
    chunk_id: str,
    delivery: Delivery,
) -> RecordResult:
    """Replace the chunk's rows, errors and events and recount the run, in one transaction.

    The rows go in as Arrow columns, a slice at a time (``insert_arrow``): recording holds the
    file's bytes, its keys and one slice of values, never a Python tuple per row (issue 12)."""
    settings = ctx.settings
    anomalies, sensor_errors = delivery.anomalies, delivery.sensor_errors
    context = {"run_id": run_id, "chunk_id": chunk_id}
    with ctx.engine.begin() as conn:
        conn.execute(
            delete(predictions).where(
                predictions.c.run_id == run_id, predictions.c.chunk_id == chunk_id
            )
        )
        n_rows = insert_arrow(
            conn, predictions, delivery.slices(), constants={"run_id": run_id, "chunk_id": chunk_id}
        )
        _replace_errors(conn, run_id, chunk_id, sensor_errors)
        conn.execute(
            update(run_chunks)
            .where(run_chunks.c.run_id == run_id, run_chunks.c.chunk_id == chunk_id)
            .values(
                status=records.CHUNK_RECORDED,
                predictions_blob=name,
                etag=etag,
                n_predictions=n_rows,
                n_anomalies=anomalies,
                n_errors=len(sensor_errors),
                error=None,
                recorded_at=utcnow(),
            )
        )
        run = records.refresh_counts(conn, run_id)
        events_mark = utcnow()  # alerts: the events changed from here on
        # In the same transaction: the chunk's sensors' events always match its predictions.
        events = update_events_for_chunk(
            conn,
            run_id,
            chunk_id,
            settings.event_gap_buckets,
            settings.bucket_seconds,
            rest_buckets=settings.event_rest_buckets,
        )
        # ---- alerts (shared.alerts): the outbox rows of these event changes, same transaction
        enqueue_for_chunk(conn, settings, run_id, chunk_id, since=events_mark)
    # ---- alerts: sent once committed; a failing receiver never fails the recording
    deliver_quietly(ctx.engine, settings)
    log.info(
        "recorded predictions",
        extra={
            **context,
            "rows": n_rows,
            "anomalies": anomalies,
            "sensor_errors": len(sensor_errors),
            "events_opened": events.opened,
            "events_updated": events.updated,
            "events_deleted": events.deleted,
            "run_status": run.status,
        },
    )
    return RecordResult(
        "recorded",
        run_id,
        chunk_id,
        n_rows,
        anomalies,
        len(sensor_errors),
        run_status=run.status,
    )


PREDICTION_ROW = (
    "run_id",
    "chunk_id",
    "device",
    "sensor",
    "bucket_start",
    "count",
    "mean",
    "min",
    "max",
    "std",
    "score",
    "is_anomaly",
    "model_version",
    # ---- explanations (scoring.explain): optional in the file, null when absent
    *EXPLANATION_COLUMNS,
)


def _refuse(ctx: AppContext, run_id: str, chunk_id: str, reason: str) -> RecordResult:
    """A failed delivery: fail the chunk with ``reason`` unless it is already recorded, in
    which case its rows, status and counts stay as they are (the refusal is logged)."""
    context = {"run_id": run_id, "chunk_id": chunk_id, "reason": reason[:MAX_REASON]}
    failed = fail_chunks(ctx, run_id, [chunk_id], reason)
    run = records.get_run(ctx.engine, run_id)
    status = run.status if run else None
    if failed:
        log.warning("predictions file refused; chunk failed", extra=context)
        return RecordResult("failed_chunk", run_id, chunk_id, reason=reason, run_status=status)
    log.warning("predictions file refused; the chunk's recorded rows are kept", extra=context)
    return RecordResult("refused", run_id, chunk_id, reason=reason, run_status=status)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:500] if text else ''}"


def _storage_read(read, what: str):
    """``read()`` of a blob: a missing blob is the delivery's problem (refused); any other
    storage failure (unreachable, throttled, forbidden) is the moment's and is raised."""
    try:
        return read()
    except ResourceNotFoundError:
        raise DeliveryRefused(f"{what} not found") from None


def _check_delivery(ctx: AppContext, run: records.Run, chunk, data: bytes) -> Delivery:
    """Parse and check a predictions file against its chunk (see the module docstring).

    Raises :class:`DeliveryRefused` with the reason for anything no retry can fix; storage and
    SQL faults propagate.
    """
    try:
        file = _parquet(data)
        schema = file.schema_arrow
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise DeliveryRefused(f"unreadable predictions file: {_describe(exc)}") from None
    metadata = schema.metadata or {}
    declared = metadata.get(META_CHUNK_ID)
    if declared is None:
        raise DeliveryRefused("predictions file refused: no scoring.chunk_id metadata")
    if declared != chunk.chunk_id.encode():
        raise DeliveryRefused(
            "predictions file refused: it is chunk "
            f"{declared.decode('utf-8', 'replace')[:80]!r}'s file, not {chunk.chunk_id!r}'s"
        )
    chunk_error = metadata.get(META_CHUNK_ERROR)
    if chunk_error:
        raise DeliveryRefused(
            "the scoring step could not score the chunk: "
            + chunk_error.decode("utf-8", "replace")[:MAX_REASON]
        )
    try:
        n_errors = int(metadata.get(META_ERRORS, b"0") or 0)
        if n_errors < 0:
            raise ValueError("negative")
    except ValueError:
        raise DeliveryRefused(
            f"predictions file refused: scoring.errors is {metadata.get(META_ERRORS)!r}, "
            "not a count"
        ) from None
    missing = [c for c in PREDICTION_COLUMNS if c not in schema.names]
    if missing:
        raise DeliveryRefused(f"unreadable predictions file: lacks column(s) {', '.join(missing)}")
    explained = [name for name in EXPLANATION_COLUMNS if name in schema.names]
    # The chunk's keys first, as sorted integer codes; then the file a slice at a time: each
    # slice's columns are checked and its keys must be the chunk's, and only the keys' codes
    # (4 or 8 bytes a row) are kept for the whole-file checks (issue 12: the file's columns are
    # never decoded whole).
    space, expected_keys = _chunk_keys(ctx, run, chunk)
    file_keys = np.empty(file.metadata.num_rows, dtype=space.dtype)
    anomalies, at = 0, 0
    for part in _slices(file, [*PREDICTION_COLUMNS, *explained]):
        columns = {name: _typed_column(part, name) for name in PREDICTION_COLUMNS}
        _explanation_columns(part)  # explanations: optional, checked (JSON objects)
        score = columns["score"]
        inside = pc.and_(pc.greater_equal(score, 0.0), pc.less_equal(score, 1.0))
        if (pc.sum(pc.invert(inside)).as_py() or 0) or pc.any(pc.is_nan(score)).as_py():
            raise DeliveryRefused("predictions file refused: score outside [0, 1] (or NaN)")
        anomalies += int(pc.sum(columns["is_anomaly"].cast(pa.int64())).as_py() or 0)
        columns["bucket_us"] = columns["bucket_start"].cast(pa.int64())
        keys = space.encode(columns)
        foreign = ~_contained(keys, expected_keys)
        if foreign.any():
            raise DeliveryRefused(
                f"predictions file refused: {int(foreign.sum())} of rows {at + 1}-{at + len(keys)} "
                f"are not buckets of this chunk's sensors in the run's window with their model "
                f"version, e.g. "
                f"{_key_text(columns, np.argmax(foreign))}"
            )
        file_keys[at : at + len(keys)] = keys
        at += len(keys)
    if at != len(file_keys):
        raise DeliveryRefused(
            f"unreadable predictions file: {at} rows read, its footer says {len(file_keys)}"
        )
    pa.default_memory_pool().release_unused()

    # Every key is now one of the chunk's, whose (device, sensor, bucket) has one model
    # version: a key twice is a (device, sensor, bucket) twice.
    file_keys.sort()
    repeated = file_keys[1:] == file_keys[:-1]
    if repeated.any():
        first = repeated & ~np.concatenate([[False], repeated[:-1]])  # first repeat of each key
        raise DeliveryRefused(
            f"predictions file refused: {int(first.sum())} (device, sensor, bucket) key(s) "
            f"appear more than once, e.g. {space.text(file_keys[np.argmax(repeated)])}"
        )
    del repeated
    sensor_errors = _sensor_errors(ctx, chunk, n_errors, space.sensor_names(expected_keys))
    failed = np.unique(
        space.sensors(
            pa.array([d for d, _, _, _ in sensor_errors], pa.string()),
            pa.array([s for _, s, _, _ in sensor_errors], pa.string()),
        )
    )
    # A sensor's keys are one range of codes (see _KeySpace): its rows are found by bisection.
    scored = space.ranges(file_keys, failed)
    if scored.size:
        raise DeliveryRefused(
            "predictions file refused: it has rows of sensors its errors file lists as "
            f"failed, e.g. {space.text(file_keys[scored[0]])}"
        )
    # The file's keys are distinct keys of the chunk, none of a failed sensor: every other key
    # of the chunk is in the file exactly when the counts agree (so the common case allocates
    # nothing more); otherwise find the missing ones to name one.
    excused = space.ranges(expected_keys, failed)
    if len(file_keys) != len(expected_keys) - len(excused):
        absent = ~_contained(expected_keys, file_keys)
        absent[excused] = False
    else:
        absent = np.zeros(0, dtype=bool)
    if absent.any():
        raise DeliveryRefused(
            f"predictions file refused: {int(absent.sum())} in-window bucket(s) of the chunk's "
            f"sensors are neither predicted nor listed as failed (a truncated or partial "
            f"file?), e.g. {space.text(expected_keys[np.argmax(absent)])}"
        )
    return Delivery(data, len(file_keys), anomalies, sensor_errors)


CHECK_SLICE_ROWS = 50_000
"""Rows of a predictions file checked at a time (every column of a slice decoded: ~5 MB)."""


def _slices(
    file: pq.ParquetFile,
    names: list[str],
    rows: int = CHECK_SLICE_ROWS,
    unreadable: str = "unreadable predictions file",
) -> Iterator[pa.Table]:
    """The file's ``names`` columns, ``rows`` at a time; a damaged page is a bad file
    (:class:`DeliveryRefused`, its reason ``unreadable``: why)."""
    batches = file.iter_batches(batch_size=rows, columns=names, use_threads=False)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except AzureError:
            raise  # a ranged read of a blob failed (see shared.blobs.RangedBlob): the moment's
        except Exception as exc:  # noqa: BLE001 - a damaged page is a bad file
            raise DeliveryRefused(f"{unreadable}: {_describe(exc)}") from None
        yield pa.Table.from_batches([batch])


def _parquet(data: bytes) -> pq.ParquetFile:
    """The file over its bytes (zero-copy); names as dictionaries (see _typed_column)."""
    return pq.ParquetFile(
        pa.BufferReader(data),
        read_dictionary=["device", "sensor"],
        pre_buffer=False,  # the bytes are in memory: no read-ahead copy (~15 MiB at 1.4 M rows)
    )


def _stored_rows(part: pa.Table) -> pa.Table:
    """A checked file's rows (a slice of them) as stored: the columns of ``PREDICTION_ROW``
    after run_id and chunk_id, in their stored types, bucket_start naive UTC."""
    columns = {name: _typed_column(part, name) for name in PREDICTION_COLUMNS}
    columns.update(_explanation_columns(part, check=False))
    columns["bucket_start"] = columns["bucket_start"].cast(pa.timestamp("us"))
    return pa.table({name: columns[name] for name in PREDICTION_ROW[2:]})


_STRINGS = (pa.types.is_string, pa.types.is_large_string)


def _typed_column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """Column ``name`` in its canonical type, or :class:`DeliveryRefused` with the reason.

    Only lossless conversions are made (a dictionary of strings to strings, any integer width
    to int64, float32 to float64, any timestamp unit to microseconds); a string where a number
    or a boolean belongs, a float where an integer belongs, or a null in a key, count, score or
    flag is refused: stored as it is, the engines would each read it differently. Device and
    sensor names read as a dictionary stay one (int32 codes of a few distinct names, not a
    string per row: ~50 MB less at 1.4 M rows).
    """
    column = table.column(name)
    kind = column.type
    names = name in ("device", "sensor")
    encoded = pa.types.is_dictionary(kind) and names
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
        column = column if encoded else column.cast(kind)
    nullable = name in ("mean", "min", "max", "std")
    try:
        if names:
            ok = any(test(kind) for test in _STRINGS)
            target = pa.dictionary(pa.int32(), pa.string()) if encoded else pa.string()
        elif name == "bucket_start":
            ok = pa.types.is_timestamp(kind)
            target = pa.timestamp("us", tz=kind.tz) if ok else None
        elif name in ("count", "model_version"):
            ok = pa.types.is_integer(kind)
            target = pa.int64()
        elif name == "is_anomaly":
            ok = pa.types.is_boolean(kind)
            target = pa.bool_()
        elif name == "score":
            ok = pa.types.is_floating(kind)
            target = pa.float64()
        else:  # aggregates: numbers, nulls allowed
            ok = pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind)
            target = pa.float64()
        if not ok:
            raise DeliveryRefused(
                f"predictions file refused: column {name} is {column.type}, "
                f"not {target or 'a timestamp'}"
            )
        column = column.cast(target)  # safe cast: raises rather than lose a value
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError) as exc:
        raise DeliveryRefused(
            f"predictions file refused: column {name} cannot be read as {target}: {_describe(exc)}"
        ) from None
    if not nullable and column.null_count:
        raise DeliveryRefused(
            f"predictions file refused: {column.null_count} null value(s) in column {name}"
        )
    return column


MAX_EXPLANATION = 8000
"""Longest explanation stored (the scoring step writes ~600 characters)."""


def _explanation_columns(table: pa.Table, check: bool = True) -> dict[str, pa.ChunkedArray]:
    """The explanation columns (:data:`scoring.features.EXPLANATION_COLUMNS`) in their stored
    types: all null when the file has none (an older scoring step); bands as float64 with
    NaN/inf as null (SQL Server stores neither); each explanation a JSON object, else the file
    is refused (only flagged rows have one, so the check costs little; ``check=False`` for a
    file already checked)."""
    out = {}
    for name in EXPLANATION_COLUMNS:
        if name not in table.column_names and check:
            continue  # checking a column read alone: nothing to check for the others
        if name not in table.column_names:
            out[name] = pa.chunked_array(
                [pa.nulls(table.num_rows, pa.string() if name == "explanation" else pa.float64())]
            )
            continue
        column = table.column(name)
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if name == "explanation":
            ok = any(test(kind) for test in _STRINGS) or pa.types.is_null(kind)
            target = pa.string()
        else:
            ok = pa.types.is_floating(kind) or pa.types.is_null(kind)
            target = pa.float64()
        if not ok:
            raise DeliveryRefused(
                f"predictions file refused: column {name} is {column.type}, not {target}"
            )
        column = column.cast(target)
        if name != "explanation":
            out[name] = pc.if_else(pc.is_finite(column), column, pa.scalar(None, pa.float64()))
            continue
        for text in column.drop_null().to_pylist() if check else ():
            if len(text) > MAX_EXPLANATION:
                raise DeliveryRefused(
                    f"predictions file refused: an explanation is longer than {MAX_EXPLANATION} "
                    "characters"
                )
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise DeliveryRefused(
                    f"predictions file refused: explanation {text[:80]!r} is not a JSON object"
                )
        out[name] = column
    return out


def _distinct(values: pa.ChunkedArray) -> pa.Array:
    """The distinct values of a column (of a dictionary column: its distinct decoded values)."""
    found = pc.unique(values)
    if pa.types.is_dictionary(found.type):
        found = found.cast(found.type.value_type)
    return found


class _KeySpace:
    """Integer codes of (device, sensor, bucket, model version) keys: positions among the chunk
    file's distinct values, combined in one integer (at most sensors x buckets x versions of
    the chunk: int32 when that fits, as for a chunk of 1,000 sensors x 24 h, else int64); a key
    with any value not in the chunk file is -1.

    The sensor is the key's leading part, so a sensor's keys are one range of codes,
    ``[sensor * span, (sensor + 1) * span)``: in sorted keys, bisection finds them."""

    NAMES = ("device", "sensor", "bucket_us", "model_version")

    def __init__(self, values: dict[str, pa.Array]):
        """``values``: the distinct values of each of :attr:`NAMES` (names as strings)."""
        self.values = {name: values[name] for name in self.NAMES}
        self.sizes = [len(self.values[name]) for name in self.NAMES]
        self.span = self.sizes[2] * self.sizes[3]
        keys = self.span * self.sizes[0] * self.sizes[1]
        self.dtype = np.int32 if keys < np.iinfo(np.int32).max else np.int64

    def _code(self, name: str, column) -> np.ndarray:
        found = pc.index_in(column, value_set=self.values[name])
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def encode(self, columns) -> np.ndarray:
        key = np.zeros(len(columns["device"]), dtype=np.int64)
        unknown = np.zeros(len(key), dtype=bool)
        for name, size in zip(self.NAMES, self.sizes, strict=True):
            code = self._code(name, columns[name])
            unknown |= code < 0
            key *= size
            key += code
        key[unknown] = -1
        return key.astype(self.dtype, copy=False)

    def decode(self, key: int) -> dict:
        """The (device, sensor, bucket_us, model_version) values of one key, as one-row arrays."""
        codes = []
        for size in reversed(self.sizes):
            key, code = divmod(int(key), size)
            codes.append(code)
        return {
            name: self.values[name].take(pa.array([code]))
            for name, code in zip(self.NAMES, reversed(codes), strict=True)
        }

    def text(self, key: int) -> str:
        return _key_text(self.decode(key), 0)

    def sensors(self, devices: pa.Array, sensors: pa.Array) -> np.ndarray:
        """The sensor part of the key (see :meth:`sensor_names`) of each (device, sensor); -1
        for a pair with a name the chunk does not have."""
        device, sensor = self._code("device", devices), self._code("sensor", sensors)
        return np.where((device < 0) | (sensor < 0), -1, device * self.sizes[1] + sensor)

    def sensor_names(self, sorted_keys: np.ndarray) -> set[tuple[str, str]]:
        """The (device, sensor) names of the sensors with a key in ``sorted_keys``."""
        codes = np.unique(sorted_keys[sorted_keys >= 0] // self.span)
        devices = self.values["device"].take(pa.array(codes // self.sizes[1])).to_pylist()
        names = self.values["sensor"].take(pa.array(codes % self.sizes[1])).to_pylist()
        return set(zip(devices, names, strict=True))

    def ranges(self, sorted_keys: np.ndarray, sensors: np.ndarray) -> np.ndarray:
        """Positions in ``sorted_keys`` of the keys of ``sensors`` (sensor parts; -1 is none)."""
        sensors = sensors[sensors >= 0]
        lo = np.searchsorted(sorted_keys, sensors * self.span)
        hi = np.searchsorted(sorted_keys, (sensors + 1) * self.span)
        return np.concatenate(
            [np.arange(a, b) for a, b in zip(lo, hi, strict=True)] or [[]]
        ).astype(np.int64)


def _contained(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in ``sorted_keys`` (-1, an unknown key, never is)."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return (sorted_keys[at] == keys) & (keys >= 0)


def _key_text(source, at) -> str:
    """The key of row ``at`` of ``source`` (a table or a dict of columns with device, sensor,
    model_version and bucket_us or bucket_start), as text."""
    at = int(at)
    names = source.column_names if isinstance(source, pa.Table) else list(source)
    row = {
        name: source[name][at].as_py()
        for name in ("device", "sensor", "bucket_us", "model_version")
        if name in names
    }
    if "bucket_start" in names:
        row["bucket_us"] = source["bucket_start"].slice(at, 1).cast(pa.int64())[0].as_py()
    text = f"{row.get('device')!s:.80}/{row.get('sensor')!s:.80}"
    if row.get("bucket_us") is not None:
        text += f" at {np.datetime64(int(row['bucket_us']), 'us')}"
    if row.get("model_version") is not None:
        text += f" (model version {row['model_version']})"
    return text


def _chunk_keys(ctx: AppContext, run: records.Run, chunk) -> tuple[_KeySpace, np.ndarray]:
    """The key space of the chunk file's in-window rows and their keys, sorted.

    Read in two passes of ``CHECK_SLICE_ROWS`` rows over the file's key columns (the distinct
    values, then the codes), fetched once by ranged reads (the second pass reads what the
    first kept): only those columns' bytes and 4-8 bytes a row are held."""
    settings = ctx.settings
    what = f"chunk file {chunk.blob_path} (needed to check the predictions)"
    source = _storage_read(
        lambda: ctx.store.open(settings.chunks_container, chunk.blob_path, keep=True), what
    )
    epoch = np.datetime64(0, "us")
    start = int((np.datetime64(run.window.start, "us") - epoch).astype(np.int64))
    end = int((np.datetime64(run.window.end, "us") - epoch).astype(np.int64))
    unreadable = f"the chunk file {chunk.blob_path} cannot be read to check the predictions"
    try:
        # Ranged reads of the footer and the key columns only: the chunk's aggregates (most of
        # its bytes) are neither downloaded nor held.
        file = pq.ParquetFile(source, read_dictionary=["device", "sensor"], pre_buffer=False)
        bucket_type = file.schema_arrow.field("bucket_start").type
        if not pa.types.is_timestamp(bucket_type):
            raise ValueError(f"bucket_start is {bucket_type}")
        context = CONTEXT_COLUMN in file.schema_arrow.names
        names = ["device", "sensor", "bucket_start", "model_version"]

        def in_window() -> Iterator[dict[str, pa.ChunkedArray]]:
            """The chunk's in-window keys (not its context rows), a slice at a time."""
            columns = names + ([CONTEXT_COLUMN] if context else [])
            for part in _slices(file, columns, unreadable=unreadable):
                bucket = part.column("bucket_start").cast(pa.timestamp("us", tz=bucket_type.tz))
                bucket_us = bucket.cast(pa.int64())
                keep = pc.and_(pc.greater_equal(bucket_us, start), pc.less(bucket_us, end))
                if context:
                    scored = pc.invert(part.column(CONTEXT_COLUMN).cast(pa.bool_()))
                    keep = pc.and_(keep, scored.fill_null(True))
                yield {
                    "device": pc.filter(part.column("device"), keep),
                    "sensor": pc.filter(part.column("sensor"), keep),
                    "bucket_us": pc.filter(bucket_us, keep),
                    "model_version": pc.filter(part.column("model_version"), keep).cast(pa.int64()),
                }

        seen: dict[str, list[pa.Array]] = {name: [] for name in _KeySpace.NAMES}
        for part in in_window():
            for name in _KeySpace.NAMES:
                seen[name].append(_distinct(part[name]))
        kinds = {"device": pa.string(), "sensor": pa.string()}
        space = _KeySpace(
            {
                name: pc.unique(pa.chunked_array(found, kinds.get(name, pa.int64())))
                for name, found in seen.items()
            }
        )
        keys = np.empty(file.metadata.num_rows, dtype=space.dtype)
        at = 0
        for part in in_window():
            found = space.encode(part)
            keys[at : at + len(found)] = found
            at += len(found)
        keys = keys[:at]
    except DeliveryRefused:
        raise  # a damaged page (see _slices), with its reason
    except ResourceNotFoundError:
        raise DeliveryRefused(f"{what} not found") from None
    except AzureError:
        raise  # storage unreachable, or the chunk file rewritten while read: retry
    except Exception as exc:  # noqa: BLE001 - the chunk file itself is damaged
        raise DeliveryRefused(f"{unreadable}: {_describe(exc)}") from None
    keys.sort()
    if len(keys) > 1 and (keys[1:] == keys[:-1]).any():  # a bucket listed twice: once is enough
        keys = np.unique(keys)
    return space, keys


def _sensor_errors(
    ctx: AppContext, chunk, n_errors: int, sensors: set[tuple[str, str]]
) -> list[tuple[str | None, str | None, str, str]]:
    """The errors file's rows (``n_errors`` of them, each one of the chunk's ``sensors``)."""
    if not n_errors:
        return []
    container = ctx.settings.predictions_container
    name = errors_blob(chunk.run_id, chunk.chunk_id)
    if not ctx.store.exists(container, name):
        raise ErrorsFileMissing(f"{name} not found although {n_errors} sensor(s) failed; retrying")
    data = _storage_read(lambda: ctx.store.download(container, name), f"errors file {name}")
    try:
        errors = pq.read_table(io.BytesIO(data))
        cols = [errors.column(c).cast(pa.string()).to_pylist() for c in ERROR_COLUMNS]
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise DeliveryRefused(f"unreadable errors file {name}: {_describe(exc)}") from None
    listed = list(zip(*cols, strict=True))
    if len(listed) != n_errors:
        raise DeliveryRefused(
            f"errors file {name} lists {len(listed)} sensor(s), the predictions file says "
            f"{n_errors}"
        )
    strangers = [(d, s) for d, s, _ in listed if (d, s) not in sensors]
    if strangers:
        d, s = strangers[0]
        raise DeliveryRefused(
            f"errors file {name} lists {len(strangers)} sensor(s) that are not the chunk's, "
            f"e.g. {d!s:.80}/{s!s:.80}"
        )
    if len({(d, s) for d, s, _ in listed}) != len(listed):
        raise DeliveryRefused(f"errors file {name} lists a sensor twice")
    return [(d, s, KIND_SENSOR, str(r or "")[:MAX_REASON]) for d, s, r in listed]


def _replace_errors(conn, run_id: str, chunk_id: str, errors: Sequence[tuple]) -> None:
    conn.execute(
        delete(run_errors).where(
            and_(
                run_errors.c.run_id == run_id,
                run_errors.c.chunk_id == chunk_id,
                run_errors.c.kind.in_([KIND_SENSOR, KIND_CHUNK, KIND_FOREIGN]),
            )
        )
    )
    if errors:
        conn.execute(
            insert(run_errors),
            [
                {
                    "run_id": run_id,
                    "chunk_id": chunk_id,
                    "device": d,
                    "sensor": s,
                    "kind": k,
                    "reason": str(r)[:MAX_REASON],
                }
                for d, s, k, r in errors
            ],
        )


def fail_chunks(ctx: AppContext, run_id: str, chunk_ids: Sequence[str], reason: str) -> list[str]:
    """Mark chunks failed (with a run error each) and recount the run; returns the ids failed.

    A chunk already recorded is left as it is, rows, errors and status: it has its result, and
    a bad redelivery or a late give-up must not take it away. A chunk that is not recorded has
    no predictions rows (recording writes them and the status in one transaction), so there is
    nothing to delete.
    """
    failed = []
    with ctx.engine.begin() as conn:
        for chunk_id in chunk_ids:
            result = conn.execute(
                update(run_chunks)
                .where(
                    run_chunks.c.run_id == run_id,
                    run_chunks.c.chunk_id == chunk_id,
                    run_chunks.c.status != records.CHUNK_RECORDED,
                )
                .values(
                    status=records.CHUNK_FAILED, error=reason[:MAX_REASON], recorded_at=utcnow()
                ),
                execution_options={"preserve_rowcount": True},
            )
            if result.rowcount == 1:
                _replace_errors(conn, run_id, chunk_id, [(None, None, KIND_CHUNK, reason)])
                failed.append(chunk_id)
        if failed:
            records.refresh_counts(conn, run_id)
    return failed


def json_summary(result: RecordResult) -> str:
    return json.dumps(result.__dict__)
