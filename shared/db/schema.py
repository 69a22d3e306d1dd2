"""The SQL schema, in SQLAlchemy Core: one place for every table the app uses.

Timestamps are naive UTC everywhere (``DATETIME2(6)`` on SQL Server, ``timestamp`` on PostgreSQL,
ISO text on SQLite), all with microseconds; the code converts at the edges. Every timestamp
column uses :data:`Timestamp`: plain ``DateTime`` compiles to ``DATETIME`` on SQL Server, which
rounds to 1/300 s, so a redelivered reading with sub-second time would no longer equal its
stored copy and its insert would violate the key. Identifiers (device, sensor) are bounded
strings validated on ingestion, because they later become blob path segments.

Schema changes go through Alembic (``shared/db/migrations``); a test checks that the migrations
produce exactly this metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.dialects import mssql

ID_LENGTH = 64

# The one timestamp type: microsecond DATETIME2 on SQL Server, the dialect's default elsewhere.
# (A with_variant of DateTime, not a TypeDecorator, so code that checks isinstance(DateTime) and
# the migrations' autogenerate comparison see a plain DateTime.)
Timestamp = DateTime().with_variant(mssql.DATETIME2(precision=6), "mssql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _id(name: str, nullable: bool = False) -> Column:
    return Column(name, String(ID_LENGTH), nullable=nullable)


# Raw readings. The key leads with ts: the scheduled run and training both read a time range for
# many sensors, and ingestion appends in time order, so one clustered B-tree serves inserts,
# window scans and the duplicate check (SQLite: WITHOUT ROWID; SQL Server: clustered PK).
readings = Table(
    "readings",
    metadata,
    Column("ts", Timestamp, nullable=False),
    _id("device"),
    _id("sensor"),
    Column("value", Float(), nullable=False),
    PrimaryKeyConstraint("ts", "device", "sensor", name="pk_readings"),
    sqlite_with_rowid=False,
)

# Per-bucket aggregates of readings, kept as readings arrive (shared.aggregates): runs and
# training read one row per sensor and bucket instead of grouping raw readings. Only readings
# actually inserted feed them, so a redelivered reading is counted once; a late reading updates
# its bucket's row. Mean and std derive from count, sum and sum_sq (population std). Each row
# records its bucket width: rows of another BUCKET_SECONDS are never mixed in.
bucket_aggregates = Table(
    "bucket_aggregates",
    metadata,
    Column("bucket_seconds", Integer(), nullable=False),
    Column("bucket_start", Timestamp, nullable=False),
    _id("device"),
    _id("sensor"),
    Column("count", Integer(), nullable=False),
    Column("sum", Float(), nullable=False),
    Column("min", Float(), nullable=False),
    Column("max", Float(), nullable=False),
    Column("sum_sq", Float(), nullable=False),
    # Like readings: windows are time ranges over many sensors, ingestion appends in time order.
    PrimaryKeyConstraint(
        "bucket_seconds", "bucket_start", "device", "sensor", name="pk_bucket_aggregates"
    ),
    sqlite_with_rowid=False,
    # Room on each page for the many updates of a bucket's row in place (HOT), migration 0009.
    postgresql_with={"fillfactor": 70},
)

# The bucket widths whose aggregates are complete and maintained: ingestion updates every width
# listed here (normally one, BUCKET_SECONDS when the database was upgraded), and features refuse
# a width not listed (BUCKET_SECONDS changed) until `aggregates rebuild` builds it from readings.
aggregate_widths = Table(
    "aggregate_widths",
    metadata,
    Column("bucket_seconds", Integer(), primary_key=True, autoincrement=False),
    Column("built_at", Timestamp, nullable=False),
)

# One row per model set blob: many models packed in one file, written once per training run, so
# a run loads a few files instead of one blob per sensor.
model_sets = Table(
    "model_sets",
    metadata,
    Column("set_id", String(64), primary_key=True),
    Column("format", String(32), nullable=False),
    Column("blob_path", String(512), nullable=False),
    Column("n_models", Integer(), nullable=False),
    Column("train_start", Timestamp, nullable=False),
    Column("train_end", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

# The registry: every version of every sensor's model.
models = Table(
    "models",
    metadata,
    _id("device"),
    _id("sensor"),
    Column("version", Integer(), nullable=False),
    Column("set_id", String(64), nullable=False),
    Column("format", String(32), nullable=False),
    Column("blob_path", String(512), nullable=False),
    Column("training_key", String(64), nullable=False),
    Column("estimator", String(200), nullable=False),
    Column("features", String(200), nullable=False),
    Column("train_start", Timestamp, nullable=False),
    Column("train_end", Timestamp, nullable=False),
    Column("n_samples", Integer(), nullable=False),
    Column("threshold", Float(), nullable=True),
    Column("calibration", Text(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("device", "sensor", "version", name="pk_models"),
    # Re-training the same sensor on the same window with the same spec is a no-op.
    UniqueConstraint("device", "sensor", "training_key"),
    ForeignKeyConstraint(["set_id"], ["model_sets.set_id"]),
)

# Which version each sensor scores with. A separate table (not a flag on models) so that exactly
# one version is active per sensor by construction, and rollback is one row update.
active_models = Table(
    "active_models",
    metadata,
    _id("device"),
    _id("sensor"),
    Column("version", Integer(), nullable=False),
    Column("activated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("device", "sensor", name="pk_active_models"),
    ForeignKeyConstraint(
        ["device", "sensor", "version"], ["models.device", "models.sensor", "models.version"]
    ),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    # Unique run key: the window (and filters) a run covers. A double fire inserts nothing.
    Column("run_key", String(255), nullable=False, unique=True),
    Column("window_start", Timestamp, nullable=False),
    Column("window_end", Timestamp, nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("executor", String(16), nullable=False),
    Column("job_id", String(255), nullable=True),
    Column("job_url", String(1000), nullable=True),
    Column("status", String(16), nullable=False),
    Column("filters", Text(), nullable=True),
    Column("n_sensors", Integer(), nullable=False, default=0),
    Column("n_sensors_without_model", Integer(), nullable=False, default=0),
    Column("n_chunks", Integer(), nullable=False, default=0),
    Column("n_chunks_recorded", Integer(), nullable=False, default=0),
    Column("n_chunks_failed", Integer(), nullable=False, default=0),
    Column("n_predictions", Integer(), nullable=False, default=0),
    Column("n_anomalies", Integer(), nullable=False, default=0),
    Column("n_sensor_errors", Integer(), nullable=False, default=0),
    Column("timings", Text(), nullable=True),
    Column("error", Text(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("submitted_at", Timestamp, nullable=True),
    Column("finished_at", Timestamp, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    Index(None, "status", "created_at"),
    Index(None, "window_end"),
)

run_chunks = Table(
    "run_chunks",
    metadata,
    Column("run_id", String(64), nullable=False),
    Column("chunk_id", String(64), nullable=False),
    Column("blob_path", String(512), nullable=False),
    Column("n_sensors", Integer(), nullable=False),
    Column("n_rows", Integer(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("predictions_blob", String(512), nullable=True),
    Column("etag", String(128), nullable=True),
    Column("n_predictions", Integer(), nullable=False, default=0),
    Column("n_anomalies", Integer(), nullable=False, default=0),
    Column("n_errors", Integer(), nullable=False, default=0),
    Column("error", Text(), nullable=True),
    Column("recorded_at", Timestamp, nullable=True),
    PrimaryKeyConstraint("run_id", "chunk_id", name="pk_run_chunks"),
    ForeignKeyConstraint(["run_id"], ["runs.run_id"]),
)

predictions = Table(
    "predictions",
    metadata,
    Column("run_id", String(64), nullable=False),
    Column("chunk_id", String(64), nullable=False),
    _id("device"),
    _id("sensor"),
    Column("bucket_start", Timestamp, nullable=False),
    Column("count", Integer(), nullable=False),
    Column("mean", Float(), nullable=True),
    Column("min", Float(), nullable=True),
    Column("max", Float(), nullable=True),
    Column("std", Float(), nullable=True),
    Column("score", Float(), nullable=False),
    Column("is_anomaly", Boolean(), nullable=False),
    Column("model_version", Integer(), nullable=False),
    # Explanations (scoring.explain), null for sensors without a flagged bucket in the chunk:
    # the band the mean was expected in, and why a flagged bucket was flagged (JSON).
    Column("expected_low", Float(), nullable=True),
    Column("expected_high", Float(), nullable=True),
    Column("explanation", Text(), nullable=True),
    PrimaryKeyConstraint("run_id", "device", "sensor", "bucket_start", name="pk_predictions"),
    Index(None, "device", "sensor", "bucket_start"),
    Index(None, "run_id", "chunk_id"),
)
# Flagged buckets only (a partial, or filtered, index): anomaly events are recomputed from the
# flags of a chunk's sensors over the last EVENT_GAP_BUCKETS buckets (shared.events), and this
# finds them without reading the unflagged rows around them. Its predicate is written exactly as
# the queries write it (`== true()`), so every engine's planner matches the two.
_FLAGGED = predictions.c.is_anomaly == true()
Index(
    "ix_predictions_flagged",
    predictions.c.device,
    predictions.c.sensor,
    predictions.c.bucket_start,
    sqlite_where=_FLAGGED,
    postgresql_where=_FLAGGED,
    mssql_where=_FLAGGED,
)

# Anomaly events: flagged buckets of one sensor fewer than EVENT_GAP_BUCKETS unflagged buckets
# apart form one event, the unit an operator is alerted about (its onset) and later explains and
# gives feedback on. Kept up to date from predictions by shared.events when a chunk is recorded.
# The id is a hash of device, sensor and onset, so recomputing an event keeps its id.
anomaly_events = Table(
    "anomaly_events",
    metadata,
    Column("event_id", String(64), primary_key=True),
    _id("device"),
    _id("sensor"),
    Column("start", Timestamp, nullable=False),  # onset: the first flagged bucket's start
    Column("end", Timestamp, nullable=False),  # end of the last flagged bucket
    Column("last_bucket_start", Timestamp, nullable=False),
    Column("n_buckets", Integer(), nullable=False),  # flagged buckets in the event
    Column("onset_score", Float(), nullable=False),
    Column("peak_score", Float(), nullable=False),
    Column("peak_bucket", Timestamp, nullable=False),
    Column("status", String(16), nullable=False),  # open | closed
    Column("first_run_id", String(64), nullable=False),
    Column("last_run_id", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # Why: the explanation (JSON) of its peak bucket's prediction (scoring.explain).
    Column("explanation", Text(), nullable=True),
    # One event per sensor and onset; also the range a recompute reads.
    Index(None, "device", "sensor", "start", unique=True),
    Index(None, "start"),  # listing across the fleet by time
)

# Per-sensor and per-chunk problems of a run: failed sensors, sensors with data but no model,
# chunks that could not be scored or recorded.
run_errors = Table(
    "run_errors",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),
    Column("chunk_id", String(64), nullable=True),
    _id("device", nullable=True),
    _id("sensor", nullable=True),
    Column("kind", String(32), nullable=False),
    Column("reason", Text(), nullable=False),
    Index(None, "run_id", "chunk_id"),
)

# Pointers to dead-letter blobs (the blob holds the events; this row makes them queryable).
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("blob_path", String(512), primary_key=True),
    Column("source", String(32), nullable=False),
    Column("n_items", Integer(), nullable=False),
    Column("first_reason", Text(), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

# ---- Alerts (shared.alerts): rules, and the outbox of notifications.

# Alert rules: one per scope (the fleet, a device, a sensor), its id derived from the scope so an
# update is an upsert. A sensor's effective rule is the fleet's, overlaid by its device's, then
# by its own (non-null fields win). No rule at all: every event alerts.
alert_rules = Table(
    "alert_rules",
    metadata,
    Column("rule_id", String(64), primary_key=True),
    Column("scope", String(16), nullable=False),  # fleet | device | sensor
    _id("device", nullable=True),
    _id("sensor", nullable=True),
    Column("min_score", Float(), nullable=True),  # the event's peak score must reach it
    Column("min_duration_minutes", Float(), nullable=True),  # end - start must reach it
    Column("quiet_start", String(5), nullable=True),  # HH:MM UTC: onsets in [start, end) are
    Column("quiet_end", String(5), nullable=True),  # not alerted (may wrap midnight)
    Column("muted_until", Timestamp, nullable=True),  # no notification at all until then
    Column("mute_reason", String(500), nullable=True),
    Column("comment", String(500), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

# The outbox: one row per notification, keyed by (event, state, target) through its id, written
# in the transaction that recorded the predictions which changed the event, and sent after the
# commit (again by the alerts timer when a send failed). The key makes a redelivered blob or a
# re-run insert nothing; a lease (claimed_until) keeps two senders from sending one row twice.
alert_outbox = Table(
    "alert_outbox",
    metadata,
    Column("notification_id", String(64), primary_key=True),
    Column("event_id", String(64), nullable=False),
    Column("state", String(32), nullable=False),  # opened | updated:<severity> | closed
    Column("seq", Integer(), nullable=False),  # send order within an event: 0, 1, 2
    Column("target", String(64), nullable=False),  # eventgrid | webhook-<hash of its URL>
    _id("device"),
    _id("sensor"),
    Column("run_id", String(64), nullable=True),  # the run whose recording raised it
    Column("severity", String(16), nullable=False),
    Column("payload", Text(), nullable=False),  # the CloudEvent's data, as JSON
    Column("status", String(16), nullable=False),  # pending | sent | failed
    Column("attempts", Integer(), nullable=False, default=0),
    Column("next_attempt_at", Timestamp, nullable=False),
    Column("claimed_until", Timestamp, nullable=True),
    Column("last_error", Text(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("sent_at", Timestamp, nullable=True),
    Index(None, "status", "next_attempt_at"),
    Index(None, "run_id"),
    Index(None, "event_id", "target"),
    Index(None, "created_at"),  # retention, newest-first listing
    Index(None, "device", "sensor", "state"),  # announced events of a chunk's sensors
)

# ---- Feedback (shared.feedback): operators' verdicts on events, and what they change.

# Every verdict given (the latest per event counts). Device, sensor and the event's span are
# copied here, so a verdict outlives a recompute that re-keys its event.
anomaly_feedback = Table(
    "anomaly_feedback",
    metadata,
    Column("feedback_id", Integer(), primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    _id("device"),
    _id("sensor"),
    Column("event_start", Timestamp, nullable=False),
    Column("event_end", Timestamp, nullable=False),
    Column("peak_score", Float(), nullable=False),
    Column("verdict", String(16), nullable=False),  # confirmed | false_alarm | expected
    Column("comment", Text(), nullable=True),
    Column("author", String(200), nullable=True),
    Column("span_start", Timestamp, nullable=False),  # expected: alerts suppressed over it
    Column("span_end", Timestamp, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Index(None, "event_id"),
    Index(None, "device", "sensor", "span_start"),
    Index(None, "created_at"),
)

# Per-sensor sensitivity overrides (a false alarm raises its sensor's above the alarm's peak):
# preparation writes them into the chunks, the scoring step flags with them.
sensor_sensitivity = Table(
    "sensor_sensitivity",
    metadata,
    _id("device"),
    _id("sensor"),
    Column("sensitivity", Float(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("event_id", String(64), nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("device", "sensor", name="pk_sensor_sensitivity"),
)

# Training jobs (shared.training): one per training key and attempt. The retraining timer writes
# the training chunks, submits the job to the executor and records it here; completion registers
# each chunk's models once (shared.training.registration).
training_jobs = Table(
    "training_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("training_key", String(64), nullable=False),
    Column("attempt", Integer(), nullable=False),
    Column("window_start", Timestamp, nullable=False),
    Column("window_end", Timestamp, nullable=False),
    Column("estimator", String(200), nullable=False),
    Column("executor", String(16), nullable=False),
    Column("backend_job_id", String(255), nullable=True),
    Column("job_url", String(1000), nullable=True),
    Column("status", String(16), nullable=False),
    Column("n_sensors", Integer(), nullable=False, default=0),
    Column("n_chunks", Integer(), nullable=False, default=0),
    Column("n_chunks_done", Integer(), nullable=False, default=0),
    Column("n_chunks_failed", Integer(), nullable=False, default=0),
    Column("n_activated", Integer(), nullable=False, default=0),
    Column("n_kept", Integer(), nullable=False, default=0),
    Column("error", Text(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("submitted_at", Timestamp, nullable=True),
    Column("finished_at", Timestamp, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("training_key", "attempt"),
    Index(None, "status"),
)
# The chunks of a training job: written by the timer, then registered (its models registered
# and gated, once: a redelivered summary finds the chunk registered) or failed.
training_chunks = Table(
    "training_chunks",
    metadata,
    Column("job_id", String(64), nullable=False),
    Column("chunk_id", String(64), nullable=False),
    Column("blob_path", String(512), nullable=False),
    Column("n_sensors", Integer(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("etag", String(128), nullable=True),
    Column("result", Text(), nullable=True),
    Column("error", Text(), nullable=True),
    Column("done_at", Timestamp, nullable=True),
    PrimaryKeyConstraint("job_id", "chunk_id", name="pk_training_chunks"),
    ForeignKeyConstraint(["job_id"], ["training_jobs.job_id"]),
)
