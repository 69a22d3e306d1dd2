"""Completing training: register each chunk's models through the fitness gate, exactly once.

The training step writes ``training/<job_id>/<chunk_id>.training.json`` (its summary, see
:mod:`scoring.train`) after the chunk's model set. :func:`register_chunk` reads it and, in one
transaction:

* claims the chunk (``written`` -> ``registered`` by a conditional update: of two callers, or a
  redelivery of the same summary, or a re-run step that rewrote it, exactly one gets there; the
  others find it registered and change nothing). A chunk failed because its summary had not
  come (a stall or the executor's failure) is still registered when it comes, as a late
  predictions file still records its chunk;
* registers the model set and each model under the version the timer assigned (a sensor that
  already has a model from this training key, from an earlier attempt, is not registered
  again; a version taken meanwhile by another training fails that sensor alone);
* gates them (:func:`gate`): a version becomes active only when its threshold and calibration
  are finite and no operator activated or rolled back a version since the job was created;
* records what it did on the chunk and recounts the job, which ends when every chunk is in.

The summary is only a claim, checked before anything is written: it must be this job's and this
chunk's, name the chunk's own model set, and list only the chunk's sensors with their assigned
versions; a sensor in neither its models nor its failures is failed as missing. A summary that
fails a check fails its chunk with the reason (its sensors keep their active versions and stay
due). Storage and SQL faults raise, for the caller's retry.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow.parquet as pq
from azure.core.exceptions import ResourceNotFoundError
from sqlalchemy import Connection, and_, insert, select, update

from scoring.model_sets import FORMAT_EXTENSIONS, model_set_filename
from shared.blobs import model_set_blob, training_summary_blob
from shared.clock import utcnow
from shared.context import AppContext
from shared.db.schema import active_models, model_sets, models, training_chunks
from shared.features import sensor_range
from shared.models.registry import activate_many, unfit_reason
from shared.training import jobs
from shared.training.jobs import Job
from shared.training.prepare import set_id_for

log = logging.getLogger(__name__)

KEPT_TOO_FEW_BUCKETS = "too_few_buckets"
KEPT_FAILED = "failed"
KEPT_UNFIT = "unfit"
KEPT_OPERATOR = "operator_choice"
MAX_LISTED = 1000

REGISTERED, DUPLICATE, WAITING, REFUSED = "registered", "duplicate", "waiting", "refused"


@dataclass(frozen=True)
class Kept:
    """A due sensor whose new version did not become active (its old one, if any, stays)."""

    device: str
    sensor: str
    kind: str
    reason: str
    active_version: int | None
    new_version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ChunkOutcome:
    outcome: str
    job_id: str
    chunk_id: str
    activated: list[tuple[str, str, int]] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    reason: str | None = None
    job_status: str | None = None


class SummaryRefused(ValueError):
    """A summary no retry can make registrable."""


@dataclass(frozen=True)
class _Active:
    version: int
    activated_at: datetime


def active_versions(conn: Connection, sensors: list[tuple[str, str]]) -> dict:
    if not sensors:
        return {}
    wanted = set(sensors)
    query = select(
        active_models.c.device,
        active_models.c.sensor,
        active_models.c.version,
        active_models.c.activated_at,
    ).where(sensor_range(active_models.c.device, active_models.c.sensor, sensors))
    return {(d, s): _Active(v, at) for d, s, v, at in conn.execute(query) if (d, s) in wanted}


def gate(
    conn: Connection, candidates: list[tuple[str, str, int, Any, Any, datetime]]
) -> tuple[list[tuple[str, str, int]], list[Kept]]:
    """Activate the fit ones of (device, sensor, version, threshold, calibration, since)
    versions; ``since``: when the version's training began (an operator's activation after it
    stands). Returns (activated, kept)."""
    active = active_versions(conn, [(d, s) for d, s, *_ in candidates])
    to_activate: list[tuple[str, str, int]] = []
    kept: list[Kept] = []
    for device, sensor, version, threshold, calibration, since in candidates:
        current = active.get((device, sensor))
        current_version = None if current is None else current.version
        if current is not None and current.version == version:
            continue  # activated by an earlier call
        reason = unfit_reason(threshold, calibration)
        if reason is not None:
            kept.append(Kept(device, sensor, KEPT_UNFIT, reason, current_version, version))
        elif current is not None and (current.version > version or current.activated_at > since):
            reason = (
                f"version {current.version} was activated at {current.activated_at.isoformat()}, "
                f"after version {version} was trained"
            )
            kept.append(Kept(device, sensor, KEPT_OPERATOR, reason, current_version, version))
        else:
            to_activate.append((device, sensor, version))
    activate_many(conn, to_activate)
    return to_activate, kept


def _read_summary(ctx: AppContext, job: Job, chunk_id: str) -> tuple[dict | None, str | None]:
    container = ctx.settings.models_container
    name = training_summary_blob(job.job_id, chunk_id)
    try:
        etag = ctx.store.etag(container, name)
        if etag is None:
            return None, None
        data = ctx.store.download(container, name)
    except ResourceNotFoundError:
        return None, None
    try:
        summary = json.loads(data)
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise SummaryRefused(f"unreadable training summary {name}: {exc}") from None
    return summary, etag


def _chunk_sensors(ctx: AppContext, chunk) -> dict[tuple[str, str], int]:
    """(device, sensor) -> assigned version, from the training chunk file itself."""
    try:
        data = ctx.store.download(ctx.settings.chunks_container, chunk.blob_path)
    except ResourceNotFoundError:
        raise SummaryRefused(f"training chunk {chunk.blob_path} not found") from None
    table = pq.read_table(io.BytesIO(data), columns=["device", "sensor", "model_version"])
    out: dict[tuple[str, str], int] = {}
    for d, s, v in zip(
        table["device"].to_pylist(),
        table["sensor"].to_pylist(),
        table["model_version"].to_pylist(),
        strict=True,
    ):
        out[(str(d), str(s))] = int(v)
    return out


def _check(ctx: AppContext, job: Job, chunk, summary: dict) -> tuple[list[dict], list[Kept]]:
    """The summary's models (checked) and its failed sensors as :class:`Kept`."""
    if summary.get("chunk_id") != chunk.chunk_id:
        raise SummaryRefused(f"the summary is chunk {summary.get('chunk_id')!r}'s")
    if summary.get("chunk_error"):
        raise SummaryRefused(
            f"the training step could not train the chunk: {summary['chunk_error']}"
        )
    if summary.get("job_id") != job.job_id or summary.get("training_key") != job.training_key:
        raise SummaryRefused(
            f"the summary is job {str(summary.get('job_id'))[:80]!r}'s (training key "
            f"{str(summary.get('training_key'))[:20]!r}), not {job.job_id!r}'s"
        )
    expected = _chunk_sensors(ctx, chunk)
    listed = summary.get("models") or []
    failed = summary.get("failed") or []
    if not isinstance(listed, list) or not isinstance(failed, list):
        raise SummaryRefused("models and failed must be lists")
    fmt, set_file = summary.get("format"), summary.get("set_file")
    if listed:
        set_id = set_id_for(job, chunk.chunk_id)
        if fmt not in FORMAT_EXTENSIONS or set_file != model_set_filename(set_id, fmt):
            raise SummaryRefused(
                f"the summary names model set {str(set_file)[:80]!r} ({str(fmt)[:20]!r}), not "
                f"this chunk's {set_id!r}"
            )
    seen: set[tuple[str, str]] = set()
    checked = []
    for m in listed:
        try:
            key = (str(m["device"]), str(m["sensor"]))
            version = int(m["version"])
            threshold = float(m["threshold"])
            calibration = m["calibration"]
            n_samples = int(m["n_samples"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SummaryRefused(f"malformed model entry: {type(exc).__name__}: {exc}") from None
        if expected.get(key) != version:
            raise SummaryRefused(
                f"model {key[0]:.80}/{key[1]:.80} version {version} is not one of the chunk's "
                "sensors with its assigned version"
            )
        if key in seen:
            raise SummaryRefused(f"model {key[0]:.80}/{key[1]:.80} is listed twice")
        seen.add(key)
        checked.append(
            {
                "device": key[0],
                "sensor": key[1],
                "version": version,
                "threshold": threshold,
                "calibration": calibration,
                "n_samples": n_samples,
            }
        )
    kept: list[Kept] = []
    for f in failed:
        key = (str(f.get("device")), str(f.get("sensor"))) if isinstance(f, dict) else None
        if key is None or key not in expected:
            raise SummaryRefused(f"failed entry {str(f)[:120]} is not a sensor of the chunk")
        if key in seen:
            raise SummaryRefused(f"{key[0]:.80}/{key[1]:.80} is both fitted and failed")
        seen.add(key)
        kept.append(Kept(*key, KEPT_FAILED, str(f.get("reason") or "")[:1000], None))
    for key in sorted(set(expected) - seen):
        kept.append(
            Kept(*key, KEPT_FAILED, "neither fitted nor failed in the step's summary", None)
        )
    return checked, kept


def register_chunk(ctx: AppContext, job: Job, chunk) -> ChunkOutcome:
    """Register one chunk's models once; see the module docstring."""
    settings = ctx.settings
    outcome = ChunkOutcome(WAITING, job.job_id, chunk.chunk_id)
    if chunk.status == jobs.CHUNK_REGISTERED:
        outcome.outcome = DUPLICATE
        return outcome
    try:
        summary, etag = _read_summary(ctx, job, chunk.chunk_id)
        if summary is None:
            return outcome
        checked, kept = _check(ctx, job, chunk, summary)
    except SummaryRefused as exc:
        return _refuse(ctx, job, chunk.chunk_id, str(exc))
    set_file = summary.get("set_file")
    if checked and not ctx.store.exists(settings.models_container, model_set_blob(set_file)):
        outcome.reason = f"model set {set_file} not in storage yet"
        return outcome  # a mounted output may upload it after the summary: try again later

    now = utcnow()
    with ctx.engine.begin() as conn:
        claimed = conn.execute(
            update(training_chunks)
            .where(
                training_chunks.c.job_id == job.job_id,
                training_chunks.c.chunk_id == chunk.chunk_id,
                # A chunk failed for want of its summary (its job stalled or failed) is still
                # registered when the summary arrives late; a registered one never again.
                training_chunks.c.status.in_([jobs.CHUNK_WRITTEN, jobs.CHUNK_FAILED]),
            )
            .values(status=jobs.CHUNK_REGISTERED, etag=etag, error=None, done_at=now),
            execution_options={"preserve_rowcount": True},
        )
        if claimed.rowcount != 1:
            outcome.outcome = DUPLICATE
            return outcome
        sensors = [(m["device"], m["sensor"]) for m in checked]
        existing = _existing(conn, sensors, job.training_key)
        rows = []
        for m in checked:
            key = (m["device"], m["sensor"])
            versions, with_key = existing.get(key, (set(), False))
            if with_key:
                continue  # registered by an earlier attempt of this training key
            if m["version"] in versions:
                kept.append(
                    Kept(
                        *key,
                        KEPT_FAILED,
                        f"version {m['version']} was registered by another training meanwhile; "
                        "the sensor stays due",
                        None,
                        m["version"],
                    )
                )
                continue
            rows.append(m)
        if rows:
            fmt = summary["format"]
            set_id = set_id_for(job, chunk.chunk_id)
            blob = model_set_blob(set_file)
            conn.execute(
                insert(model_sets),
                [
                    {
                        "set_id": set_id,
                        "format": fmt,
                        "blob_path": blob,
                        "n_models": len(rows),
                        "train_start": job.window.start,
                        "train_end": job.window.end,
                        "created_at": now,
                    }
                ],
            )
            conn.execute(
                insert(models),
                [
                    {
                        "device": m["device"],
                        "sensor": m["sensor"],
                        "version": m["version"],
                        "set_id": set_id,
                        "format": fmt,
                        "blob_path": blob,
                        "training_key": job.training_key,
                        "estimator": job.estimator,
                        "features": ",".join(summary.get("features") or []),
                        "train_start": job.window.start,
                        "train_end": job.window.end,
                        "n_samples": m["n_samples"],
                        "threshold": m["threshold"] if math.isfinite(m["threshold"]) else None,
                        "calibration": json.dumps(m["calibration"], default=float),
                        "created_at": now,
                    }
                    for m in rows
                ],
            )
        activated, unfit = gate(
            conn,
            [
                (
                    m["device"],
                    m["sensor"],
                    m["version"],
                    m["threshold"],
                    m["calibration"],
                    job.created_at,
                )
                for m in rows
            ],
        )
        kept += unfit
        _fill_active(conn, kept)
        conn.execute(
            update(training_chunks)
            .where(
                training_chunks.c.job_id == job.job_id,
                training_chunks.c.chunk_id == chunk.chunk_id,
            )
            .values(result=_result_json(activated, kept))
        )
        finished = jobs.refresh_job(conn, job.job_id)
    outcome.outcome, outcome.activated, outcome.kept = REGISTERED, activated, kept
    outcome.job_status = finished.status
    log.info(
        "training chunk registered",
        extra={
            "job_id": job.job_id,
            "chunk_id": chunk.chunk_id,
            "activated": len(activated),
            "kept": len(kept),
            "job_status": finished.status,
        },
    )
    return outcome


def _existing(conn: Connection, sensors: list[tuple[str, str]], key: str) -> dict:
    """(device, sensor) -> (registered versions, has a version of training key ``key``)."""
    if not sensors:
        return {}
    wanted = set(sensors)
    out: dict[tuple[str, str], tuple[set[int], bool]] = {}
    query = select(models.c.device, models.c.sensor, models.c.version, models.c.training_key).where(
        sensor_range(models.c.device, models.c.sensor, sensors)
    )
    for d, s, v, k in conn.execute(query):
        if (d, s) not in wanted:
            continue
        versions, with_key = out.get((d, s), (set(), False))
        versions.add(int(v))
        out[(d, s)] = (versions, with_key or k == key)
    return out


def _fill_active(conn: Connection, kept: list[Kept]) -> None:
    """Set each kept sensor's active version (what stays active) in place."""
    missing = [k for k in kept if k.active_version is None]
    if not missing:
        return
    active = active_versions(conn, [(k.device, k.sensor) for k in missing])
    for i, k in enumerate(kept):
        current = active.get((k.device, k.sensor))
        if k.active_version is None and current is not None:
            kept[i] = Kept(k.device, k.sensor, k.kind, k.reason, current.version, k.new_version)


def _result_json(activated, kept: list[Kept]) -> str:
    return json.dumps(
        {
            "n_activated": len(activated),
            "n_kept": len(kept),
            "activated": [list(a) for a in activated[:MAX_LISTED]],
            "kept": [k.as_dict() for k in kept[:MAX_LISTED]],
        }
    )


def _refuse(ctx: AppContext, job: Job, chunk_id: str, reason: str) -> ChunkOutcome:
    failed = fail_chunks(ctx, job.job_id, [chunk_id], reason)
    log.warning(
        "training summary refused",
        extra={"job_id": job.job_id, "chunk_id": chunk_id, "reason": reason[:500]},
    )
    return ChunkOutcome(REFUSED if failed else DUPLICATE, job.job_id, chunk_id, reason=reason)


def fail_chunks(ctx: AppContext, job_id: str, chunk_ids: list[str], reason: str) -> list[str]:
    """Fail chunks not registered yet (a registered chunk keeps its models); recount the job."""
    failed = []
    with ctx.engine.begin() as conn:
        for chunk_id in chunk_ids:
            result = conn.execute(
                update(training_chunks)
                .where(
                    and_(
                        training_chunks.c.job_id == job_id,
                        training_chunks.c.chunk_id == chunk_id,
                        training_chunks.c.status == jobs.CHUNK_WRITTEN,
                    )
                )
                .values(
                    status=jobs.CHUNK_FAILED, error=reason[: jobs.MAX_REASON], done_at=utcnow()
                ),
                execution_options={"preserve_rowcount": True},
            )
            if result.rowcount == 1:
                failed.append(chunk_id)
        if failed:
            jobs.refresh_job(conn, job_id)
    return failed
