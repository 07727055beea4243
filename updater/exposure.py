"""Exposure: each positive event attributed to the answers its user was shown (issue 28).

Retrieve records every answer to a request naming a user as an impression (user, its top
items, version, arm, time: model_repository.impressions). Before the engine trains a batch it
reads the impressions recorded since the last batch (`Exposure.add`) and attributes the batch's
positive events (`Exposure.attribute`): an event of user u that arrived at time t is *exposed*
when u was shown an answer in [t - window_s, t]; it counts for the arm (control or canary) of
the newest of those answers, and is a *hit* when one of that arm's answers among them held its
item. While a canary runs, answers from before it started do not count: a canary user's were
the control's, and the control's users would otherwise have more answers in their window than
the canary's. So each arm's hit rate is hit@K of the answers its users were actually shown (K:
what each answer showed, at most impressions.TOP), which is what a canary is judged on
(updater.canary).

An event's arrival is when the updater learned of it (`Arrivals`): the intake's notify after
the durable append (before Send replies, so every answer the user saw before acting is on disk
by then), or the engine's first look at a log an app writes straight to (Redis). Events logged
before the updater started have no arrival and are not attributed.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from updater.canary import ArmCount
from updater.events import Event, label
from updater.settings import DEFAULT_ATTRIBUTION_WINDOW_S

MAX_PER_USER = 16  # a user's newest answers kept for attribution
PRUNE_EVERY_S = 60.0


@dataclass(frozen=True)
class Shown:
    time: float
    version: int
    arm: int
    items: tuple  # best first


class Arrivals:
    """(log offset, wall time) stamps: when the updater learned the log reached an offset.
    Offsets up to ``base`` (the log's newest when the updater started) have no arrival."""

    def __init__(self, base: int = 0):
        self.base = base
        self._offsets: list[int] = []
        self._times: list[float] = []
        self._lock = threading.Lock()

    def stamp(self, offset: int, at: float | None = None) -> None:
        with self._lock:
            if offset > max(self.base, self._offsets[-1] if self._offsets else 0):
                self._offsets.append(offset)
                self._times.append(time.time() if at is None else at)

    def of(self, offset: int) -> float | None:
        """When the event at ``offset`` arrived: the time of the first stamp at or past it
        (None: logged before the updater started, or not stamped yet)."""
        with self._lock:
            i = bisect.bisect_left(self._offsets, offset)
            return None if offset <= self.base or i == len(self._offsets) else self._times[i]

    def forget_through(self, offset: int) -> None:
        """Drop the stamps of offsets at or before ``offset`` (applied: asked no more)."""
        with self._lock:
            i = bisect.bisect_right(self._offsets, offset)
            del self._offsets[:i], self._times[:i]


class Exposure:
    """The impressions of the last ``window_s`` by user, and the attributed counts per arm
    since the updater started (``counts``: arm code -> ArmCount)."""

    def __init__(self, window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S):
        self.window_s = float(window_s)
        self.impressions = 0  # read since start
        self.unexposed = 0    # positive events with no answer shown in their window
        self.counts: dict[int, ArmCount] = {}
        self._shown: dict[int, deque[Shown]] = {}
        self._pruned_at = time.monotonic()

    def add(self, rows: np.ndarray) -> None:
        """RECORD rows (model_repository.impressions), oldest first."""
        self.impressions += len(rows)
        for row in rows:
            count = int(row["count"])
            shown = Shown(float(row["time"]), int(row["version"]), int(row["arm"]),
                          tuple(row["items"][:count].tolist()))
            user = int(row["user"])
            queue = self._shown.get(user)
            if queue is None:
                queue = self._shown[user] = deque(maxlen=MAX_PER_USER)
            queue.append(shown)
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
            self.prune(time.time() - self.window_s)

    def prune(self, before: float) -> None:
        """Forget users whose newest answer is older than ``before``."""
        self._pruned_at = time.monotonic()
        for user in [u for u, q in self._shown.items() if q[-1].time < before]:
            del self._shown[user]

    def attribute(self, events, arrival_of, *, skips: int = 0,
                  since: float | None = None) -> dict[int, list[Event]]:
        """Count the positive events among ``events`` (``arrival_of(offset)``: its arrival, or
        None to skip it). ``since``: answers shown before it do not count (a canary's start:
        each arm is judged on its own answers only, and a canary user's answers from before the
        split were the control's). With ``skips`` N: returns, by the position of each exposed
        positive event, the top N items of the newest answer its user was shown but the one
        taken, as skip events at its offset (items shown and skipped)."""
        derived: dict[int, list[Event]] = {}
        since = float("-inf") if since is None else since
        for position, event in enumerate(events):
            if label(event) <= 0:
                continue
            arrived = arrival_of(event.offset)
            if arrived is None:
                continue
            start = max(arrived - self.window_s, since)
            shown = [s for s in self._shown.get(event.user_id, ()) if start <= s.time <= arrived]
            if not shown:
                self.unexposed += 1
                continue
            arm = shown[-1].arm  # the user's arm now; its answers alone can hit
            hit = any(s.arm == arm and event.item_id in s.items for s in shown)
            self.counts[arm] = self.counts.get(arm, ArmCount()).plus(1, int(hit))
            if skips:
                derived[position] = [
                    Event(f"{event.event_id}/shown/{item}", event.user_id, item, "skip", 0.0,
                          event.timestamp, event.offset)
                    for item in shown[-1].items[:skips] if item != event.item_id]
        return derived

    def count(self, arm: int) -> ArmCount:
        return self.counts.get(arm, ArmCount())

    def total(self) -> ArmCount:
        events = sum(c.events for c in self.counts.values())
        return ArmCount(events, sum(c.hits for c in self.counts.values()))

    def status(self) -> dict:
        total = self.total()
        low, high = total.interval()
        return {"impressions": self.impressions, "window_s": self.window_s,
                "events": total.events, "hits": total.hits, "hit_rate": total.rate,
                "low": low, "high": high, "unexposed": self.unexposed}
