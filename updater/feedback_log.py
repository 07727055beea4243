"""The durable feedback log: SQLite in WAL mode, an event acknowledged only once it is on disk.

One transaction per Send call (group commit) with ``synchronous=FULL``, so the commit returns
after the WAL is fsynced. ``event_id`` is UNIQUE: a re-sent event is a no-op reported as a
duplicate. The AUTOINCREMENT ``offset`` gives the order the trainer applies events in; offsets are
never reused, even after deletes. Forgetting a user deletes their events with
``secure_delete=ON`` and truncates the WAL, so the bytes are gone from both files.

Pending forgets are recorded in the same transaction that deletes the events, and cleared only
once a version without the user is published: a crash in between redoes the forget on restart.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from updater.events import Event

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


class FeedbackLog:
    """Thread-safe: one connection, one lock (SQLite serialises writers anyway)."""

    # only the updater writes it, through its intake, and the live history is a store of its own
    # (model_repository.live_history.LiveHistory); updater.redis_log.RedisFeedbackLog is shared
    shared = False

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        self._db.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten with zeros
        self._db.executescript(_SCHEMA)

    def append(self, events: Iterable[Event]) -> tuple[list[Event], list[str]]:
        """Store events in one durable transaction. Returns (stored events with their offsets,
        event_ids that were already in the log)."""
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
        the WAL so the deleted bytes leave it too. Returns how many events were deleted."""
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
