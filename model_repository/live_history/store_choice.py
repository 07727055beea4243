"""Which store holds the live history, as the updater chose it, and retrieve's reader that follows it.

The updater tells retrieve which store it writes in `<repository>/retrieve/live/store.json`
(`write_store_choice`); `LiveStoreReader`, retrieve's reader, follows that file, so neither needs
configuring and a switch of store needs no Triton reload.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from model_repository.contract import DEFAULT_REDIS_PREFIX
from model_repository.live_history.read import NOTHING, LiveRead
from model_repository.live_history.redis_store import RedisLiveHistoryReader
from model_repository.live_history.sqlite_store import LIVE_DIR, LiveHistoryReader, history_path

log = logging.getLogger(__name__)

STORE_FILE = "store.json"  # present: the live history is in Redis (its url and key prefix)


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
