"""Replay the product over a NAB-layout folder, as production would run it, and write NAB results.

``python -m shared.cli evaluate nab --data DIR --labels FILE --out DIR``

What a replay does (the same settings for every file, labels never read before the end):

1. Every ``DIR/<category>/<file>.csv`` (columns ``timestamp,value``) is imported through the CSV
   import as one sensor (device = category, sensor = file name).
2. Time is replayed one scheduled window after another (``window_hours``, a day by default):
   before each window the product's retraining policy runs at the window's start
   (:func:`shared.training.retrain_due`: first training for sensors with data and no model,
   retraining when the schedule says so, over the trailing ``TRAIN_WINDOW_HOURS``), then the
   window is run (chunks with their context rows, the local executor, recording through the blob
   trigger, anomaly events). Windows without data are skipped, so series of different years
   share one replay. Everything is causal: a bucket's score uses only that bucket and earlier
   ones (see :mod:`scoring.baseline`), and models only data before the window.
3. Results per file, in NAB's layout (``OUT/<detector>/<category>/<detector>_<file>.csv``:
   timestamp, value, anomaly_score, label; one row per data row). A bucket's score goes to the
   last row inside the bucket. An operator is alerted once per incident, at the onset of an
   anomaly event, so NAB sees exactly those alerts: a row's ``anomaly_score`` is at least 0.5
   exactly when its bucket opens an event (at the configured ``SENSITIVITY``), and below 0.5
   otherwise (the bucket's own graded score, capped). Rows before a sensor's first model, or
   in no scored bucket, score 0.
4. A summary per series: labelled windows, windows with an alert, alerts outside every window,
   share of scored rows alerted and share flagged (score at or above the sensitivity).

NAB's scorer itself is not part of the product (it lives beside the repository); run it on the
results folder as ``bench/bench_quality.py`` does.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select

from shared.context import AppContext
from shared.db.schema import predictions
from shared.ingestion.csv_import import import_csv
from shared.runs import records
from shared.runs.records import RunFilters
from shared.runs.windows import Window

log = logging.getLogger(__name__)

NO_MODEL_YET = "no sensor with readings in"
"""How a run without any trained sensor ends (shared.runs.service); a replay's first windows."""

ALERT_CAP = 0.4999
"""The highest ``anomaly_score`` of a row that raises no alert (NAB's threshold is 0.5)."""


@dataclass
class SeriesSummary:
    category: str
    name: str
    rows: int
    scored_rows: int
    windows: int
    windows_found: int
    alerts: int
    false_alerts: int
    flagged_rows: int

    @property
    def alert_share(self) -> float:
        return self.alerts / self.scored_rows if self.scored_rows else 0.0

    @property
    def flag_share(self) -> float:
        return self.flagged_rows / self.scored_rows if self.scored_rows else 0.0


@dataclass
class NabReplay:
    detector: str
    out_dir: Path
    series: list[SeriesSummary] = field(default_factory=list)
    runs: int = 0
    runs_without_model: int = 0
    failed_runs: list[str] = field(default_factory=list)

    @property
    def window_recall(self) -> float:
        windows = sum(s.windows for s in self.series)
        return sum(s.windows_found for s in self.series) / windows if windows else 0.0

    @property
    def false_alert_share(self) -> float:
        alerts = sum(s.alerts for s in self.series)
        return sum(s.false_alerts for s in self.series) / alerts if alerts else 0.0

    def table(self) -> str:
        lines = [
            f"{'series':<48}{'rows':>7}{'scored':>7}{'windows':>8}{'found':>6}"
            f"{'alerts':>7}{'false':>6}{'flagged':>8}"
        ]
        for s in self.series:
            lines.append(
                f"{(s.category + '/' + s.name)[:47]:<48}{s.rows:>7}{s.scored_rows:>7}"
                f"{s.windows:>8}{s.windows_found:>6}{s.alerts:>7}{s.false_alerts:>6}"
                f"{s.flag_share:>8.1%}"
            )
        worst = max(self.series, key=lambda s: s.flag_share, default=None)
        lines.append(
            f"overall: {len(self.series)} series, {self.runs} runs ({self.runs_without_model} "
            f"before any model, {len(self.failed_runs)} failed), window recall "
            f"{self.window_recall:.2f}, alerts outside windows "
            f"{self.false_alert_share:.2f}, most flagged series "
            f"{worst.flag_share if worst else 0:.1%}"
        )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "detector": self.detector,
            "out_dir": str(self.out_dir),
            "runs": self.runs,
            "runs_without_model": self.runs_without_model,
            "failed_runs": self.failed_runs,
            "window_recall": self.window_recall,
            "false_alert_share": self.false_alert_share,
            "series": [asdict(s) | {"flag_share": s.flag_share} for s in self.series],
        }


@dataclass
class _Series:
    category: str
    name: str
    path: Path
    device: str
    sensor: str
    stamps: list[str]
    times: np.ndarray  # datetime64[us], naive UTC
    values: list[str]


def _read_series(path: Path, category: str) -> _Series:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if [h.strip().lower() for h in header[:2]] != ["timestamp", "value"]:
            raise ValueError(f"{path}: expected columns timestamp,value; got {header}")
        rows = [row for row in reader if row]
    stamps = [row[0] for row in rows]
    times = np.array([_naive_utc(s) for s in stamps], dtype="datetime64[us]")
    return _Series(
        category,
        path.stem,
        path,
        category[:64],
        path.stem[:64],
        stamps,
        times,
        [r[1] for r in rows],
    )


def _naive_utc(text: str) -> datetime:
    from shared.clock import parse_utc

    return parse_utc(text).replace(tzinfo=None)


def discover(data_dir: Path, categories: Sequence[str] | None = None) -> list[tuple[str, Path]]:
    """``(category, file)`` of every series in a NAB-layout folder, sorted."""
    found = []
    for path in sorted(Path(data_dir).glob("*/*.csv")):
        category = path.parent.name
        if categories and category not in categories:
            continue
        found.append((category, path))
    return found


def replay_nab(
    ctx: AppContext,
    data_dir: Path,
    labels_file: Path | None,
    out_dir: Path,
    *,
    detector: str = "product",
    estimator: str | None = None,
    categories: Sequence[str] | None = None,
    window_hours: float = 24.0,
    progress: Callable[[str], None] | None = None,
) -> NabReplay:
    """Replay the product over a NAB-layout folder; see the module docstring.

    Parameters
    ----------
    ctx : AppContext
        A context of its own (an empty database; the replay imports into it).
    data_dir, labels_file, out_dir : Path
        NAB's ``data/`` layout, its combined label windows (only read for the summary, after
        every series was scored; may be None), and where results go.
    detector : str
        Name of the results folder and file prefix.
    estimator : str, optional
        Estimator template to train (default: the product's default detector).
    """
    from shared.local.host import deliver_predictions
    from shared.runs.service import start_run
    from shared.training.service import retrain_due

    say = progress or (lambda message: log.info(message))
    files = discover(data_dir, categories)
    if not files:
        raise ValueError(f"no <category>/<file>.csv series under {data_dir}")
    series = [_read_series(path, category) for category, path in files]
    for i, s in enumerate(series, 1):
        import_csv(
            s.path, ctx.engine, ctx.store, ctx.settings.deadletter_container, s.device, s.sensor
        )
        say(f"imported {i}/{len(series)} {s.category}/{s.name} ({len(s.stamps)} rows)")

    step = timedelta(hours=window_hours)
    epoch = datetime(1970, 1, 1)
    starts = set()
    for s in series:
        first, last = s.times[0].astype(datetime), s.times[-1].astype(datetime)
        k = int((first - epoch) / step)
        while epoch + k * step <= last:
            starts.add(epoch + k * step)
            k += 1
    report = NabReplay(detector, Path(out_dir))
    ordered = sorted(starts)
    for i, start in enumerate(ordered, 1):
        window = Window(start, start + step)
        active = tuple(
            (s.device, s.sensor)
            for s in series
            if s.times[0].astype(datetime) < window.end and s.times[-1].astype(datetime) >= start
        )
        # Training in this process (the local executor, one worker), whatever EXECUTOR says.
        retrain_due(ctx, start, estimator=estimator, workers=1, executor_name="local")
        run, _ = start_run(ctx, window, "cli", RunFilters(sensors=active))
        deliver_predictions(ctx, run.run_id)
        run = records.get_run(ctx.engine, run.run_id)
        report.runs += 1
        if run.status not in ("completed", "partial"):
            if (run.error or "").startswith(NO_MODEL_YET):
                # A series' first window: nothing before it to train on, as in production.
                report.runs_without_model += 1
            else:
                report.failed_runs.append(f"{window}: {run.status} {run.error or ''}".strip())
        say(f"window {i}/{len(ordered)} {window}: {run.status}, {run.n_anomalies} flagged")

    labels = json.loads(Path(labels_file).read_text()) if labels_file else {}
    for s in series:
        report.series.append(_write_results(ctx, s, report, labels))
    return report


def _write_results(ctx: AppContext, s: _Series, report: NabReplay, labels: dict) -> SeriesSummary:
    from shared.events.queries import events_for

    bucket_us = ctx.settings.bucket_seconds * 1_000_000
    sensitivity = ctx.settings.sensitivity
    from shared.events.tracking import newest_prediction

    q = predictions.alias("q")
    with ctx.engine.connect() as conn:
        # The newest run's prediction of each bucket, as events and every read path count it.
        rows = conn.execute(
            select(q.c.bucket_start, q.c.score).where(
                q.c.device == s.device, q.c.sensor == s.sensor, newest_prediction(q)
            )
        ).all()
    onsets = {
        np.datetime64(e.start.replace(tzinfo=None), "us").astype(np.int64)
        for e in events_for(ctx.engine, device=s.device, sensor=s.sensor)
    }
    bucket_score: dict[int, float] = {}
    for bucket_start, score in rows:
        key = np.datetime64(bucket_start.replace(tzinfo=None), "us").astype(np.int64)
        bucket_score[key] = float(score)

    times_us = s.times.astype(np.int64)
    buckets = times_us // bucket_us * bucket_us
    last_in_bucket = np.r_[buckets[1:] != buckets[:-1], True]
    scores = np.zeros(len(times_us))
    alert = np.zeros(len(times_us), dtype=bool)
    scored = np.zeros(len(times_us), dtype=bool)
    for i in np.flatnonzero(last_in_bucket):
        b = int(buckets[i])
        if b in bucket_score:
            scored[i] = True
            scores[i] = bucket_score[b]
            alert[i] = b in onsets and bucket_score[b] >= sensitivity
    anomaly_score = np.where(alert, np.maximum(scores, 0.5), np.minimum(scores, ALERT_CAP))

    windows = [
        (np.datetime64(_naive_utc(a), "us"), np.datetime64(_naive_utc(b), "us"))
        for a, b in labels.get(f"{s.category}/{s.path.name}", [])
    ]
    inside = np.zeros(len(times_us), dtype=bool)
    for a, b in windows:
        inside |= (s.times >= a) & (s.times <= b)
    found = sum(1 for a, b in windows if (alert & (s.times >= a) & (s.times <= b)).any())

    target = report.out_dir / report.detector / s.category
    target.mkdir(parents=True, exist_ok=True)
    with (target / f"{report.detector}_{s.path.name}").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        for stamp, value, score, label in zip(
            s.stamps, s.values, anomaly_score.tolist(), inside.tolist(), strict=True
        ):
            writer.writerow([stamp, value, f"{score:.6f}", int(label)])
    return SeriesSummary(
        category=s.category,
        name=s.name,
        rows=len(times_us),
        scored_rows=int(scored.sum()),
        windows=len(windows),
        windows_found=found,
        alerts=int(alert.sum()),
        false_alerts=int((alert & ~inside).sum()),
        flagged_rows=int((scored & (scores >= sensitivity)).sum()),
    )
