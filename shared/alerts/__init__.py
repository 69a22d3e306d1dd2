"""Alerts: notifications of anomaly events where operators already look.

When recording opens, escalates or closes an anomaly event (``shared.events``), the
notifications it calls for go to the outbox in the same transaction (:mod:`.outbox`), filtered
by the alert rules (:mod:`.rules`) and operators' ``expected`` feedback; they are sent after
the commit, and by the ``deliver_alerts`` timer for leftovers, to an Event Grid custom topic
(CloudEvents 1.0) and/or signed HTTPS webhooks (:mod:`.delivery`), each receiver once per
state change. HTTP handlers for rules, mutes and the delivery log are in :mod:`.http`.
"""

from shared.alerts.delivery import (
    deliver_pending,
    deliver_quietly,
    list_notifications,
    run_alert_summary,
    verify_signature,
)
from shared.alerts.outbox import enqueue_for_chunk

__all__ = [
    "deliver_pending",
    "deliver_quietly",
    "enqueue_for_chunk",
    "list_notifications",
    "run_alert_summary",
    "verify_signature",
]
