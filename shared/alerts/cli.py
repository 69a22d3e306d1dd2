"""``python -m shared.cli alerts ...``: rules, mutes, the delivery log, sending what is due.

alerts rules list
alerts rules set [--device D [--sensor S]] [--min-score X] [--min-duration MIN]
                 [--quiet HH:MM-HH:MM | --no-quiet] [--comment TEXT]
alerts rules delete RULE_ID
alerts mute [--device D [--sensor S]] (--minutes N | --until TIME) [--reason TEXT]
alerts unmute [--device D [--sensor S]]
alerts list [--run-id R] [--event-id E] [--status pending|sent|failed]
alerts deliver                     send the due notifications now (what the timer does)
"""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("alerts", help="alert rules, mutes, notifications sent or pending")
    actions = p.add_subparsers(dest="alerts_action", required=True)
    rules_p = actions.add_parser("rules", help="list, set or delete alert rules")
    rules_p.add_argument("rules_action", choices=["list", "set", "delete"])
    rules_p.add_argument("rule_id", nargs="?", help="for delete")
    _scope(rules_p)
    rules_p.add_argument("--min-score", type=float, help="peak score an event must reach")
    rules_p.add_argument("--min-duration", type=float, help="minutes an event must last")
    rules_p.add_argument("--quiet", help="quiet hours HH:MM-HH:MM (UTC) of event onsets")
    rules_p.add_argument("--no-quiet", action="store_true", help="clear the quiet hours")
    rules_p.add_argument("--comment")
    mute_p = actions.add_parser("mute", help="mute a scope for some minutes or until a time")
    _scope(mute_p)
    mute_p.add_argument("--minutes", type=float)
    mute_p.add_argument("--until", help="end of the mute (ISO-8601)")
    mute_p.add_argument("--reason")
    unmute_p = actions.add_parser("unmute", help="end a scope's mute now")
    _scope(unmute_p)
    list_p = actions.add_parser("list", help="notifications, newest first")
    list_p.add_argument("--run-id")
    list_p.add_argument("--event-id")
    list_p.add_argument("--status", choices=["pending", "sent", "failed"])
    list_p.add_argument("--limit", type=int, default=50)
    actions.add_parser("deliver", help="send the due notifications now")
    p.set_defaults(func=run)


def _scope(p) -> None:
    p.add_argument("--device", help="scope: this device (no --device: the fleet)")
    p.add_argument("--sensor", help="scope: this sensor of --device")


def run(args, settings) -> int:
    from shared.alerts import rules
    from shared.alerts.delivery import deliver_pending, list_notifications
    from shared.cli import LocalServices, _time, table
    from shared.clock import utcnow

    try:
        with LocalServices(settings) as ctx:
            if args.alerts_action == "list":
                found = list_notifications(
                    ctx.engine, args.run_id, args.event_id, args.status, args.limit
                )
                for row in found:
                    row["sensor"] = f"{row['device']}/{row['sensor']}"
                print(
                    table(
                        found,
                        ["notification_id", "event_id", "state", "sensor", "target", "status"]
                        + ["attempts", "created_at", "last_error"],
                    )
                )
                return 0
            if args.alerts_action == "deliver":
                print(json.dumps(deliver_pending(ctx.engine, ctx.settings).as_dict()))
                return 0
            with ctx.engine.begin() as conn:
                if args.alerts_action == "mute":
                    until = _time(args.until) if args.until else None
                    end = rules.mute_until(args.minutes, until, utcnow())
                    rule = rules.mute(conn, args.device, args.sensor, end, args.reason)
                    print(json.dumps(rule.as_dict(), indent=1))
                    return 0
                if args.alerts_action == "unmute":
                    rule = rules.unmute(conn, args.device, args.sensor)
                    print("nothing is muted there" if rule is None else "unmuted")
                    return 0
                if args.rules_action == "delete":
                    if not args.rule_id:
                        print("give the RULE_ID to delete", file=sys.stderr)
                        return 2
                    if not rules.delete_rule(conn, args.rule_id):
                        print(f"no rule {args.rule_id!r}", file=sys.stderr)
                        return 2
                    print(f"deleted {args.rule_id}")
                    return 0
                if args.rules_action == "set":
                    fields = {}
                    if args.min_score is not None:
                        fields["min_score"] = args.min_score
                    if args.min_duration is not None:
                        fields["min_duration_minutes"] = args.min_duration
                    if args.no_quiet:
                        fields["quiet_start"] = fields["quiet_end"] = None
                    elif args.quiet:
                        start, _, end = args.quiet.partition("-")
                        fields["quiet_start"], fields["quiet_end"] = start, end
                    if args.comment is not None:
                        fields["comment"] = args.comment
                    rule = rules.set_rule(conn, args.device, args.sensor, **fields)
                    print(json.dumps(rule.as_dict(), indent=1))
                    return 0
                found = [r.as_dict() for r in rules.list_rules(conn)]
            columns = ["rule_id", "scope", "device", "sensor", "min_score"]
            columns += ["min_duration_minutes", "quiet_start", "quiet_end", "muted_until"]
            print(table(found, [*columns, "mute_reason", "comment"]))
            return 0
    except rules.RuleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
