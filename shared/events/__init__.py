"""Anomaly events: one incident of one sensor, the unit an operator is alerted about.

Prediction rows (``predictions``) carry a graded ``score`` in [0, 1] and ``is_anomaly`` (the
score reached the sensitivity threshold). Flagged buckets of the same device/sensor fewer than
``EVENT_GAP_BUCKETS`` unflagged buckets apart (setting, default 300; bucket length
``BUCKET_SECONDS``) form one **event**: a stable id (a hash of device, sensor and onset), onset
(``start``, the first flagged bucket's start), ``end`` (end of the last flagged bucket),
``last_bucket_start``, peak score and bucket, onset score, the number of flagged buckets,
``status`` (``open`` while a flag in the sensor's next bucket would still join it, else
``closed``), the first and last run that flagged it, ``created_at``/``updated_at`` and
``explanation`` (why: the explanation of its peak bucket's prediction, ``scoring.explain``). Only
the onset is an alert: one alarm per incident, however many buckets it flags.

Events are kept up to date when a chunk's predictions are recorded (:mod:`.tracking`), by a
recompute from the stored predictions, so redelivered chunks and re-runs never duplicate an
event, and an event still open at the end of one run's window continues in the next run.
:mod:`.queries` reads them for the API, the CLI, the report and the NAB evaluation.

The names below are loaded on first use: ``function_app`` imports :mod:`.routes` at cold start,
which must not pull numpy, pandas or SQLAlchemy in through this package. HTTP handlers are in
:mod:`.http`, their declarations (routes and OpenAPI schemas) in :mod:`.routes`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CLOSED": "shared.events.model",
    "OPEN": "shared.events.model",
    "STATUSES": "shared.events.model",
    "AnomalyEvent": "shared.events.model",
    "event_id_for": "shared.events.model",
    "segment": "shared.events.model",
    "EventFilters": "shared.events.queries",
    "event_buckets": "shared.events.queries",
    "events_for": "shared.events.queries",
    "get_event": "shared.events.queries",
    "list_events": "shared.events.queries",
    "run_events": "shared.events.queries",
    "EventChanges": "shared.events.tracking",
    "update_events_for_chunk": "shared.events.tracking",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shared.events' has no attribute {name!r}")
