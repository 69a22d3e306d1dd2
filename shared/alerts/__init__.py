"""Alerts: notifications of anomaly events where operators already look.

When recording opens, escalates or closes an anomaly event (``shared.events``), the
notifications it calls for go to the outbox in the same transaction (:mod:`.outbox`), filtered
by the alert rules (:mod:`.rules`) and operators' ``expected`` feedback; they are sent after
the commit, and by the ``deliver_alerts`` timer for leftovers, to an Event Grid custom topic
(CloudEvents 1.0) and/or signed HTTPS webhooks (:mod:`.delivery`), each receiver once per
state change. HTTP handlers for rules, mutes and the delivery log are in :mod:`.http`, their
declarations (routes and OpenAPI) in :mod:`.routes`.

The names below are loaded on first use: ``function_app`` imports :mod:`.routes` at cold start,
which must not pull SQLAlchemy in through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "deliver_pending": "shared.alerts.delivery",
    "deliver_quietly": "shared.alerts.delivery",
    "list_notifications": "shared.alerts.delivery",
    "run_alert_summary": "shared.alerts.delivery",
    "verify_signature": "shared.alerts.delivery",
    "enqueue_for_chunk": "shared.alerts.outbox",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shared.alerts' has no attribute {name!r}")
