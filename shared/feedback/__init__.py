"""Operator feedback on anomaly events (confirmed / false alarm / expected) and what it changes:
alerts suppressed over expected spans, false alarms kept as normal by training and a raised
per-sensor sensitivity, and the operator's own precision figure (:mod:`.service`)."""

from shared.feedback.service import (
    CONFIRMED,
    EXPECTED,
    FALSE_ALARM,
    VERDICTS,
    Feedback,
    FeedbackError,
    expected_spans,
    false_alarm_spans,
    feedback_for,
    give_feedback,
    sensitivity_overrides,
    summary,
    with_sensitivity,
)

__all__ = [
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
]
