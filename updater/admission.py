"""What feedback may enter: items the serving catalogue knows, and new users within a rate.

An event naming an item the catalogue does not know is refused at intake, NOT_FOUND naming
item_id (`Catalogue`), so it never enters the log, the live history or the counts: before this,
`freshrec feedback --item 999999999` was taken, the id entered the user's live history, and 199
purchases by 199 users made it item 1001 of a 1,000-item catalogue. The catalogue is the serving
retrieve version's items, which include those added with `freshrec items add`; growing it from
feedback is an explicit setting (IntakePolicy.grow_catalogue, `--grow-catalogue-from-feedback`).
The Redis intake script applies the same rule against the set the engine keeps there
(RedisFeedbackLog.set_catalogue).

New user rows are bounded per minute (`NewUserBudget`, IntakePolicy.max_new_users_per_min). An
event of a user with no row once the minute's budget is spent is still durable and in the user's
live history (so their next answer reflects it: a new user's row starts at zero and is served from
the history anyway), but trains nothing: no row for the user, no step or count for the item, so a
flood of made-up user ids grows no table and moves no shared row. The user's row comes with their
first event once the window allows. Not RESOURCE_EXHAUSTED at intake: that would refuse real
users' events in a burst of sign-ups, and the Redis intake, which apps call straight, would need
every user id mirrored into Redis to tell a new user from a known one. The
window is the engine's clock, so a replay after a crash may defer other users than the run it
replays did (none of that run's unpublished rows were ever served).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

WINDOW_S = 60.0


def not_found_reason(item_id) -> str:
    """The refusal of an unknown item, as the gRPC intake and the Redis script word it."""
    return (f"item {item_id} is not in the serving catalogue (add it with `freshrec items add`, "
            f"or start the updater with --grow-catalogue-from-feedback)")


class Catalogue:
    """The item ids feedback may name: a sorted int64 array, replaced whole on the engine thread
    (at recovery, after items are added, after a rollback) and read by the intake threads; a read
    sees the old array or the new one, never a mix. 8 bytes an item (a 1e6-item catalogue: 8 MB)."""

    def __init__(self, item_ids=(), *, grows: bool = False):
        self.grows = grows
        self._ids = np.unique(np.asarray(item_ids, np.int64))

    def replace(self, item_ids) -> None:
        self._ids = np.unique(np.asarray(item_ids, np.int64))

    def __len__(self) -> int:
        return len(self._ids)

    def unknown(self, item_ids) -> np.ndarray:
        """A boolean mask: which of ``item_ids`` events may not name (none when it grows)."""
        item_ids = np.asarray(item_ids, np.int64)
        if self.grows:
            return np.zeros(item_ids.shape, bool)
        ids = self._ids
        rows = np.searchsorted(ids, item_ids).clip(max=max(len(ids) - 1, 0))
        return ids[rows] != item_ids if len(ids) else np.ones(item_ids.shape, bool)


class NewUserBudget:
    """At most ``per_min`` new user rows in any WINDOW_S: `take` says whether one more may be
    made now and, if so, counts it. Thread-safe (the engine takes, Status reads)."""

    def __init__(self, per_min: int, *, clock=time.monotonic):
        self.per_min = per_min
        self._clock = clock
        self._made: deque[float] = deque()
        self._lock = threading.Lock()
        self.deferred_events = 0  # events that trained nothing because the budget was spent

    def _expire(self, now: float) -> None:
        while self._made and self._made[0] <= now - WINDOW_S:
            self._made.popleft()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._expire(now)
            if len(self._made) >= self.per_min:
                return False
            self._made.append(now)
            return True

    def last_min(self) -> int:
        """New user rows made in the last WINDOW_S."""
        with self._lock:
            self._expire(self._clock())
            return len(self._made)
