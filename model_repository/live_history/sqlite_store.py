"""The embedded live-history store: one SQLite file in WAL mode beside the retrieve versions.

`<repository>/retrieve/live/history.sqlite` (Triton ignores non-numeric folders in a model folder;
so does `versions.list_versions`), so the updater and retrieve find it with no configuration.
Readers never block the writer. One row per user: the last `history_len` item ids, most recent
last, as int64 bytes, and the time of the newest (`last_at`); beside them the newest event time of
all (`clock`): retrieve measures a history's age on it (model_repository.scoring.session_weights).
It is rebuildable from the feedback log, so commits are not fsynced (synchronous=NORMAL) and
`applied_offset` says how far the log has been applied: the updater's SQLite log
(updater.feedback_log) replays itself after it on start.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from model_repository.live_history.read import NOTHING, LiveRead

log = logging.getLogger(__name__)

LIVE_DIR = "live"
HISTORY_FILE = "history.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (user_id INTEGER PRIMARY KEY, items BLOB NOT NULL,
                                    last_at REAL);
CREATE TABLE IF NOT EXISTS applied (id INTEGER PRIMARY KEY CHECK (id = 0), "offset" INTEGER,
                                    clock REAL);
INSERT OR IGNORE INTO applied (id, "offset") VALUES (0, 0);
"""
# columns a store written before them lacks (its rows then have no time: not in session)
_ADDED_COLUMNS = (("history", "last_at"), ("applied", "clock"))


def history_path(model_dir: Path) -> Path:
    """Where the live history of a retrieve model folder lives."""
    return Path(model_dir) / LIVE_DIR / HISTORY_FILE


class LiveHistory:
    """The writer's side (the updater): thread-safe, one connection, one lock."""

    def __init__(self, path: Path, *, history_len: int):
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len!r}")
        self.path = Path(path)
        self.history_len = history_len
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # rebuildable from the durable feedback log (applied_offset): no fsync per commit
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")  # a forgotten user's bytes are overwritten
        self._db.executescript(_SCHEMA)
        for table, column in _ADDED_COLUMNS:
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} REAL")

    def append(self, positives: Iterable[tuple[int, int, float]], *, offset: int) -> None:
        """Add (user_id, item_id, timestamp) positives, in order, in one transaction, and record
        that the log is applied up to ``offset``. Each user keeps the last ``history_len`` items
        and the newest timestamp; the clock moves to the newest of all."""
        added: dict[int, list[int]] = {}
        newest: dict[int, float] = {}
        for user_id, item_id, timestamp in positives:
            added.setdefault(int(user_id), []).append(int(item_id))
            newest[int(user_id)] = max(newest.get(int(user_id), -np.inf), float(timestamp))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for user_id, items in added.items():
                    row = self._db.execute("SELECT items, last_at FROM history WHERE user_id = ?",
                                           (user_id,)).fetchone()
                    old = np.frombuffer(row[0], dtype=np.int64) if row else np.zeros(0, np.int64)
                    new = np.concatenate([old, np.asarray(items, np.int64)])[-self.history_len:]
                    last_at = max(newest[user_id], row[1] if row and row[1] is not None
                                  else -np.inf)
                    self._db.execute("INSERT OR REPLACE INTO history (user_id, items, last_at) "
                                     "VALUES (?, ?, ?)", (user_id, new.tobytes(), last_at))
                self._db.execute('UPDATE applied SET "offset" = MAX("offset", ?) WHERE id = 0',
                                 (int(offset),))
                if newest:
                    self._db.execute("UPDATE applied SET clock = MAX(COALESCE(clock, ?), ?) "
                                     "WHERE id = 0", (max(newest.values()),) * 2)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def applied_offset(self) -> int:
        with self._lock:
            return int(self._db.execute('SELECT "offset" FROM applied WHERE id = 0').fetchone()[0])

    def recent(self, user_id: int) -> np.ndarray:
        """The user's live history, item ids (int64), most recent last; empty when none."""
        with self._lock:
            row = self._db.execute("SELECT items FROM history WHERE user_id = ?",
                                   (int(user_id),)).fetchone()
        return np.frombuffer(row[0], dtype=np.int64).copy() if row else np.zeros(0, np.int64)

    def forget(self, user_id: int) -> bool:
        """Delete a user's history (the bytes too, out of the WAL). Returns whether there was one."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM history WHERE user_id = ?",
                                       (int(user_id),)).rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return bool(deleted)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LiveHistoryReader:
    """The reader's side (retrieve): one query per batch. Until the store exists (no updater has
    run yet) every user has no live history. Thread-safe (a lock), though retrieve reads it from
    one thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection | None:
        """The open store, or None while it does not exist. One stat per batch: a store that
        appears (the updater started) or is deleted and rebuilt is opened afresh at once."""
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            inode = None
        if self._db is not None and inode == self._inode:
            return self._db
        if self._db is not None:
            self._db.close()
            self._db = None
        if inode is not None:
            try:
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                           isolation_level=None, check_same_thread=False)
                self._inode = inode
            except sqlite3.Error as exc:
                log.debug("live history %s not readable yet: %s", self.path, exc)
        return self._db

    def recent(self, user_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """user id -> live history (item ids, most recent last) for the users that have one."""
        return self.read(user_ids).items

    def read(self, user_ids: Iterable[int], *, clock: bool = False) -> LiveRead:
        """The live histories of ``user_ids`` that have one, with their newest events' times;
        ``clock``: read the store's clock too (one more indexed row), else it is -inf."""
        wanted = sorted({int(u) for u in user_ids})
        if not wanted and not clock:
            return NOTHING
        marks = ",".join("?" * len(wanted))
        with self._lock:
            db = self._connection()
            if db is None:
                return NOTHING
            try:
                try:
                    rows = db.execute(f"SELECT user_id, items, last_at FROM history "
                                      f"WHERE user_id IN ({marks})", wanted).fetchall()
                    now = (db.execute("SELECT clock FROM applied WHERE id = 0").fetchone()
                           if clock else None)
                except sqlite3.OperationalError as exc:
                    if "no such column" not in str(exc):
                        raise
                    # a store written before times were kept, not yet migrated by the updater:
                    # its histories, with no times (not in session)
                    rows = db.execute(f"SELECT user_id, items, NULL FROM history "
                                      f"WHERE user_id IN ({marks})", wanted).fetchall()
                    now = None
            except sqlite3.Error as exc:  # e.g. the file replaced under us: open it again
                log.warning("live history read failed, reopening: %s", exc)
                db.close()
                self._db = None
                return NOTHING
        return LiveRead(
            items={int(u): np.frombuffer(items, dtype=np.int64) for u, items, _ in rows},
            last_at={int(u): float(t) if t is not None else -np.inf for u, _, t in rows},
            clock=float(now[0]) if now and now[0] is not None else -np.inf)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


