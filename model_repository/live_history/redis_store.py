"""The live history in Redis, retrieve's side: the lists the intake script writes.

Where the event log lives in Redis (updater.redis_log, `freshrec updater --redis URL`), the
history lives there too, written by the same server-side script that appends an event to the log,
atomically: an app can send events straight to Redis, with no updater hop, and its next request
sees them. One list per user (RPUSH + LTRIM), a hash of newest times, a clock key; the names are
model_repository.redis_layout's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from model_repository.contract import DEFAULT_REDIS_PREFIX
from model_repository.live_history.read import NOTHING, LiveRead
from model_repository.redis_layout import RedisKeys, redis_client

log = logging.getLogger(__name__)


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
