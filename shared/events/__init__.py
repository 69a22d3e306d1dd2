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
"""

from shared.events.model import CLOSED, OPEN, STATUSES, AnomalyEvent, event_id_for, segment
from shared.events.queries import (
    EventFilters,
    event_buckets,
    events_for,
    get_event,
    list_events,
    run_events,
)
from shared.events.tracking import EventChanges, update_events_for_chunk

__all__ = [
    "CLOSED",
    "OPEN",
    "STATUSES",
    "AnomalyEvent",
    "EventChanges",
    "EventFilters",
    "event_buckets",
    "event_id_for",
    "events_for",
    "get_event",
    "list_events",
    "run_events",
    "segment",
    "update_events_for_chunk",
]
