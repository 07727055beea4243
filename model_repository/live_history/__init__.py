"""Each user's recent positive items, live: written on every durable event, read on every request.

A history used to move only when a version was published, and real users act in bursts: by the
time the version holding a burst's first events served, the burst was mostly over (on public
rating logs the same model answered 2.6-5.7x better given the current history). So the history
is live state beside the versions, not part of them:

    updater intake:  Feedback.Send -> feedback log (durable, and the live history) -> reply
    retrieve:        every batch -> LiveStoreReader.read(user ids) -> pooled into the query

Read-your-writes: once Send has replied, the user's next request sees the event. Versions keep
their `user_history` table as a snapshot (recovery, and users with no live row yet); a request's
HISTORY still overrides both.

One store per storage engine, each module one of them:
- `sqlite_store`: the embedded store, a SQLite file beside the retrieve versions (the updater's
  SQLite log, updater.feedback_log, writes it after each durable append);
- `redis_store`: retrieve's reader of the lists the Redis intake script writes (the layout of
  every key is model_repository.redis_layout's);
- `store_choice`: which of the two the updater writes, and retrieve's reader that follows it.
"""

from model_repository.live_history.read import NOTHING, LiveRead
from model_repository.live_history.redis_store import RedisLiveHistoryReader
from model_repository.live_history.sqlite_store import (
    LiveHistory,
    LiveHistoryReader,
    history_path,
)
from model_repository.live_history.store_choice import (
    LiveStoreReader,
    store_choice_path,
    write_store_choice,
)

__all__ = [
    "NOTHING",
    "LiveHistory",
    "LiveHistoryReader",
    "LiveRead",
    "LiveStoreReader",
    "RedisLiveHistoryReader",
    "history_path",
    "store_choice_path",
    "write_store_choice",
]
