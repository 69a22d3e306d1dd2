"""The run report's operator sections: verdicts on the run's events, the operator's precision
(feedback summary) for its sensors and the fleet, and the alerts the run raised with their
delivery state (a failing receiver shows here). Called by ``shared.report``."""

from __future__ import annotations

from collections.abc import Sequence

from shared.context import AppContext


def operator_sections(ctx: AppContext, run_id: str, events: Sequence) -> str:
    from shared.alerts.delivery import run_alert_summary
    from shared.feedback.service import feedback_for, summary
    from shared.report import _table

    with ctx.engine.connect() as conn:
        given = feedback_for(conn, [e.event_id for e in events])
        fleet = summary(conn)
        alerts = run_alert_summary(conn, run_id, errors=20)
    body = []
    rows = [
        {
            "event_id": e.event_id,
            "sensor": f"{e.device}/{e.sensor}",
            "verdict": f[-1].verdict,
            "author": f[-1].author,
            "comment": f[-1].comment,
            "given": f"{f[-1].created_at:%Y-%m-%d %H:%M}",
        }
        for e in events
        if (f := given.get(e.event_id))
    ]
    body.append(
        f"<h2>Feedback ({len(rows)} of {len(events)} events)</h2>"
        "<p class=muted>Operators' verdicts (POST /api/anomalies/{event_id}/feedback): "
        "confirmed, false_alarm (trained as normal, sensor sensitivity raised), expected "
        "(no alerts over its span).</p>"
    )
    if rows:
        body.append(
            _table(
                rows,
                [
                    ("event_id", "event"),
                    ("sensor", "sensor"),
                    ("verdict", "verdict"),
                    ("author", "author"),
                    ("comment", "comment"),
                    ("given", "given (UTC)"),
                ],
            )
        )
    run_sensors = {(e.device, e.sensor) for e in events}
    shares = [
        {
            "scope": "fleet",
            **fleet["fleet"],
        },
        *(
            {"scope": f"{s['device']}/{s['sensor']}", **s}
            for s in fleet["sensors"]
            if (s["device"], s["sensor"]) in run_sensors
        ),
    ]
    for row in shares:
        for key in ("confirmed_share", "false_alarm_share"):
            row[key] = "" if row[key] is None else f"{row[key]:.0%}"
    body.append(
        "<h3>Operator's precision (all feedback so far)</h3>"
        + _table(
            shares,
            [
                ("scope", "scope"),
                ("confirmed", "confirmed"),
                ("false_alarm", "false alarms"),
                ("expected", "expected"),
                ("confirmed_share", "confirmed share"),
                ("false_alarm_share", "false-alarm share"),
            ],
            numeric={"confirmed", "false_alarm", "expected"},
        )
    )
    body.append(
        "<h2>Alerts</h2>"
        f"<p>{alerts['sent']} sent · {alerts['pending']} pending · {alerts['failed']} failed"
        " <span class=muted>(notifications this run's recording raised)</span></p>"
    )
    if alerts["errors"]:
        body.append(
            _table(
                alerts["errors"],
                [
                    ("event_id", "event"),
                    ("state", "state"),
                    ("target", "target"),
                    ("status", "status"),
                    ("attempts", "attempts"),
                    ("last_error", "last error"),
                ],
                numeric={"attempts"},
            )
        )
    return "".join(body)
