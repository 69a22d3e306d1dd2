"""The local demo: the whole job on embedded defaults, through the app's own trigger functions.

1. start Azurite if no storage is configured, create the SQLite database;
2. simulate a fleet (default 6 devices x 5 sensors, 4 hours of 5-second readings) with anomalies
   injected in the last window, and send it through the Event Hubs function;
3. train every sensor's model on the hours before that window;
4. fire the timer function, which runs the latest window: aggregate, chunk, score with the local
   executor; then deliver each predictions blob to the blob-trigger function, as the host would;
5. print a summary: run status, sensors scored, anomalies found against anomalies injected, and
   the time each stage took.

Running it again is harmless: readings, models and the run are all keyed, so nothing doubles.
"""

from __future__ import annotations

import sys
import time

from sqlalchemy import select, true

from shared.clock import utcnow
from shared.db.schema import predictions
from shared.runs import records
from shared.runs.windows import latest_window
from shared.settings import Settings


def run_demo(settings: Settings, args) -> int:
    from shared.cli import LocalServices, _fleet, ingest_fleet, score_and_record, table
    from shared.local.host import deliver_predictions, fire_timer
    from shared.models.training import train_models
    from shared.simulate import labelled_buckets

    say = print
    window = latest_window(settings.scoring_schedule, utcnow())
    args.anomaly_minutes = window.length.total_seconds() / 60
    fleet = _fleet(args, end=window.end)
    spec = fleet.spec
    stages: dict[str, float] = {}
    say(
        f"Demo: {spec.devices} devices x {spec.sensors_per_device} sensors, readings every "
        f"{spec.interval_seconds}s from {spec.start:%Y-%m-%d %H:%M} to {spec.end:%H:%M} UTC "
        f"({spec.n_steps * spec.n_sensors:,} readings); {len(fleet.anomalies)} anomalies "
        f"injected in the scored window {window}."
    )
    say(
        f"SQL: {settings.sql_url or settings.sql_server}; storage: "
        f"{'Azurite' if settings.uses_azurite else settings.storage.endpoint}; executor: "
        f"{settings.executor}"
    )
    with LocalServices(settings) as ctx:
        say("1/4 ingesting through the Event Hubs function ...")
        stages["ingest"] = ingest_fleet(fleet)

        say("2/4 training one model per sensor on the hours before the window ...")
        started = time.perf_counter()
        report = train_models(ctx, spec.start, window.start)
        stages["train"] = time.perf_counter() - started
        say(
            f"    trained {len(report.trained)}, already trained {len(report.already_trained)}, "
            f"too few buckets {len(report.too_few_buckets)}, failed {len(report.failed)}"
        )

        say("3/4 firing the timer function (scores the latest window) ...")
        started = time.perf_counter()
        fire_timer()
        stages["timer"] = time.perf_counter() - started
        run = _run_for(ctx, window)
        if run is None:  # the clock passed an occurrence meanwhile: run the window explicitly
            run, _ = score_and_record(ctx, window, "cli")
        say("4/4 delivering predictions blobs to the blob-trigger function ...")
        started = time.perf_counter()
        deliver_predictions(ctx, run.run_id)
        stages["record"] = time.perf_counter() - started
        records.set_timing(ctx.engine, run.run_id, "record", stages["record"])
        run = records.get_run(ctx.engine, run.run_id)
        with ctx.engine.connect() as conn:
            flagged = {
                (d, s, b)
                for d, s, b in conn.execute(
                    select(
                        predictions.c.device, predictions.c.sensor, predictions.c.bucket_start
                    ).where(predictions.c.run_id == run.run_id, predictions.c.is_anomaly == true())
                )
            }
        errors = records.run_errors_of(ctx.engine, run.run_id, limit=10)

    truth = labelled_buckets(fleet.anomalies, settings.bucket_seconds)
    truth = {k for k in truth if window.start <= k[2] < window.end}
    # Buckets an anomaly only grazes count neither way (see simulate.labelled_buckets).
    flagged -= labelled_buckets(fleet.anomalies, settings.bucket_seconds, 0) - truth
    hits = flagged & truth
    found = {
        (a.device, a.sensor, a.kind)
        for a in fleet.anomalies
        if any((a.device, a.sensor) == (d, s) for d, s, _ in hits)
    }
    precision = len(hits) / len(flagged) if flagged else 1.0
    recall = len(hits) / len(truth) if truth else 1.0
    say("")
    say(f"Run {run.run_id}: {run.status.upper()}" + (f" ({run.error})" if run.error else ""))
    say(f"  window            {run.window}")
    say(
        f"  sensors scored    {run.n_sensors} in {run.n_chunks} chunk(s); "
        f"{run.n_sensors_without_model} without a model; {run.n_sensor_errors} failed"
    )
    say(f"  predictions       {run.n_predictions:,} buckets, {run.n_anomalies} flagged")
    say(
        f"  injected          {len(fleet.anomalies)} anomalies; found {len(found)} "
        f"(at least one flagged bucket)"
    )
    say(
        f"  bucket precision  {precision:.2f}   recall {recall:.2f}  "
        f"({len(hits)} of {len(truth)} anomalous buckets flagged, {len(flagged)} flagged)"
    )
    timing_rows = [{"stage": k, "seconds": f"{v:.2f}"} for k, v in stages.items()]
    timing_rows += [{"stage": f"  run: {k}", "seconds": f"{v:.2f}"} for k, v in run.timings.items()]
    say("")
    say(table(timing_rows, ["stage", "seconds"]))
    if errors:
        say("")
        say(table(errors, ["kind", "device", "sensor", "reason"]))
    say("")
    say(
        "Next: python -m shared.cli runs | status "
        + run.run_id
        + " | anomalies | report "
        + run.run_id
    )
    sys.stdout.flush()
    return 0 if run.status in (records.COMPLETED, records.PARTIAL) else 1


def _run_for(ctx, window) -> records.Run | None:
    from shared.runs.records import RunFilters, run_id_for, run_key

    key = run_key(window, "timer", RunFilters())
    return records.get_run(ctx.engine, run_id_for(key, window))


__all__ = ["run_demo"]
