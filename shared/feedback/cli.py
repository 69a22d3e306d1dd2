"""``python -m shared.cli feedback ...``: verdicts on anomaly events and the operator's precision.

feedback give EVENT_ID --verdict confirmed|false_alarm|expected [--comment T] [--author A]
              [--span-start TIME --span-end TIME]      (expected only)
feedback show EVENT_ID             every verdict given on the event
feedback summary [--device D] [--sensor S] [--since T] [--until T] [--period day|week]
feedback sensitivities             per-sensor sensitivities raised by false alarms
"""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("feedback", help="verdicts on anomaly events; the operator's precision")
    actions = p.add_subparsers(dest="feedback_action", required=True)
    give = actions.add_parser("give", help="give a verdict on an event")
    give.add_argument("event_id")
    give.add_argument("--verdict", required=True, choices=["confirmed", "false_alarm", "expected"])
    give.add_argument("--comment")
    give.add_argument("--author")
    give.add_argument("--span-start", help="expected: suppress alerts from this time")
    give.add_argument("--span-end", help="expected: until this time")
    show = actions.add_parser("show", help="every verdict given on an event")
    show.add_argument("event_id")
    summary = actions.add_parser("summary", help="verdicts per sensor and fleet, over time")
    summary.add_argument("--device")
    summary.add_argument("--sensor")
    summary.add_argument("--since")
    summary.add_argument("--until")
    summary.add_argument("--period", choices=["day", "week"], default="week")
    actions.add_parser("sensitivities", help="per-sensor sensitivities raised by false alarms")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from shared.cli import LocalServices, _time, table
    from shared.events import get_event
    from shared.feedback import service

    with LocalServices(settings) as ctx:
        if args.feedback_action in ("give", "show"):
            event = get_event(ctx.engine, args.event_id)
            if event is None:
                print(f"no anomaly event {args.event_id!r}", file=sys.stderr)
                return 2
        if args.feedback_action == "give":
            span = None
            if args.span_start or args.span_end:
                if not (args.span_start and args.span_end):
                    print("--span-start and --span-end go together", file=sys.stderr)
                    return 2
                span = (_time(args.span_start), _time(args.span_end))
            try:
                with ctx.engine.begin() as conn:
                    given = service.give_feedback(
                        conn,
                        event,
                        args.verdict,
                        comment=args.comment,
                        author=args.author,
                        span=span,
                        default_sensitivity=ctx.settings.sensitivity,
                    )
                    sensitivity = service.sensitivity_overrides(conn).get(
                        (event.device, event.sensor)
                    )
            except service.FeedbackError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(json.dumps({**given.as_dict(), "sensitivity": sensitivity}, indent=1))
            return 0
        with ctx.engine.connect() as conn:
            if args.feedback_action == "show":
                rows = [
                    f.as_dict()
                    for f in service.feedback_for(conn, [event.event_id]).get(event.event_id, [])
                ]
                print(table(rows, ["created_at", "verdict", "author", "comment", "span_start"]))
                return 0
            if args.feedback_action == "sensitivities":
                rows = service.list_sensitivities(conn)
                print(table(rows, ["device", "sensor", "sensitivity", "updated_at", "reason"]))
                return 0
            result = service.summary(
                conn,
                device=args.device,
                sensor=args.sensor,
                since=_time(args.since) if args.since else None,
                until=_time(args.until) if args.until else None,
                period=args.period,
            )
    columns = ["confirmed", "false_alarm", "expected", "confirmed_share", "false_alarm_share"]
    print(table([{"scope": "fleet", **result["fleet"]}], ["scope", *columns]))
    print()
    print(table(result["sensors"], ["device", "sensor", *columns]))
    print()
    print(table(result["over_time"], ["period_start", *columns]))
    return 0
