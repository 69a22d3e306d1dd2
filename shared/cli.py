"""The command line for local operation: one entry point that drives the same services and the
same trigger functions as the Functions host.

    python -m shared.cli demo                 the whole job locally, with a summary
    python -m shared.cli db upgrade           apply migrations (db sql: print them for a dialect)
    python -m shared.cli simulate ...         generate a fleet's readings (ingest/eventhub/csv)
    python -m shared.cli import FILE ...      load CSV readings
    python -m shared.cli train ...            fit, register and activate models
    python -m shared.cli train --due          retrain what the schedule says is due
    python -m shared.cli models list|activate|rollback
    python -m shared.cli run [--at TIME]      score one window now (or ending at TIME)
    python -m shared.cli tick                 fire the timer function once
    python -m shared.cli status RUN_ID | runs  one run, recent runs
    python -m shared.cli anomalies [show ID]  anomaly events (one per incident), or one event
    python -m shared.cli alerts rules|mute|unmute|list|deliver   alert rules and notifications
    python -m shared.cli feedback give|show|summary|sensitivities  operators' verdicts
    python -m shared.cli report RUN_ID        write the run's HTML report
    python -m shared.cli azureml provision    create/update the cluster and environment

Settings come from the environment (see local.settings.example.json); nothing is needed locally.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from shared.clock import parse_utc, utcnow
from shared.context import AppContext, set_context
from shared.logs import configure_logging
from shared.settings import Settings, SettingsError


def _time(value: str) -> datetime:
    try:
        return parse_utc(value)
    except ValueError:
        raise SystemExit(f"{value!r} is not an ISO-8601 timestamp") from None


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain text table (what an operator reads in a terminal)."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="",
        file=sys.stderr,
        leave=False,
        disable=not sys.stderr.isatty() and total < 0,
    )


# ------------------------------------------------------------------------------ context


class LocalServices:
    """The context for a CLI command, starting Azurite (blob and queue services) when storage is
    the local emulator and nothing listens yet (stopped again on exit)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.azurite = None

    def __enter__(self) -> AppContext:
        from shared.db import migrate
        from shared.local.azurite import port_open, start_azurite

        if self.settings.uses_azurite:
            connection = self.settings.storage.connection_string or ""
            port = _azurite_port(connection)
            queue_port = _azurite_port(connection, "queueendpoint", 10001)
            missing = tuple(
                service
                for service, p in (("blob", port), ("queue", queue_port))
                if not port_open(p)
            )
            if missing:
                print(
                    f"starting Azurite {' and '.join(missing)} on 127.0.0.1:{port}/{queue_port} "
                    f"(data in {self.settings.data_dir / 'azurite'})",
                    file=sys.stderr,
                )
                self.azurite = start_azurite(
                    self.settings.data_dir / "azurite",
                    port,
                    queue_port=queue_port,
                    services=missing,
                )
        ctx = AppContext.create(self.settings)
        migrate.upgrade(ctx.engine, bucket_seconds=self.settings.bucket_seconds)
        set_context(ctx)
        self.ctx = ctx
        return ctx

    def __exit__(self, *exc) -> None:
        set_context(None)
        self.ctx.engine.dispose()
        if self.azurite is not None:
            self.azurite.stop()


def _azurite_port(
    connection_string: str, endpoint: str = "blobendpoint", default: int = 10000
) -> int:
    for part in connection_string.split(";"):
        if part.strip().lower().startswith(f"{endpoint}="):
            host = part.split("=", 1)[1].split("//", 1)[-1].split("/", 1)[0]
            if ":" in host:
                return int(host.rsplit(":", 1)[1])
    return default


# ------------------------------------------------------------------------------ commands


def cmd_db(args, settings: Settings) -> int:
    from shared.db import migrate

    if args.action == "sql":
        print(migrate.offline_sql(args.url, bucket_seconds=settings.bucket_seconds))
        return 0
    from shared.db.engine import make_engine

    engine = make_engine(settings)
    migrate.upgrade(engine, bucket_seconds=settings.bucket_seconds)
    print(f"database at revision {migrate.current_revision(engine)}")
    return 0


def cmd_aggregates(args, settings: Settings) -> int:
    """Rebuild the bucket aggregates of a width from readings (after BUCKET_SECONDS changed, or
    for a time range written by something that bypassed ingestion), or check them."""
    from shared import aggregates
    from shared.db.engine import make_engine

    engine = make_engine(settings)
    width = args.bucket_seconds or settings.bucket_seconds
    if args.action == "check":
        with engine.connect() as conn:
            aggregates.check_width(conn, width)
            wrong = aggregates.compare_with_readings(conn, width)
        print(f"{len(wrong)} bucket(s) differ from the readings at {width} s")
        return 1 if wrong else 0
    start = parse_utc(args.start) if args.start else None
    end = parse_utc(args.end) if args.end else None
    with engine.begin() as conn:
        written = aggregates.rebuild(conn, width, start, end)
        if args.drop_others:
            for other in aggregates.widths(conn):
                if other != width:
                    aggregates.drop_width(conn, other)
    with engine.connect() as conn:
        print(f"{written} bucket rows at {width} s; maintained widths: {aggregates.widths(conn)}")
    return 0


def _fleet(args, end: datetime | None = None):
    from shared.simulate import FleetSpec, make_fleet

    end = end or (_time(args.end) if getattr(args, "end", None) else None)
    if end is None:
        from shared.runs.windows import last_occurrence

        end = last_occurrence(Settings.from_env().scoring_schedule, utcnow())
    spec = FleetSpec(
        start=end - timedelta(hours=args.hours),
        end=end,
        devices=args.devices,
        sensors_per_device=args.sensors,
        interval_seconds=args.interval,
        seed=args.seed,
        anomaly_share=args.anomaly_share,
        anomalies_from=end - timedelta(minutes=args.anomaly_minutes),
    )
    return make_fleet(spec)


def ingest_fleet(fleet, readings_per_event: int = 100, events_per_batch: int = 100) -> float:
    """Send a fleet through the Event Hubs function in host-sized batches; returns seconds."""
    from shared.local.host import deliver_events
    from shared.simulate import iter_event_bodies

    n_events = -(-fleet.spec.n_steps * fleet.spec.n_sensors // readings_per_event)
    started = time.perf_counter()
    with _progress(n_events, "ingest (events)") as bar:
        for delivered in deliver_events(
            iter_event_bodies(fleet, readings_per_event), events_per_batch
        ):
            bar.update(delivered)
    return time.perf_counter() - started


def cmd_simulate(args, settings: Settings) -> int:
    from shared.simulate import send_to_event_hub, write_csv, write_labels

    fleet = _fleet(args)
    spec = fleet.spec
    print(
        f"fleet: {spec.devices} devices x {spec.sensors_per_device} sensors, "
        f"{spec.start.isoformat()}Z to {spec.end.isoformat()}Z every {spec.interval_seconds}s "
        f"({spec.n_steps * spec.n_sensors:,} readings, {len(fleet.anomalies)} anomalies)"
    )
    if args.labels:
        write_labels(fleet, Path(args.labels))
        print(f"labels written to {args.labels}")
    if args.to == "csv":
        rows = write_csv(fleet, Path(args.csv))
        print(f"{rows:,} readings written to {args.csv}")
    elif args.to == "eventhub":
        sent = send_to_event_hub(
            fleet,
            settings.eventhub.connection_string,
            settings.eventhub.endpoint,
            settings.eventhub_name,
        )
        print(f"{sent:,} events sent to Event Hub {settings.eventhub_name}")
    else:
        with LocalServices(settings):
            seconds = ingest_fleet(fleet)
        print(f"ingested through the Event Hubs function in {seconds:.1f}s")
    return 0


def cmd_import(args, settings: Settings) -> int:
    from shared.ingestion.csv_import import import_csv

    with LocalServices(settings) as ctx:
        for path in args.files:
            result = import_csv(
                Path(path),
                ctx.engine,
                ctx.store,
                settings.deadletter_container,
                args.device,
                args.sensor,
            )
            print(json.dumps({"file": path, **result.as_dict()}))
    return 0


def _sensor_pairs(values: Sequence[str] | None) -> list[tuple[str, str]] | None:
    if not values:
        return None
    pairs = []
    for v in values:
        if "/" not in v:
            raise SystemExit(f"--sensor takes DEVICE/SENSOR, got {v!r}")
        d, s = v.split("/", 1)
        pairs.append((d, s))
    return pairs


def cmd_train(args, settings: Settings) -> int:
    if args.due:
        return cmd_train_due(args, settings)
    from shared.models.training import train_models

    end = _time(args.end) if args.end else utcnow()
    start = (
        _time(args.start)
        if args.start
        else end - timedelta(hours=args.hours or settings.train_window_hours)
    )
    with LocalServices(settings) as ctx, _progress(-1, "train (sensors)") as bar:

        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()

        report = train_models(
            ctx,
            start,
            end,
            devices=args.device or None,
            sensors=_sensor_pairs(args.sensor),
            estimator=args.estimator,
            progress=progress,
        )
    print(json.dumps(report.as_dict(), indent=1))
    return 0


def cmd_train_due(args, settings: Settings) -> int:
    from shared.training.service import retrain_due

    if args.start or args.hours or args.device or args.sensor:
        raise SystemExit("--due takes its window and sensors from the settings (only --end)")
    now = _time(args.end) if args.end else utcnow()
    with LocalServices(settings) as ctx:
        # Chunks written, then the job on EXECUTOR: the local pool trains and the call returns
        # with the models registered; Azure ML returns at once (a later `tick` or `train --due`
        # registers what the cluster fitted).
        report = retrain_due(ctx, now, estimator=args.estimator)
    print(json.dumps(report.as_dict(), indent=1))
    return 0


def cmd_models(args, settings: Settings) -> int:
    from shared.models import registry

    with LocalServices(settings) as ctx:
        if args.action == "list":
            rows = registry.list_versions(ctx.engine, args.device, args.sensor, args.limit)
            print(
                table(
                    rows,
                    [
                        "device",
                        "sensor",
                        "version",
                        "active",
                        "estimator",
                        "format",
                        "n_samples",
                        "threshold",
                        "train_start",
                        "train_end",
                    ],
                )
            )
        elif args.action == "activate":
            registry.activate_version(ctx.engine, args.device, args.sensor, args.version)
            print(f"{args.device}/{args.sensor}: version {args.version} active")
        else:
            version = registry.rollback(ctx.engine, args.device, args.sensor)
            print(f"{args.device}/{args.sensor}: rolled back to version {version}")
    return 0


def score_and_record(ctx: AppContext, window, trigger: str, filters=None, rerun=False):
    """Request a run as ``POST /api/runs`` does (record it, queue its preparation), then, as the
    host would, deliver the run-request queue to its trigger (which prepares and submits) and
    the predictions blobs to the blob trigger. Failed preparations are retried at once here
    (not after host.json's visibilityTimeout), so the command ends with the run's outcome."""
    from shared.local.host import deliver_predictions, deliver_run_requests
    from shared.runs import records
    from shared.runs.service import request_run

    run, created = request_run(ctx, window, trigger, filters, rerun=rerun)
    deliver_run_requests(ctx, retry_after_seconds=0)
    started = time.perf_counter()
    deliver_predictions(ctx, run.run_id)
    records.set_timing(ctx.engine, run.run_id, "record", time.perf_counter() - started)
    return records.get_run(ctx.engine, run.run_id), created


def cmd_run(args, settings: Settings) -> int:
    from shared.runs.records import RunFilters
    from shared.runs.windows import Window, latest_window, window_ending

    at = _time(args.at) if args.at else None
    if args.window_minutes:
        end = at or latest_window(settings.scoring_schedule, utcnow()).end
        window = Window(end - timedelta(minutes=args.window_minutes), end)
    elif at:
        window = window_ending(settings.scoring_schedule, at)
    else:
        window = latest_window(settings.scoring_schedule, utcnow())
    filters = RunFilters(tuple(args.device or ()), tuple(_sensor_pairs(args.sensor) or ()))
    with LocalServices(settings) as ctx:
        run, created = score_and_record(ctx, window, "cli", filters, rerun=args.rerun)
    if not created:
        print("a run for this window and filters exists already (use --rerun for a new one)")
    print(json.dumps(run.as_dict(), indent=1))
    return 0 if run.status in ("completed", "partial") else 1


def cmd_tick(args, settings: Settings) -> int:
    from shared.local.host import deliver_predictions, fire_timer
    from shared.runs import records

    with LocalServices(settings) as ctx:
        before = {r.run_id for r in records.list_runs(ctx.engine, limit=500)}
        fire_timer()
        new = [r for r in records.list_runs(ctx.engine, limit=500) if r.run_id not in before]
        for run in new:
            deliver_predictions(ctx, run.run_id)
        rows = [records.get_run(ctx.engine, r.run_id).as_dict() for r in new]
    if not rows:
        print("no window due (already run)")
    for row in rows:
        print(json.dumps(row, indent=1))
    return 0


def cmd_status(args, settings: Settings) -> int:
    from shared.runs import records
    from shared.runs.reconcile import reconcile_run

    with LocalServices(settings) as ctx:
        run = records.get_run(ctx.engine, args.run_id)
        if run is None:
            print(f"no run {args.run_id!r}", file=sys.stderr)
            return 2
        body = reconcile_run(ctx, run).as_dict()
        body["errors"] = records.run_errors_of(ctx.engine, args.run_id, limit=args.errors)
        from shared.alerts import run_alert_summary  # notifications it raised (shared.alerts)

        body["alerts"] = run_alert_summary(ctx.engine, args.run_id)
    print(json.dumps(body, indent=1))
    return 0


def cmd_runs(args, settings: Settings) -> int:
    from shared.runs import records

    with LocalServices(settings) as ctx:
        runs = records.list_runs(ctx.engine, status=args.status, limit=args.limit)
    rows = []
    for r in runs:
        duration = (r.finished_at - r.created_at).total_seconds() if r.finished_at else None
        rows.append(
            {
                "run_id": r.run_id,
                "status": r.status,
                "trigger": r.trigger,
                "window_end": r.window.end.isoformat(),
                "sensors": r.n_sensors,
                "chunks": f"{r.n_chunks_recorded + r.n_chunks_failed}/{r.n_chunks}",
                "anomalies": r.n_anomalies,
                "errors": r.n_sensor_errors + r.n_chunks_failed,
                "seconds": None if duration is None else f"{duration:.1f}",
                "reason": (r.error or "")[:60],
            }
        )
    print(
        table(
            rows,
            [
                "run_id",
                "status",
                "trigger",
                "window_end",
                "sensors",
                "chunks",
                "anomalies",
                "errors",
                "seconds",
                "reason",
            ],
        )
    )
    return 0


def explanation_line(explanation: dict | None) -> str:
    """One line saying why an event was flagged (its peak bucket's explanation)."""
    if not explanation:
        return "no explanation (its peak bucket was scored before explanations existed)"
    line = explanation.get("summary") or json.dumps(explanation)
    version = explanation.get("model_version")
    return f"{line} [model version {version}]" if version is not None else line


def cmd_anomalies(args, settings: Settings) -> int:
    """Anomaly events (one per incident) as a table; ``anomalies show ID``: one with buckets."""
    from shared.events import STATUSES, EventFilters, event_buckets, get_event, list_events

    if args.anomalies_action == "show":
        with LocalServices(settings) as ctx:
            event = get_event(ctx.engine, args.event_id)
            if event is None:
                print(f"no anomaly event {args.event_id!r}", file=sys.stderr)
                return 2
            buckets, truncated = event_buckets(ctx.engine, event)
        print(json.dumps(event.as_dict(), indent=1))
        print(f"why: {explanation_line(event.explanation)}")
        for row in buckets:
            row["flag"] = "*" if row["is_anomaly"] else ""
            for k in ("mean", "min", "max", "score", "expected_low", "expected_high"):
                row[k] = None if row[k] is None else f"{row[k]:.3f}"
            row["why"] = (row["explanation"] or {}).get("comparison", "")
        columns = ["bucket_start", "flag", "score", "mean", "min", "max"]
        columns += ["expected_low", "expected_high", "why", "run_id"]
        print(table(buckets, columns))
        if truncated:
            print(f"(first {len(buckets)} buckets)")
        return 0
    if args.status is not None and args.status not in STATUSES:
        raise SystemExit(f"--status must be one of {', '.join(STATUSES)}")
    filters = EventFilters(
        device=args.device,
        sensor=args.sensor,
        since=_time(args.since) if args.since else None,
        until=_time(args.until) if args.until else None,
        status=args.status,
        run_id=args.run_id,
        min_score=args.min_score,
    )
    with LocalServices(settings) as ctx:
        events = list_events(ctx.engine, filters, limit=args.limit)
    rows = [
        {
            **e.as_dict(),
            "start": f"{e.start:%Y-%m-%d %H:%M:%S}",
            "end": f"{e.end:%Y-%m-%d %H:%M:%S}",
            "peak_score": f"{e.peak_score:.3f}",
            "onset_score": f"{e.onset_score:.3f}",
            "why": " ".join(
                str((e.explanation or {}).get(k, "")) for k in ("comparison", "direction")
            ).strip(),
        }
        for e in events
    ]
    columns = ["event_id", "device", "sensor", "start", "end", "n_buckets", "peak_score"]
    print(table(rows, [*columns, "onset_score", "status", "why", "first_run_id"]))
    return 0


def cmd_report(args, settings: Settings) -> int:
    from shared.blobs import report_blob
    from shared.report import build_run_report, build_runs_overview

    with LocalServices(settings) as ctx:
        if args.run_id is None:
            page, name = build_runs_overview(ctx), "runs"
        else:
            page, name = build_run_report(ctx, args.run_id), args.run_id
            if page is not None:
                ctx.store.upload(
                    settings.reports_container,
                    report_blob(args.run_id),
                    page.encode(),
                    "text/html; charset=utf-8",
                )
    if page is None:
        print(f"no run {args.run_id!r}", file=sys.stderr)
        return 2
    out = Path(args.out or settings.data_dir / "reports" / f"{name}.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    print(f"report written to {out}")
    return 0


def cmd_azureml(args, settings: Settings) -> int:
    from shared.azureml.provision import provision

    print(json.dumps(provision(settings), indent=1, default=str))
    return 0


def cmd_evaluate(args, settings: Settings) -> int:
    import shutil
    import tempfile

    from shared.db import migrate
    from shared.evaluation.nab import replay_nab
    from shared.local.azurite import start_azurite

    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="nab-replay-"))
    azurite = start_azurite(work / "azurite")
    try:
        # The detector's and the product's policy come from the settings in force; storage,
        # SQL, buckets and workers belong to the replay's own private services.
        policy = {
            "SENSITIVITY": settings.sensitivity,
            "TRAIN_WINDOW_HOURS": settings.train_window_hours,
            "TRAINING_SCHEDULE": settings.training_schedule,
            "MIN_TRAINING_BUCKETS": settings.min_training_buckets,
            "EVENT_GAP_BUCKETS": settings.event_gap_buckets,
            "EVENT_REST_BUCKETS": settings.event_rest_buckets,
            "TARGET_FALSE_ALARM_RATE": settings.target_false_alarm_rate,
        }
        replay_settings = Settings.from_env(
            {name: str(value) for name, value in policy.items()}
            | {
                "DATA_DIR": str(work),
                "SQL_URL": f"sqlite:///{work / 'replay.db'}",
                "ScoringStorage": azurite.connection_string,
                "BUCKET_SECONDS": str(args.bucket_seconds),
                "LOCAL_WORKERS": "1",
                "EXECUTOR": "local",
            }
        )
        ctx = AppContext.create(replay_settings)
        migrate.upgrade(ctx.engine, bucket_seconds=replay_settings.bucket_seconds)
        set_context(ctx)
        with _progress(-1, "replay") as bar:

            def progress(message: str) -> None:
                bar.set_description_str(message[:70])
                bar.update(1)
                if not bar.disable:
                    return
                print(message, file=sys.stderr)

            report = replay_nab(
                ctx,
                Path(args.data),
                Path(args.labels) if args.labels else None,
                out,
                detector=args.detector,
                estimator=args.estimator,
                categories=args.category or None,
                window_hours=args.window_hours,
                progress=progress,
            )
        (out / f"{args.detector}_summary.json").write_text(json.dumps(report.as_dict(), indent=1))
        print(report.table())
        print(
            f"results in {out / args.detector}; summary {out / (args.detector + '_summary.json')}"
        )
    finally:
        set_context(None)
        azurite.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not report.failed_runs else 1


def cmd_demo(args, settings: Settings) -> int:
    from shared.demo import run_demo

    return run_demo(settings, args)


# ------------------------------------------------------------------------------ parser


def _fleet_options(p: argparse.ArgumentParser, devices: int, sensors: int, hours: float) -> None:
    p.add_argument("--devices", type=int, default=devices, help=f"devices (default {devices})")
    p.add_argument(
        "--sensors", type=int, default=sensors, help=f"sensors per device (default {sensors})"
    )
    p.add_argument("--hours", type=float, default=hours, help=f"hours of readings ({hours:g})")
    p.add_argument("--interval", type=int, default=5, help="seconds between readings (5)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--anomaly-share",
        type=float,
        default=0.3,
        help="share of sensors given one injected anomaly (0.3)",
    )
    p.add_argument(
        "--anomaly-minutes",
        type=float,
        default=60,
        help="inject anomalies only in the last N minutes (60)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="simulate, ingest, train, run the timer, record, summarise")
    _fleet_options(p, devices=6, sensors=5, hours=4)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("db", help="database migrations")
    p.add_argument("action", choices=["upgrade", "sql"])
    p.add_argument("--url", default="mssql+pyodbc://", help="dialect URL for `db sql`")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("aggregates", help="rebuild or check the bucket aggregates")
    p.add_argument("action", choices=["rebuild", "check"])
    p.add_argument("--bucket-seconds", type=int, help="width (default: BUCKET_SECONDS)")
    p.add_argument("--start", help="rebuild only buckets from this time (UTC)")
    p.add_argument("--end", help="rebuild only buckets before this time (UTC)")
    p.add_argument("--drop-others", action="store_true", help="stop maintaining every other width")
    p.set_defaults(func=cmd_aggregates)

    p = sub.add_parser("simulate", help="generate readings with injected anomalies")
    _fleet_options(p, devices=3, sensors=5, hours=4)
    p.add_argument("--end", help="end of the readings (default: the latest schedule occurrence)")
    p.add_argument(
        "--to",
        choices=["ingest", "eventhub", "csv"],
        default="ingest",
        help="ingest locally through the Event Hubs function (default), send to a "
        "real Event Hub, or write a CSV",
    )
    p.add_argument("--csv", default="readings.csv", help="CSV path for --to csv")
    p.add_argument("--labels", help="write the injected anomalies to this JSON file")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("import", help="import CSV readings")
    p.add_argument("files", nargs="+")
    p.add_argument("--device", help="device id for timestamp,value files")
    p.add_argument("--sensor", help="sensor id for timestamp,value files")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("train", help="train, register and activate models")
    p.add_argument("--start", help="training window start (default: end - TRAIN_WINDOW_HOURS)")
    p.add_argument("--end", help="training window end (default: now)")
    p.add_argument("--hours", type=float, help="training window length in hours")
    p.add_argument("--device", action="append", help="only this device (repeatable)")
    p.add_argument("--sensor", action="append", help="only DEVICE/SENSOR (repeatable)")
    p.add_argument(
        "--estimator",
        default="baseline",
        help="baseline (default detector), ocsvm (reference), isolation_forest or lof",
    )
    p.add_argument(
        "--due",
        action="store_true",
        help="retrain as the scheduled_training timer does: every sensor with no model or a "
        "model older than TRAINING_SCHEDULE's latest occurrence, over the trailing "
        "TRAIN_WINDOW_HOURS (--end: as if now were END)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list, activate or roll back model versions")
    p.add_argument("action", choices=["list", "activate", "rollback"])
    p.add_argument("--device")
    p.add_argument("--sensor")
    p.add_argument("--version", type=int)
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("run", help="score one window now and record it")
    p.add_argument("--at", help="window end (default: the latest schedule occurrence)")
    p.add_argument("--window-minutes", type=float, help="window length (default: schedule's)")
    p.add_argument("--device", action="append")
    p.add_argument("--sensor", action="append", help="DEVICE/SENSOR (repeatable)")
    p.add_argument("--rerun", action="store_true", help="new attempt even if a run exists")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tick", help="fire the timer function once (catches up due windows)")
    p.set_defaults(func=cmd_tick)

    p = sub.add_parser("status", help="one run's status, counts, timings and errors")
    p.add_argument("run_id")
    p.add_argument("--errors", type=int, default=50, help="errors to show (50)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("runs", help="recent runs as a table")
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(
        "anomalies", help="anomaly events (one per incident), newest first; show ID: its buckets"
    )
    p.add_argument("--device")
    p.add_argument("--sensor")
    p.add_argument("--run-id", help="events of the sensors this run scored, in its window")
    p.add_argument("--since", "--start", help="events that end after this time")
    p.add_argument("--until", "--end", help="events that start before this time")
    p.add_argument("--status", help="open or closed")
    p.add_argument("--min-score", type=float, help="only events with this peak score or more")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_anomalies, anomalies_action="list")
    show = p.add_subparsers(dest="anomalies_action", required=False).add_parser(
        "show", help="one event with every bucket of its span"
    )
    show.add_argument("event_id")

    # Alerts and feedback (shared.alerts, shared.feedback) declare their own commands.
    from shared.alerts.cli import add_parser as add_alerts_parser
    from shared.feedback.cli import add_parser as add_feedback_parser

    add_alerts_parser(sub)
    add_feedback_parser(sub)

    p = sub.add_parser("report", help="write a run's HTML report (no RUN_ID: all recent runs)")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--out", help="file (default DATA_DIR/reports/<run_id>.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="replay the product over labelled data (NAB layout)")
    p.add_argument("benchmark", choices=["nab"])
    p.add_argument("--data", required=True, help="folder of <category>/<file>.csv series")
    p.add_argument("--labels", help="NAB combined label windows (JSON), for the summary")
    p.add_argument("--out", required=True, help="results folder (NAB layout)")
    p.add_argument("--detector", default="product", help="results name (product)")
    p.add_argument("--estimator", help="estimator template (default: the default detector)")
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.add_argument(
        "--bucket-seconds",
        type=int,
        default=300,
        help="bucket length (300: NAB's series are sampled every 5 minutes or slower)",
    )
    p.add_argument("--window-hours", type=float, default=24.0, help="scheduled window length (24)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("azureml", help="Azure ML: create/update the cluster and environment")
    p.add_argument("action", choices=["provision"])
    p.set_defaults(func=cmd_azureml)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(level=args.log_level or "WARNING", stream=sys.stderr, json_lines=False)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
