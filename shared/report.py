"""Run reports: an HTML page per run that a person would rather look at than read.

The page shows the run's status, window, counts and time per stage, the run's anomaly events
(one per incident: those of the sensors it scored that overlap its window, ``shared.events``), a
table of the sensors with anomalies, one plot per anomalous sensor (bucket mean as a line, the
min-max range as a band, the range the mean was expected in as a dashed green band, flagged
buckets as red dots, event spans shaded, each event's explanation in its tooltip and in the
events table), and the run's errors.
Plots are inline SVG drawn here: the page has no scripts and no external assets, so it renders
the same from a blob, a browser or an e-mail, with no network. An overview page lists recent
runs the same way.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, true

from shared.context import AppContext
from shared.db.schema import predictions
from shared.events import AnomalyEvent, EventFilters, list_events
from shared.runs import records

MAX_PLOTS = 40
# Rows of the flagged-sensor and event tables at most (the page says when more exist).
MAX_SENSOR_ROWS = 1000
MAX_EVENT_ROWS = 1000
WIDTH, HEIGHT, PAD = 720, 180, 36

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2328}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.muted{color:#656d76} table{border-collapse:collapse;font-size:13px}
td,th{padding:4px 10px;border-bottom:1px solid #d0d7de;text-align:left}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}
.completed{background:#1a7f37}.partial{background:#bf8700}.failed{background:#cf222e}
.pending,.submitted,.scoring{background:#0969da}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #d0d7de;border-radius:8px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:20px}
.plot{border:1px solid #d0d7de;border-radius:6px;margin:6px 0 18px;background:#fff}
.plot .band{fill:#ddf4ff}.plot .line{fill:none;stroke:#0969da;stroke-width:1.5}
.plot .flag{fill:#cf222e}.plot text{font-size:11px;fill:#656d76}
.plot .axis{stroke:#d0d7de}.plot .event{fill:#ffebe9;stroke:#ff8182;stroke-width:1}
.plot .expected{fill:#2da44e;fill-opacity:.18;stroke:#1a7f37;stroke-width:1;stroke-dasharray:4 3}
td.why{max-width:520px;font-size:12px}
"""


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _table(
    rows: Sequence[dict], columns: Sequence[tuple[str, str]], numeric=(), classes=None
) -> str:
    classes = {**{k: "num" for k in numeric}, **(classes or {})}
    head = "".join(f"<th>{_e(label)}</th>" for _, label in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class={classes[k]}>{_e(r.get(k))}</td>"
            if k in classes
            else f"<td>{_e(r.get(k))}</td>"
            for k, _ in columns
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _expected(point: tuple) -> tuple[float, float] | None:
    """A point's expected band (its 6th and 7th values), when it has a finite one."""
    if len(point) < 7 or not (_finite(point[5]) and _finite(point[6])):
        return None
    return point[5], point[6]


def why(explanation: dict | None) -> str:
    """An explanation as one sentence (its summary), or why there is none."""
    if not explanation:
        return "no explanation (scored before explanations existed)"
    text = str(explanation.get("summary") or explanation.get("comparison") or "")
    version = explanation.get("model_version")
    return f"{text} [model version {version}]" if version is not None else text


def sensor_plot(
    device: str, sensor: str, points: Sequence[tuple], events: Sequence[AnomalyEvent] = ()
) -> str:
    """Inline SVG of one sensor's window: (bucket_start, mean, min, max, is_anomaly[,
    expected_low, expected_high]) points, with the spans of ``events`` (clipped to the window)
    shaded behind them and the band the mean was expected in (where the points have one)."""
    points = sorted(points, key=lambda p: p[0])
    t0, t1 = points[0][0], points[-1][0]
    span = max((t1 - t0).total_seconds(), 1.0)
    # Aggregates may be null (or NaN) in stored predictions: such buckets are left out of the
    # line and band, and a flag on one sits on the axis (a report never fails on a value).
    valued = [p for p in points if all(_finite(v) for v in p[1:4])]
    bands = [(p[0], band) for p in points if (band := _expected(p)) is not None]
    lows = [p[2] for p in valued] + [b[0] for _, b in bands] or [0.0]
    highs = [p[3] for p in valued] + [b[1] for _, b in bands] or [1.0]
    lo, hi = min(lows), max(highs)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    margin = (hi - lo) * 0.05
    lo, hi = lo - margin, hi + margin

    def x(t: datetime) -> float:
        return PAD + (WIDTH - 2 * PAD) * (t - t0).total_seconds() / span

    def y(v: float) -> float:
        return HEIGHT - PAD + (2 * PAD - HEIGHT) * (v - lo) / (hi - lo)

    band = (
        " ".join(f"{x(p[0]):.1f},{y(p[3]):.1f}" for p in valued)
        + " "
        + " ".join(f"{x(p[0]):.1f},{y(p[2]):.1f}" for p in reversed(valued))
    )
    line = " ".join(f"{x(p[0]):.1f},{y(p[1]):.1f}" for p in valued)
    # The expected band: one polygon per run of consecutive buckets that have one.
    runs: list[list] = []
    for point in points:
        band_here = _expected(point)
        if band_here is None:
            runs.append([])
        else:
            if not runs or not runs[-1]:
                runs.append([])
            runs[-1].append((point[0], band_here))
    expected = "".join(
        "<polygon class=expected points='"
        + " ".join(f"{x(t):.1f},{y(b[1]):.1f}" for t, b in run)
        + " "
        + " ".join(f"{x(t):.1f},{y(b[0]):.1f}" for t, b in reversed(run))
        + "'><title>expected range of the mean</title></polygon>"
        for run in runs
        if len(run) >= 2
    )

    def number(value) -> str:
        return f"{value:.3f}" if _finite(value) else "n/a"

    def expected_text(point) -> str:
        band_here = _expected(point)
        return f"; expected {number(band_here[0])} to {number(band_here[1])}" if band_here else ""

    flags = "".join(
        f"<circle class=flag cx={x(p[0]):.1f} "
        f"cy={y(p[1]) if _finite(p[1]) else HEIGHT - PAD:.1f} r=4>"
        f"<title>{p[0]:%H:%M} mean {number(p[1])} (min {number(p[2])}, max {number(p[3])})"
        f"{expected_text(p)}</title></circle>"
        for p in points
        if p[4]
    )
    n_flags = sum(1 for p in points if p[4])
    spans = []
    for event in events:
        left, right = max(event.start, t0), min(event.last_bucket_start, t1)
        if left > right:
            continue
        x0, x1 = x(left), x(right)
        spans.append(
            f"<rect class=event x={x0 - 2:.1f} y={PAD / 2:.1f} width={x1 - x0 + 4:.1f} "
            f"height={HEIGHT - 1.5 * PAD:.1f} data-event='{_e(event.event_id)}'>"
            f"<title>event {_e(event.event_id)}: {event.start:%Y-%m-%d %H:%M} to "
            f"{event.end:%H:%M}, {event.n_buckets} flagged, peak {event.peak_score:.3f}, "
            f"{_e(event.status)}. Why: {_e(why(event.explanation))}</title></rect>"
        )
    return (
        f"<svg class=plot width={WIDTH} height={HEIGHT} viewBox='0 0 {WIDTH} {HEIGHT}' "
        f"role=img aria-label='{_e(device)}/{_e(sensor)}: {n_flags} flagged buckets' "
        f"data-sensor='{_e(device)}/{_e(sensor)}'>"
        f"<line class=axis x1={PAD} y1={HEIGHT - PAD} x2={WIDTH - PAD} y2={HEIGHT - PAD} />"
        f"{''.join(spans)}<polygon class=band points='{band}' />{expected}"
        f"<polyline class=line points='{line}' />{flags}"
        f"<text x={PAD} y=16>{_e(device)} / {_e(sensor)}</text>"
        f"<text x={PAD} y={HEIGHT - 12}>{t0:%H:%M}</text>"
        f"<text x={WIDTH - PAD - 30} y={HEIGHT - 12}>{t1:%H:%M}</text>"
        f"<text x=2 y={y(hi - margin) + 4:.0f}>{hi - margin:.4g}</text>"
        f"<text x=2 y={y(lo + margin) + 4:.0f}>{lo + margin:.4g}</text></svg>"
    )


def _naive(ts):
    """A timestamp as SQL returned it: SQLite gives MIN/MAX of a timestamp back as text."""
    return datetime.fromisoformat(ts) if isinstance(ts, str) else ts


def build_run_report(ctx: AppContext, run_id: str) -> str | None:
    """The HTML report of a run, or None if there is no such run."""
    run = records.get_run(ctx.engine, run_id)
    if run is None:
        return None
    with ctx.engine.connect() as conn:
        # Summed in SQL, one row per flagged sensor, at most MAX_SENSOR_ROWS of them: a run of
        # a large fleet may flag a million buckets, which never cross to Python.
        n_flagged = func.count().label("n")
        flagged = conn.execute(
            select(
                predictions.c.device,
                predictions.c.sensor,
                n_flagged,
                func.max(predictions.c.score),
                func.min(predictions.c.bucket_start),
                func.max(predictions.c.bucket_start),
            )
            .where(predictions.c.run_id == run_id, predictions.c.is_anomaly == true())
            .group_by(predictions.c.device, predictions.c.sensor)
            .order_by(n_flagged.desc(), predictions.c.device, predictions.c.sensor)
            .limit(MAX_SENSOR_ROWS + 1)
        ).all()
        sensors_cut = len(flagged) > MAX_SENSOR_ROWS
        flagged = flagged[:MAX_SENSOR_ROWS]
        ranked = [(d, s) for d, s, *_ in flagged[:MAX_PLOTS]]
        series: dict[tuple[str, str], list] = defaultdict(list)
        for device in sorted({d for d, _ in ranked}):
            sensors = [s for d, s in ranked if d == device]
            for row in conn.execute(
                select(
                    predictions.c.sensor,
                    predictions.c.bucket_start,
                    predictions.c.mean,
                    predictions.c.min,
                    predictions.c.max,
                    predictions.c.is_anomaly,
                    predictions.c.expected_low,
                    predictions.c.expected_high,
                ).where(
                    predictions.c.run_id == run_id,
                    predictions.c.device == device,
                    predictions.c.sensor.in_(sensors),
                )
            ):
                series[(device, row.sensor)].append(
                    (
                        row.bucket_start,
                        row.mean,
                        row.min,
                        row.max,
                        bool(row.is_anomaly),
                        row.expected_low,
                        row.expected_high,
                    )
                )
        events = list_events(
            conn, EventFilters(run_id=run_id), limit=MAX_EVENT_ROWS + 1, newest_first=False
        )
        events_cut = len(events) > MAX_EVENT_ROWS
        events = events[:MAX_EVENT_ROWS]
    errors = records.run_errors_of(ctx.engine, run_id, limit=200)
    events_of: dict[tuple[str, str], list[AnomalyEvent]] = defaultdict(list)
    for event in events:
        events_of[(event.device, event.sensor)].append(event)

    counts = run.as_dict()["counts"]
    cards = "".join(
        f"<div class=card><b>{_e(v)}</b><span class=muted>{_e(k.replace('_', ' '))}</span></div>"
        for k, v in counts.items()
    )
    timings = [{"stage": k, "seconds": f"{v:.2f}"} for k, v in run.timings.items()]
    sensor_rows = [
        {
            "device": d,
            "sensor": s,
            "flagged": n,
            "max_score": f"{top:.3f}",
            "first": f"{_naive(first):%Y-%m-%d %H:%M}",
            "last": f"{_naive(last):%Y-%m-%d %H:%M}",
        }
        for d, s, n, top, first, last in flagged
    ]
    plots = "".join(
        sensor_plot(d, s, series[(d, s)], events_of[(d, s)]) for d, s in ranked if series[(d, s)]
    )
    event_rows = [
        {
            "onset": f"{e.start:%Y-%m-%d %H:%M}"
            + (" (before this window)" if e.start < run.window.start else ""),
            "end": f"{e.end:%Y-%m-%d %H:%M}",
            "device": e.device,
            "sensor": e.sensor,
            "flagged": e.n_buckets,
            "peak": f"{e.peak_score:.3f}",
            "status": e.status,
            "why": why(e.explanation),
            "event_id": e.event_id,
        }
        for e in events
    ]
    body = [
        f"<h1>Run {_e(run.run_id)} <span class='status {_e(run.status)}'>{_e(run.status)}</span>"
        f"</h1><div class=muted>window {_e(run.window.start)} to {_e(run.window.end)} UTC · "
        f"trigger {_e(run.trigger)} · executor {_e(run.executor)}"
        + (
            f" · job <a href='{_e(run.job_url)}'>{_e(run.job_id)}</a>"
            if run.job_url
            else f" · job {_e(run.job_id)}"
        )
        + "</div>",
    ]
    if run.error:
        body.append(f"<p><b>Reason:</b> {_e(run.error)}</p>")
    body.append(f"<div class=cards>{cards}</div>")
    body.append(
        "<h2>Time per stage</h2>"
        + _table(timings, [("stage", "stage"), ("seconds", "seconds")], numeric={"seconds"})
    )
    body.append(
        f"<h2>Anomaly events ({len(event_rows)}{'+, the first shown' if events_cut else ''})"
        "</h2><p class=muted>One per incident: flagged "
        "buckets of a sensor close together are one event, alerted once at its onset.</p>"
    )
    body.append(
        _table(
            event_rows,
            [
                ("onset", "onset (UTC)"),
                ("end", "end"),
                ("device", "device"),
                ("sensor", "sensor"),
                ("flagged", "flagged buckets"),
                ("peak", "peak score"),
                ("status", "status"),
                ("why", "why (the peak bucket)"),
                ("event_id", "event"),
            ],
            numeric={"flagged", "peak"},
            classes={"why": "why"},
        )
        if event_rows
        else "<p class=muted>No anomaly events in this run.</p>"
    )
    more = "+, those with most flags shown" if sensors_cut else ""
    body.append(f"<h2>Sensors with anomalies ({len(sensor_rows)}{more})</h2>")
    body.append(
        _table(
            sensor_rows,
            [
                ("device", "device"),
                ("sensor", "sensor"),
                ("flagged", "flagged buckets"),
                ("max_score", "max score"),
                ("first", "first"),
                ("last", "last"),
            ],
            numeric={"flagged", "max_score"},
        )
        if sensor_rows
        else "<p class=muted>No anomalies in this run.</p>"
    )
    if plots:
        shown = f" (the {len(ranked)} with most flags)" if len(flagged) > len(ranked) else ""
        body.append(
            f"<h2>Anomalous sensors{shown}</h2><p class=muted>Bucket mean (line), "
            f"min-max range (blue band), the range the mean was expected in (green dashed "
            f"band), flagged buckets (red), anomaly events (shaded).</p>{plots}"
        )
    # ---- operators (shared.feedback, shared.alerts): verdicts, precision, alert delivery
    from shared.feedback.report import operator_sections

    body.append(operator_sections(ctx, run_id, events))
    if errors:
        body.append(
            f"<h2>Errors ({len(errors)})</h2>"
            + _table(
                errors,
                [
                    ("kind", "kind"),
                    ("chunk_id", "chunk"),
                    ("device", "device"),
                    ("sensor", "sensor"),
                    ("reason", "reason"),
                ],
            )
        )
    return _page(f"Run {run.run_id}", "".join(body))


def build_runs_overview(ctx: AppContext, limit: int = 50) -> str:
    """An operator's view across runs: states, durations, anomaly counts, failures."""
    rows = []
    for r in records.list_runs(ctx.engine, limit=limit):
        duration = (r.finished_at - r.created_at).total_seconds() if r.finished_at else None
        rows.append(
            {
                "run_id": r.run_id,
                "status": r.status,
                "window": f"{r.window.end:%Y-%m-%d %H:%M}",
                "trigger": r.trigger,
                "sensors": r.n_sensors,
                "anomalies": r.n_anomalies,
                "failures": r.n_sensor_errors + r.n_chunks_failed,
                "duration": "" if duration is None else f"{duration:.1f}s",
                "reason": r.error or "",
            }
        )
    return _page(
        "Scoring runs",
        "<h1>Recent runs</h1>"
        + _table(
            rows,
            [
                ("run_id", "run"),
                ("status", "status"),
                ("window", "window end (UTC)"),
                ("trigger", "trigger"),
                ("sensors", "sensors"),
                ("anomalies", "anomalies"),
                ("failures", "failures"),
                ("duration", "duration"),
                ("reason", "reason"),
            ],
            numeric={"sensors", "anomalies", "failures"},
        ),
    )
