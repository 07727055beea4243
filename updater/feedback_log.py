"""The durable feedback log: SQLite in WAL mode, an event acknowledged only once it is on disk.

One transaction per Send call (group commit) with ``synchronous=FULL``, so the commit returns
after the WAL is fsynced. ``event_id`` is UNIQUE: a re-sent event is a no-op reported as a
duplicate. The AUTOINCREMENT ``offset`` gives the order the trainer applies events in; offsets are
never reused, even after deletes. Forgetting a user deletes their events with
``secure_delete=ON`` and truncates the WAL, so the bytes are gone from both files.

Pending forgets are recorded in the same transaction that deletes the events, and cleared only
once a version without the user is published: a crash in between redoes the forget on restart.

`EventLog` is the interface the engine and the intake use, and both logs implement it: this one
and updater.redis_log.RedisFeedbackLog. Each log also writes the live history
(model_repository.live_history): here, the embedded SQLite store, written after each durable
commit under the log's lock (so the history's order is the log's) and caught up from the log when
the intake opens; in Redis, the intake script writes both at once. So the engine never writes or
branches on the live history, and an app writing straight to Redis keeps it current too.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from model_repository.live_history import LiveHistory
from updater.events import Event, positives

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    "offset" INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    value REAL NOT NULL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events(user_id);
CREATE TABLE IF NOT EXISTS pending_forgets (user_id INTEGER PRIMARY KEY);
"""


READ_BATCH = 2000  # events read at once when the live history catches up


class EventLog(Protocol):
    """The feedback log as the engine and the intake use it. Offsets are handed out only to
    stored events, in order, and never reused."""

    def open_intake(self, *, history_len: int, after_offset: int = 0) -> None:
        """Ready the intake once the model is recovered: the live history's length, offsets after
        ``after_offset`` (the serving version's), the live history caught up with the log."""

    def set_catalogue(self, item_ids: np.ndarray, *, grows: bool) -> None:
        """The items events may name, where an intake outside the updater needs them."""

    def append(self, events: Iterable[Event]) -> tuple[list[Event], list[str]]:
        """Store events durably and put their positives in their users' live histories, before
        returning. Returns (stored events with their offsets, event_ids already in the log)."""

    def read_after(self, offset: int, *, limit: int = 10_000) -> list[Event]: ...

    def last_offset(self) -> int:
        """The newest offset ever handed out (0 when none); deletes never lower it."""

    def count(self, *, user_id: int | None = None) -> int: ...

    def count_after(self, offset: int) -> int: ...

    def forget_user(self, user_id: int) -> int:
        """Delete a user's events and live history, record the pending forget; returns how many
        events were deleted."""

    def pending_forgets(self) -> list[int]: ...

    def clear_forget(self, user_id: int) -> None: ...

    def close(self) -> None: ...


class FeedbackLog:
    """EventLog in SQLite, with the embedded live-history store at ``live_history`` (None: the
    log alone, for tests of the log). Thread-safe: one connection, one lock (SQLite serialises
    writers anyway)."""

    def __init__(self, path: Path, *, live_history: Path | None = None):
        self.live_history_path = live_history
        self._live: LiveHistory | None = None  # opened by open_intake
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        self._db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten with zeros
        self._db.executescript(_SCHEMA)

    def open_intake(self, *, history_len: int, after_offset: int = 0) -> None:
        """Open the live history and apply the log events it has not seen (a crash between the
        log's commit and the history's, or a store deleted by hand: it is rebuilt from the log),
        and redo the history's part of forgets a crash interrupted. ``after_offset``: SQLite's
        AUTOINCREMENT never reuses an offset, so nothing to do."""
        if self.live_history_path is None:
            return
        live = LiveHistory(self.live_history_path, history_len=history_len)
        caught_up = 0
        while events := self.read_after(live.applied_offset(), limit=READ_BATCH):
            live.append(positives(events), offset=events[-1].offset)
            caught_up += len(events)
        if caught_up:
            log.warning("live history caught up with %d log events", caught_up)
        for user_id in self.pending_forgets():
            live.forget(user_id)
        with self._lock:
            self._live = live

    def set_catalogue(self, item_ids: np.ndarray, *, grows: bool) -> None:
        """Nothing to keep: only the updater's intake writes this log, and it checks the
        catalogue itself (updater.admission)."""

    def append(self, events: Iterable[Event]) -> tuple[list[Event], list[str]]:
        """Store events in one durable transaction, then their positives in the live history,
        under one lock: two appends never interleave, so the history's order is the log's.
        Returns (stored events with their offsets, event_ids that were already in the log)."""
        stored, duplicates = [], []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
                    # look first: INSERT OR IGNORE would burn an AUTOINCREMENT offset per duplicate
                    if self._db.execute("SELECT 1 FROM events WHERE event_id = ?",
                                        (e.event_id,)).fetchone():
                        duplicates.append(e.event_id)
                        continue
                    cursor = self._db.execute(
                        'INSERT INTO events (event_id, user_id, item_id, kind, value, timestamp) '
                        'VALUES (?, ?, ?, ?, ?, ?)',
                        (e.event_id, e.user_id, e.item_id, e.kind, e.value, e.timestamp),
                    )
                    stored.append(Event(e.event_id, e.user_id, e.item_id, e.kind, e.value,
                                        e.timestamp, offset=int(cursor.lastrowid)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if stored and self._live is not None:  # read-your-writes before the reply
                self._live.append(positives(stored), offset=stored[-1].offset)
        return stored, duplicates

    def read_after(self, offset: int, *, limit: int = 10_000) -> list[Event]:
        """Events with offset > `offset`, in offset order."""
        with self._lock:
            rows = self._db.execute(
                'SELECT event_id, user_id, item_id, kind, value, timestamp, "offset" FROM events '
                'WHERE "offset" > ? ORDER BY "offset" LIMIT ?', (offset, limit)).fetchall()
        return [Event(*row[:6], offset=int(row[6])) for row in rows]

    def last_offset(self) -> int:
        """The newest offset ever handed out (0 when none); deletes never lower it."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def count(self, *, user_id: int | None = None) -> int:
        with self._lock:
            if user_id is None:
                return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM events WHERE user_id = ?",
                                        (user_id,)).fetchone()[0])

    def count_after(self, offset: int) -> int:
        """How many stored events have an offset > `offset`."""
        with self._lock:
            return int(self._db.execute('SELECT COUNT(*) FROM events WHERE "offset" > ?',
                                        (offset,)).fetchone()[0])

    def forget_user(self, user_id: int) -> int:
        """Delete a user's events and record the pending forget, in one transaction; then truncate
        the WAL so the deleted bytes leave it too, and delete their live history (a crash before
        that: `open_intake` redoes it). Returns how many events were deleted."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._db.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
                self._db.execute("INSERT OR IGNORE INTO pending_forgets (user_id) VALUES (?)",
                                 (user_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if self._live is not None:
                self._live.forget(user_id)
        log.info("forgot user %s: %d events deleted", user_id, deleted)
        return int(deleted)

    def pending_forgets(self) -> list[int]:
        with self._lock:
            return [int(r[0]) for r in self._db.execute("SELECT user_id FROM pending_forgets")]

    def clear_forget(self, user_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending_forgets WHERE user_id = ?", (user_id,))
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._live is not None:
                self._live.close()
