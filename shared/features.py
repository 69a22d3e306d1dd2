"""Per device/sensor/bucket features, read from SQL.

The feature *definition* lives in ``scoring.features`` (names and meaning, shared with the
scoring step and training). This module is its SQL side: the buckets of a half-open window
``[start, end)``, aligned to the epoch so that the same bucket has the same start whatever
window asks for it, read from the per-bucket aggregates kept as readings arrive
(``shared.aggregates``): one row per sensor and bucket, however often sensors report. Only a
bucket that the window cuts in two is grouped from raw readings.

SQL returns count, mean, min, max and the mean of squares (sum_sq / count); the population
standard deviation is derived from the last two in numpy. SQLite has no STDEV function, and
this keeps one portable query; in float64 the cancellation error is ~1e-16 * mean^2, far below
any spread that matters (a stuck sensor still comes out at std ~1e-6 of its level, not 0.3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
from sqlalchemy import Connection, Float, Text, and_, cast, func, literal, or_, select, union_all
from sqlalchemy.dialects.postgresql import aggregate_order_by

from scoring.features import AGGREGATES
from shared.aggregates import check_width
from shared.db.dialects import binary_ordered, bucket_index
from shared.db.schema import bucket_aggregates, readings

EPOCH = datetime(1970, 1, 1)
# Sensor filters up to this long are sent as a list (2 parameters each); longer ones as the range
# they span, filtered after the query (see features_query).
MAX_LISTED_SENSORS = 500
# Rows read from SQL per partition when streaming (stream_features): ~75 bytes each in Arrow,
# ~600 as the driver's Python rows, so ~30 MiB transient per partition.
STREAM_ROWS = 50_000


def features_query(
    start: datetime,
    end: datetime,
    bucket_seconds: int,
    devices: Sequence[str] | None = None,
    sensors: Sequence[tuple[str, str]] | None = None,
):
    """The features statement for ``[start, end)``, optionally for some devices/sensors.

    Whole buckets come from ``bucket_aggregates`` (one row per sensor and bucket, mean =
    sum / count, mean of squares = sum_sq / count); a bucket the window cuts (an on-demand
    window not aligned to ``bucket_seconds``) is grouped from the readings inside the window,
    as before, so the result is the raw aggregation's. Columns: device, sensor, bucket (index),
    count, mean, min, max, mean_sq; ordered by device, sensor, bucket.
    """
    w = int(bucket_seconds)
    start, end = _naive_utc(start), _naive_utc(end)
    first = _bucket_ceil(start, w)  # start of the first whole bucket
    last = bucket_floor(end, w)  # end of the last whole bucket
    parts = []
    if first <= last:
        if first < last:
            parts.append(_from_aggregates(first, last, w, devices, sensors))
        if start < first:
            parts.append(_from_readings(start, first, w, devices, sensors))
        if last < end:
            parts.append(_from_readings(last, end, w, devices, sensors))
    if not parts:  # within one bucket, or empty
        parts.append(_from_readings(start, end, w, devices, sensors))
    if len(parts) == 1:
        query = parts[0]
        return query.order_by(*(query.selected_columns[c] for c in ("device", "sensor", "bucket")))
    # The parts hold different buckets, so a UNION ALL needs no merging; order by position
    # names the columns the way every engine accepts for a compound select.
    union = union_all(*parts)
    return union.order_by(*(union.selected_columns[c] for c in ("device", "sensor", "bucket")))


def _naive_utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is None else ts.astimezone(UTC).replace(tzinfo=None)


def _bucket_ceil(ts: datetime, bucket_seconds: int) -> datetime:
    floor = bucket_floor(ts, bucket_seconds)
    return floor if floor == ts else floor + timedelta(seconds=bucket_seconds)


def _from_aggregates(start, end, bucket_seconds, devices, sensors):
    """Whole buckets in ``[start, end)`` (both bucket-aligned) from ``bucket_aggregates``."""
    a = bucket_aggregates
    count = cast(a.c["count"], Float())
    query = select(
        a.c.device,
        a.c.sensor,
        bucket_index(a.c.bucket_start, bucket_seconds).label("bucket"),
        a.c["count"].label("count"),
        (a.c["sum"] / count).label("mean"),
        a.c["min"].label("min"),
        a.c["max"].label("max"),
        (a.c.sum_sq / count).label("mean_sq"),
    ).where(
        a.c.bucket_seconds == int(bucket_seconds),
        a.c.bucket_start >= start,
        a.c.bucket_start < end,
    )
    return _filtered(query, a.c.device, a.c.sensor, devices, sensors)


def _from_readings(start, end, bucket_seconds, devices, sensors):
    """Buckets grouped from raw readings in ``[start, end)``: the cut edges of a window."""
    # GROUP BY repeats the expression, not the alias: SQL Server accepts only that form.
    bucket = bucket_index(readings.c.ts, bucket_seconds)
    value = cast(readings.c.value, Float())
    query = (
        select(
            readings.c.device,
            readings.c.sensor,
            bucket.label("bucket"),
            func.count().label("count"),
            func.avg(value).label("mean"),
            func.min(value).label("min"),
            func.max(value).label("max"),
            func.avg(value * value).label("mean_sq"),
        )
        .where(readings.c.ts >= start, readings.c.ts < end)
        .group_by(readings.c.device, readings.c.sensor, bucket)
    )
    return _filtered(query, readings.c.device, readings.c.sensor, devices, sensors)


def _filtered(query, device_column, sensor_column, devices, sensors):
    if devices:
        query = query.where(device_column.in_(list(devices)))
    if sensors and len(sensors) <= MAX_LISTED_SENSORS:
        query = query.where(
            or_(*(and_(device_column == d, sensor_column == s) for d, s in sensors))
        )
    elif sensors:
        # A long list (a training batch of thousands of sensors) becomes the (device, sensor)
        # range it spans, and aggregate_features drops the rows of sensors not in the list:
        # SQL Server takes at most 2100 parameters, and a 10,000-term OR is evaluated on every
        # row. Compared by code point, so Python's min and max bound it on every engine.
        query = query.where(sensor_range(device_column, sensor_column, sensors))
    return query


def sensor_range(device_column, sensor_column, sensors: Sequence[tuple[str, str]]):
    """A WHERE clause for the (device, sensor) range that ``sensors`` spans (any order),
    compared by code point on every engine; a few parameters whatever the list's length."""
    (d0, s0), (d1, s1) = min(map(tuple, sensors)), max(map(tuple, sensors))
    device, sensor = binary_ordered(device_column), binary_ordered(sensor_column)
    return and_(
        device >= d0,
        device <= d1,
        or_(device != d0, sensor >= s0),
        or_(device != d1, sensor <= s1),
    )


def aggregate_features(
    conn: Connection,
    start: datetime,
    end: datetime,
    bucket_seconds: int,
    devices: Sequence[str] | None = None,
    sensors: Sequence[tuple[str, str]] | None = None,
) -> pa.Table:
    """Features of every sensor with readings in ``[start, end)`` as an Arrow table.

    Columns: device, sensor, bucket_start (timestamp[us, UTC]), count, mean, min, max, std;
    sorted by device, sensor, bucket_start.
    """
    parts = list(stream_features(conn, start, end, bucket_seconds, devices, sensors))
    if not parts:
        return features_table([], bucket_seconds)
    return pa.concat_tables(parts).combine_chunks()


def stream_features(
    conn: Connection,
    start: datetime,
    end: datetime,
    bucket_seconds: int,
    devices: Sequence[str] | None = None,
    sensors: Sequence[tuple[str, str]] | None = None,
    batch_rows: int = STREAM_ROWS,
) -> Iterator[pa.Table]:
    """The rows of ``aggregate_features`` as Arrow tables of about ``batch_rows`` rows, each
    holding whole sensors (a sensor's rows are never split between two tables), in order.

    Read from a server-side cursor (``stream_results``) in partitions of ``batch_rows``: at no
    time does Python hold more than a partition of rows and the one sensor that straddles two
    partitions, whatever the window and the fleet. Drivers without server-side cursors (SQLite,
    pyodbc) step their cursor lazily, which bounds memory the same way.
    """
    check_width(conn, bucket_seconds)  # BUCKET_SECONDS changed: refuse, do not read partial
    query = features_query(start, end, bucket_seconds, devices, sensors)
    wanted = set(map(tuple, sensors)) if sensors and len(sensors) > MAX_LISTED_SENSORS else None
    pending: pa.Table | None = None
    for table in _partitions(conn, query, bucket_seconds, batch_rows):
        if wanted is not None:
            table = only_sensors(table, wanted)
        if pending is not None and pending.num_rows:
            table = pa.concat_tables([pending, table]).combine_chunks()
        bounds = sensor_bounds(table)[2]
        cut = (
            int(bounds[-2]) if len(bounds) > 1 else 0
        )  # where the last (maybe unfinished) sensor begins
        if cut:
            yield table.slice(0, cut)
        pending = table.slice(cut)
    if pending is not None and pending.num_rows:
        yield pending


def _partitions(
    conn: Connection, query, bucket_seconds: int, batch_rows: int
) -> Iterator[pa.Table]:
    """The query's rows as Arrow tables of ``batch_rows`` rows (the last one shorter)."""
    if conn.dialect.name == "postgresql":
        yield from _copy_partitions(conn, query, bucket_seconds, batch_rows)
        return
    result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(query)
    for rows in result.partitions():
        yield features_table(rows, bucket_seconds)


_QUERY_COLUMNS = ("device", "sensor", "bucket", "count", "mean", "min", "max", "mean_sq")
_CSV_TYPES = {
    "device": pa.string(),
    "sensor": pa.string(),
    "bucket": pa.int64(),
    "count": pa.int64(),
    **{name: pa.float64() for name in ("mean", "min", "max", "mean_sq")},
}


def _copy_partitions(
    conn: Connection, query, bucket_seconds: int, batch_rows: int
) -> Iterator[pa.Table]:
    """PostgreSQL: the query's rows as CSV text, one ``COPY`` row per sensor, parsed by Arrow.

    The driver's rows cost ~7 us each in Python (a tuple of eight objects, then columns again),
    and even COPY hands its data over one row at a time (libpq's PQgetCopyData, ~2.4 us a
    row). So the server aggregates each sensor's rows into one text of CSV lines
    (``_sensor_csv``), sent as one row of a binary ``COPY``; Python handles one row per sensor,
    and Arrow's CSV reader parses a partition's texts in one call (measured on 2.16 M rows:
    10.9 s with a COPY row per bucket, 7.5 s with one per sensor). Values are written by
    PostgreSQL's float8 output in its shortest exact form (``extra_float_digits`` 1, the default
    since version 12) and Arrow parses them to the same doubles, so the values are the
    driver's. Parameters are bound client-side by psycopg (COPY takes none).
    """
    import pyarrow.csv as pa_csv  # imported when PostgreSQL is used

    statement = _sensor_csv(query)
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    read_options = pa_csv.ReadOptions(column_names=list(_QUERY_COLUMNS), use_threads=False)
    convert_options = pa_csv.ConvertOptions(
        column_types=_CSV_TYPES, strings_can_be_null=False, quoted_strings_can_be_null=False
    )

    def parse(texts: list) -> pa.Table:
        csv = pa_csv.read_csv(
            pa.BufferReader(b"".join(texts)),
            read_options=read_options,
            convert_options=convert_options,
        )
        return _arrow_features(csv, bucket_seconds)

    cursor = conn.connection.dbapi_connection.cursor()
    try:
        with cursor.copy(f"COPY ({compiled}) TO STDOUT (FORMAT binary)", compiled.params) as copy:
            texts: list = []
            lines = 0
            for text in _binary_copy_texts(copy):  # one sensor's CSV lines each
                texts.append(text)
                lines += text.count(b"\n")
                if lines >= batch_rows:
                    yield parse(texts)
                    texts, lines = [], 0
            if texts:
                yield parse(texts)
    finally:
        cursor.close()


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _binary_copy_texts(copy) -> Iterator[bytes]:
    """The one text field of each row of a binary ``COPY ... TO STDOUT`` (PostgreSQL's format:
    a signature, flags and header extension, then per row a 16-bit field count and a 32-bit
    length before the field's bytes, and -1 as the field count at the end)."""
    buffer = b""
    header, ended = True, False
    for message in copy:  # libpq's CopyData messages: a row each, the header with the first
        if ended:
            continue  # nothing follows the end; read on so that the COPY completes
        buffer = buffer + bytes(message) if buffer else bytes(message)
        at = 0
        if header:
            if len(buffer) < 19:
                continue
            if not buffer.startswith(_COPY_SIGNATURE):
                raise ValueError("not a binary COPY stream")
            at = 19 + int.from_bytes(buffer[15:19], "big")  # header extension length
            header = False
        while len(buffer) - at >= 2:
            fields = int.from_bytes(buffer[at : at + 2], "big", signed=True)
            if fields == -1:
                ended, at = True, len(buffer)
                break
            if fields != 1:
                raise ValueError(f"a binary COPY row of {fields} fields, expected 1")
            if len(buffer) - at < 6:
                break
            size = int.from_bytes(buffer[at + 2 : at + 6], "big", signed=True)
            if size < 0:
                raise ValueError("a null sensor text in a binary COPY")
            if len(buffer) - at < 6 + size:
                break
            yield buffer[at + 6 : at + 6 + size]
            at += 6 + size
        buffer = buffer[at:]


def _sensor_csv(query):
    """``query`` (the features statement, ordered by device, sensor and bucket) as one row per
    sensor, in the same order: the text of its rows as CSV lines (``_QUERY_COLUMNS``; ids
    quoted, a null as an empty field), each ending in a newline."""
    rows = query.order_by(None).subquery("f")

    def quoted(column):
        return literal('"') + func.replace(column, '"', '""') + literal('"')

    def number(column):
        return func.coalesce(cast(column, Text()), literal(""))

    fields = [quoted(rows.c.device), quoted(rows.c.sensor)]
    fields += [number(rows.c[name]) for name in _QUERY_COLUMNS[2:]]
    line = fields[0]
    for field in fields[1:]:
        line = line + literal(",") + field
    # The ORDER BY goes with the last argument: string_agg(value, delimiter ORDER BY bucket).
    text = func.string_agg(line + literal("\n"), aggregate_order_by(literal(""), rows.c.bucket))
    return (
        select(text).group_by(rows.c.device, rows.c.sensor).order_by(rows.c.device, rows.c.sensor)
    )


def _arrow_features(csv: pa.Table, bucket_seconds: int) -> pa.Table:
    """The features of the query's columns in Arrow (device, sensor, bucket index, count, mean,
    min, max, mean of squares): bucket starts from the index, std from the mean of squares."""
    mean = csv.column("mean").to_numpy()
    var = csv.column("mean_sq").to_numpy() - mean * mean
    starts = csv.column("bucket").to_numpy() * int(bucket_seconds) * 1_000_000
    columns = {
        "device": csv.column("device").combine_chunks(),
        "sensor": csv.column("sensor").combine_chunks(),
        "bucket_start": pa.array(starts, pa.timestamp("us", tz="UTC")),
        "count": csv.column("count").combine_chunks(),
        "mean": pa.array(mean),
        "min": csv.column("min").combine_chunks(),
        "max": csv.column("max").combine_chunks(),
        "std": pa.array(np.sqrt(np.clip(var, 0.0, None))),
    }
    return pa.table(
        {name: columns[name] for name in ("device", "sensor", "bucket_start", *AGGREGATES)}
    )


def sensor_bounds(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Device and sensor of each row, and the row bounds of each sensor, in a table sorted by
    (device, sensor): sensor i holds rows ``bounds[i]:bounds[i + 1]``."""
    devices = table.column("device").to_numpy(zero_copy_only=False)
    sensors = table.column("sensor").to_numpy(zero_copy_only=False)
    if len(devices) == 0:
        return devices, sensors, np.array([0])
    change = np.flatnonzero((devices[1:] != devices[:-1]) | (sensors[1:] != sensors[:-1])) + 1
    return devices, sensors, np.concatenate([[0], change, [len(devices)]])


def only_sensors(table: pa.Table, wanted: set[tuple[str, str]]) -> pa.Table:
    """The rows of the sensors in ``wanted`` (a table sorted by device and sensor)."""
    devices, sensors, bounds = sensor_bounds(table)
    keep = np.zeros(table.num_rows, dtype=bool)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if (devices[a], sensors[a]) in wanted:
            keep[a:b] = True
    return table if keep.all() else table.filter(pa.array(keep))


def features_table(rows: Sequence[tuple], bucket_seconds: int) -> pa.Table:
    """Arrow table from (device, sensor, bucket, count, mean, min, max, mean_sq) rows."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(_QUERY_COLUMNS)
    query = {}
    for name, values in zip(_QUERY_COLUMNS, columns, strict=True):
        kind = _CSV_TYPES[name]
        # Numbers through numpy: drivers may hand integers as floats or decimals.
        query[name] = (
            pa.array(values, kind)
            if kind == pa.string()
            else pa.array(np.asarray(values, dtype=kind.to_pandas_dtype()))
        )
    return _arrow_features(pa.table(query), bucket_seconds)


def bucket_floor(ts: datetime, bucket_seconds: int) -> datetime:
    """The start of the bucket holding ``ts`` (naive UTC)."""
    seconds = int((ts - EPOCH).total_seconds()) // bucket_seconds * bucket_seconds
    return EPOCH + timedelta(seconds=seconds)
