"""Feedback events: the kinds, validation that names the bad field, and the training label.

An event is ``(event_id, user_id, item_id, kind, value, timestamp)``. Labels: click and purchase
are positive (purchase weighs more), a rating >= 4 is positive and <= 2 negative (3 is neutral and
trains nothing), a skip is negative.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

KINDS = ("click", "purchase", "rating", "skip")
MAX_EVENT_ID_LEN = 200
# absurd timestamps: before the epoch or more than a day in the future (clock skew allowance).
# Any time since 1970 is accepted, so a historical log replays as it happened (MovieLens 100k is
# from 1997-98, ml-latest-small starts in 1995; bench.quality sends each event's own time).
MIN_TIMESTAMP = 0.0
MAX_FUTURE_S = 86_400.0
RATING_MIN, RATING_MAX = 1.0, 5.0
# The label rule, as data: `label` reads it, and the Redis intake script's test of what enters a
# history is generated from it (updater.redis_log), so the two cannot drift.
# a skip's weight: measured on replays (updater/settings.py, DEFAULT_SKIP_WEIGHT)
LABEL_WEIGHTS = {"click": 1.0, "purchase": 3.0, "skip": 0.1}
NEGATIVE_KINDS = ("skip",)  # the label is -skip_weight
RATED_KIND = "rating"  # the label is value - RATING_NEUTRAL at or past the two thresholds, else 0
RATING_NEUTRAL, RATING_POSITIVE_MIN, RATING_NEGATIVE_MAX = 3.0, 4.0, 2.0
POSITIVE_KINDS = tuple(k for k in KINDS if k != RATED_KIND and k not in NEGATIVE_KINDS)


class EventError(ValueError):
    """An event the caller got wrong; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: int
    item_id: int
    kind: str
    value: float
    timestamp: float
    offset: int = 0  # log offset, set once the event is durable


def validate(event_id: str, user_id: int | None, item_id: int | None, kind: str, value: float,
             timestamp: float | None, *, now: float | None = None) -> Event:
    """A checked Event, or EventError naming the first bad field. A missing timestamp is now."""
    now = time.time() if now is None else now
    if not event_id:
        raise EventError("event_id", "is required")
    if len(event_id) > MAX_EVENT_ID_LEN:
        raise EventError("event_id", f"longer than {MAX_EVENT_ID_LEN} characters")
    for name, value_ in (("user_id", user_id), ("item_id", item_id)):
        if value_ is None:
            raise EventError(name, "is required")
        if value_ < 0:
            raise EventError(name, f"must be >= 0, got {value_}")
    if kind not in KINDS:
        raise EventError("kind", f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == RATED_KIND and not RATING_MIN <= value <= RATING_MAX:
        raise EventError("value", f"a rating must be in [{RATING_MIN:g}, {RATING_MAX:g}], got {value}")
    if value != value:  # NaN
        raise EventError("value", "is NaN")
    if timestamp is None:
        timestamp = now
    elif not MIN_TIMESTAMP <= timestamp <= now + MAX_FUTURE_S:
        raise EventError("timestamp", f"{timestamp} is not a plausible Unix time in seconds "
                                      f"(>= 0 and at most {MAX_FUTURE_S:g} s ahead)")
    return Event(event_id, int(user_id), int(item_id), kind, float(value), float(timestamp))


def label(event: Event, *, skip_weight: float = LABEL_WEIGHTS["skip"]) -> float:
    """Signed training weight: > 0 pulls the item towards the user, < 0 pushes it away, 0 none
    (``skip_weight``: how hard a skip pushes; updater.settings.TrainerConfig.skip_weight)."""
    if event.kind == RATED_KIND:
        if event.value >= RATING_POSITIVE_MIN or event.value <= RATING_NEGATIVE_MAX:
            return event.value - RATING_NEUTRAL
        return 0.0
    if event.kind in NEGATIVE_KINDS:
        return -skip_weight
    return LABEL_WEIGHTS[event.kind]


def positives(events) -> list[tuple[int, int, float]]:
    """(user_id, item_id, timestamp) of the events that enter a user's history (label > 0), in
    order: skips and negative or neutral ratings train rows but are not something the user wants
    more of."""
    return [(e.user_id, e.item_id, e.timestamp) for e in events if label(e) > 0]
