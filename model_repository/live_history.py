"""Each user's recent positive items, live: written on every durable event, read on every request.

A history used to move only when a version was published, and real users act in bursts: by the
time the version holding a burst's first events served, the burst was mostly over (on public
rating logs the same model answered 2.6-5.7x better given the current history). So the history
is live state beside the versions, not part of them:

    updater intake:  Feedback.Send -> feedback log (durable) -> LiveHistory.append -> reply
    retrieve:        every batch -> LiveHistory.recent(user ids) -> pooled into the query

Read-your-writes: once Send has replied, the user's next request sees the event. Versions keep
their `user_history` table as a snapshot (recovery, and users with no live row yet); a request's
HISTORY still overrides both.

The embedded store is one SQLite file in WAL mode (readers never block the writer) beside the
retrieve versions, `<repository>/retrieve/live/history.sqlite` (Triton ignores non-numeric
folders in a model folder; so does `versions.list_versions`), so the updater and retrieve find it
with no configuration. One row per user: the last `history_len` item ids, most recent last, as
int64 bytes, and the time of the newest (`last_at`); beside them the newest event time of all
(`clock`): retrieve measures a history's age on it (model_repository.scoring.session_weights).
It is rebuildable from the feedback log, so commits are not fsynced
(synchronous=NORMAL) and `applied_offset` says how far the log has been applied: the updater
replays the log after it on start.

Where the event log lives in Redis (updater.redis_log, `freshrec updater --redis URL`), the
history lives there too, written by the same server-side script that appends an event to the log,
atomically: an app can send events straight to Redis, with no updater hop, and its next request
sees them. One list per user (RPUSH + LTRIM), a hash of newest times, a clock key (`RedisKeys`
owns the names); retrieve reads a batch's users in one MULTI round trip (`RedisLiveHistoryReader`).
The updater tells retrieve which store it writes in `<repository>/retrieve/live/store.json`
(`write_store_choice`); `LiveStoreReader`, retrieve's reader, follows that file, so neither needs
configuring and a switch of store needs no Triton reload.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_repository.contract import DEFAULT_REDIS_PREFIX

log = logging.getLogger(__name__)

LIVE_DIR = "live"
HISTORY_FILE = "history.sqlite"
STORE_FILE = "store.json"  # present: the live history is in Redis (its url and key prefix)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (user_id INTEGER PRIMARY KEY, items BLOB NOT NULL,
                                    last_at REAL);
CREATE TABLE IF NOT EXISTS applied (id INTEGER PRIMARY KEY CHECK (id = 0), "offset" INTEGER,
                                    clock REAL);
INSERT OR IGNORE INTO applied (id, "offset") VALUES (0, 0);
"""
# columns a store written before them lacks (its rows then have no time: not in session)
_ADDED_COLUMNS = (("history", "last_at"), ("applied", "clock"))


@dataclass(frozen=True)
class LiveRead:
    """One batch's read: item ids (int64, most recent last) and the newest event's time per
    user that has a live history, and the newest event time of all (-inf: none yet)."""

    items: dict[int, np.ndarray]
    last_at: dict[int, float]
    clock: float


NOTHING = LiveRead({}, {}, -np.inf)


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


# -- Redis -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RedisKeys:
    """Every key freshrec keeps in Redis, under one prefix (one deployment per prefix). The log's
    keys are here too, beside the history's, so one place names them all (updater.redis_log
    writes them)."""

    prefix: str = DEFAULT_REDIS_PREFIX

    def __post_init__(self):
        if not self.prefix or any(ch.isspace() for ch in self.prefix):
            raise ValueError(f"redis prefix must be non-empty with no spaces, got {self.prefix!r}")

    @property
    def events(self) -> str:  # the log: a stream, entry id 0-<offset>
        return f"{self.prefix}:events"

    @property
    def offset(self) -> str:  # the newest offset handed out (INCR)
        return f"{self.prefix}:offset"

    @property
    def event_ids(self) -> str:  # a set of event ids: a re-sent event is a duplicate
        return f"{self.prefix}:event_ids"

    @property
    def history_prefix(self) -> str:  # + user id: a list of item ids, most recent last
        return f"{self.prefix}:history:"

    def history(self, user_id: int) -> str:
        return f"{self.history_prefix}{int(user_id)}"

    @property
    def last_at(self) -> str:  # hash user id -> newest positive event time
        return f"{self.prefix}:last_at"

    @property
    def clock(self) -> str:  # the newest positive event time of all
        return f"{self.prefix}:clock"

    @property
    def pending_forgets(self) -> str:  # a set of user ids
        return f"{self.prefix}:pending_forgets"

    @property
    def intake_script(self) -> str:  # the intake's Lua source, for apps sending straight here
        return f"{self.prefix}:intake.lua"

    @property
    def history_len(self) -> str:  # how many items a user's list keeps
        return f"{self.prefix}:history_len"


def store_choice_path(model_dir: Path) -> Path:
    return Path(model_dir) / LIVE_DIR / STORE_FILE


def write_store_choice(model_dir: Path, redis_url: str | None, prefix: str = DEFAULT_REDIS_PREFIX
                       ) -> None:
    """Tell retrieve where the live history is: Redis (``redis_url``), or the embedded SQLite
    store (None: the file is removed). Write-then-rename: a reader never sees half a file."""
    path = store_choice_path(model_dir)
    if redis_url is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"store": "redis", "url": redis_url, "prefix": prefix}))
    os.replace(partial, path)


def redis_client(url: str, **options):
    """A redis-py client for ``url`` (redis://host:port/db or unix:///path/to/socket)."""
    import redis

    return redis.Redis.from_url(url, **options)


class RedisLiveHistoryReader:
    """Retrieve's side of the Redis store: one MULTI round trip per batch (each user's list, their
    newest times, the clock), so a batch never sees half of an intake script's writes. A Redis
    that does not answer degrades to no live history (each version's stored history serves), with
    a warning, as a broken SQLite store does."""

    def __init__(self, url: str, prefix: str = DEFAULT_REDIS_PREFIX):
        self.url = url
        self.keys = RedisKeys(prefix)
        self._redis = redis_client(url, socket_timeout=1.0)

    def recent(self, user_ids: Iterable[int]) -> dict[int, np.ndarray]:
        return self.read(user_ids).items

    def read(self, user_ids: Iterable[int], *, clock: bool = False) -> LiveRead:
        import redis

        wanted = sorted({int(u) for u in user_ids})
        if not wanted and not clock:
            return NOTHING
        pipe = self._redis.pipeline(transaction=True)
        for user_id in wanted:
            pipe.lrange(self.keys.history(user_id), 0, -1)
        if wanted:
            pipe.hmget(self.keys.last_at, wanted)
        if clock:
            pipe.get(self.keys.clock)
        try:
            replies = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("live history read from %s failed: %s", self.url, exc)
            return NOTHING
        lists, times = replies[:len(wanted)], (replies[len(wanted)] if wanted else [])
        items = {u: np.array(lst, dtype=np.int64) for u, lst in zip(wanted, lists) if lst}
        return LiveRead(
            items=items,
            last_at={u: float(t) if t is not None else -np.inf
                     for u, t in zip(wanted, times) if u in items},
            clock=float(replies[-1]) if clock and replies[-1] is not None else -np.inf)

    def close(self) -> None:
        self._redis.close()


class _NoLiveHistory:
    def read(self, user_ids: Iterable[int], *, clock: bool = False) -> LiveRead:
        return NOTHING

    def close(self) -> None:
        pass


class LiveStoreReader:
    """Retrieve's reader: the store the updater chose (`write_store_choice`), SQLite by default.
    One stat of the choice file per batch; a changed file switches the store at once."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self._choice_path = store_choice_path(model_dir)
        self._stamp: tuple[int, int] | None = None
        self._reader: LiveHistoryReader | RedisLiveHistoryReader = LiveHistoryReader(
            history_path(model_dir))
        self._lock = threading.Lock()

    def _current(self):
        try:
            st = os.stat(self._choice_path)
            stamp = (st.st_ino, st.st_mtime_ns)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._reader.close()
            self._reader = self._open(stamp)
            self._stamp = stamp
        return self._reader

    def _open(self, stamp):
        if stamp is None:
            return LiveHistoryReader(history_path(self.model_dir))
        try:
            choice = json.loads(self._choice_path.read_text())
            log.info("live history: redis %s (prefix %s)", choice["url"], choice["prefix"])
            return RedisLiveHistoryReader(choice["url"], choice["prefix"])
        except Exception as exc:  # noqa: BLE001 - answer on the versions' histories, loudly
            log.error("live history store %s cannot be opened (%s): answering without live "
                      "histories until it changes", self._choice_path, exc)
            return _NoLiveHistory()

    def recent(self, user_ids: Iterable[int]) -> dict[int, np.ndarray]:
        return self.read(user_ids).items

    def read(self, user_ids: Iterable[int], *, clock: bool = False) -> LiveRead:
        with self._lock:  # a switch never closes a reader in use
            return self._current().read(user_ids, clock=clock)

    def close(self) -> None:
        with self._lock:
            self._reader.close()
