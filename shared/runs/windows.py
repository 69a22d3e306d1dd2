"""Scoring windows: half-open ``[start, end)`` intervals aligned to the NCRONTAB schedule.

A timer occurrence at ``t`` scores the window from the previous occurrence to ``t``, so windows
tile time with no gap and no overlap (the reference's ``BETWEEN now-1h AND now`` counted boundary
readings twice and drifted with the firing delay). Missed occurrences are caught up, oldest
first, up to a limit; older ones are left for an operator to run on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter


@dataclass(frozen=True, order=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self):
        if not self.start < self.end:
            raise ValueError(f"window start {self.start} must be before its end {self.end}")

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def _iter(schedule: str, at: datetime) -> croniter:
    return croniter(schedule, at, second_at_beginning=True)


def last_occurrence(schedule: str, now: datetime) -> datetime:
    """The latest occurrence of ``schedule`` at or before ``now``."""
    return _iter(schedule, now.replace(microsecond=0) + timedelta(seconds=1)).get_prev(datetime)


def window_ending(schedule: str, end: datetime) -> Window:
    """The window that the occurrence ``end`` scores: from the occurrence before it."""
    return Window(_iter(schedule, end).get_prev(datetime), end)


def latest_window(schedule: str, now: datetime) -> Window:
    """The most recent complete window at ``now``."""
    return window_ending(schedule, last_occurrence(schedule, now))


def due_windows(
    schedule: str, now: datetime, last_end: datetime | None, max_windows: int
) -> list[Window]:
    """Windows to run at ``now``, oldest first: those ending after ``last_end`` (the end of the
    last scheduled window already run), at most ``max_windows`` of the newest."""
    latest = latest_window(schedule, now)
    if last_end is None or last_end >= latest.end:
        return [] if last_end is not None and last_end >= latest.end else [latest]
    windows = [latest]
    while len(windows) < max_windows:
        previous = window_ending(schedule, windows[-1].start)
        if previous.end <= last_end:
            break
        windows.append(previous)
    return sorted(windows)
