"""Operator feedback on anomaly events (confirmed / false alarm / expected) and what it changes:
alerts suppressed over expected spans, false alarms kept as normal by training and a raised
per-sensor sensitivity, and the operator's own precision figure (:mod:`.service`). HTTP handlers
in :mod:`.http`, their declarations in :mod:`.routes`.

The names below are loaded on first use (``function_app`` imports :mod:`.routes` at cold start).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = (
    "CONFIRMED",
    "EXPECTED",
    "FALSE_ALARM",
    "VERDICTS",
    "Feedback",
    "FeedbackError",
    "expected_spans",
    "false_alarm_spans",
    "feedback_for",
    "give_feedback",
    "sensitivity_overrides",
    "summary",
    "with_sensitivity",
)

__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module("shared.feedback.service"), name)
    raise AttributeError(f"module 'shared.feedback' has no attribute {name!r}")
