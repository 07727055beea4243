"""Send feedback events straight to the Redis that holds freshrec's event log, with no updater hop.

    with RedisEventWriter("redis://127.0.0.1:6379") as events:
        events.send([{"event_id": "e1", "user_id": 7, "item_id": 42, "kind": "click"}])

For an updater started with ``--redis URL`` (updater.redis_log). One call runs the intake script
the updater keeps in Redis, atomically: each event checked (a rejection names the field and its
code, as the gRPC Feedback calls do: NOT_FOUND for an item the serving catalogue does not know), a
re-sent event_id reported as a duplicate, the rest appended to the log
and to their users' live histories. When ``send`` returns (with Redis run as appendonly yes,
appendfsync always), the events are durable and each user's next recommend sees them; the updater
reads the log on its next tick (its row updates keep their publish cadence). The result is the
gRPC client's FeedbackResult.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

from clients.closing import ClosedOnExit
from clients.updater_client import FeedbackResult
from model_repository import contract as c
from model_repository import redis_layout as layout
from model_repository.redis_layout import RedisKeys, redis_client


def _row(event: Mapping) -> tuple:
    """An app's event as the intake script reads it: the fields of layout.EVENT_FIELDS, in order,
    with its defaults filled in."""
    filled = {**event, "event_id": str(event.get("event_id") or uuid.uuid4().hex),
              "kind": str(event.get("kind", "")), "value": float(event.get("value") or 0.0)}
    return tuple(filled.get(name) for name in layout.EVENT_FIELDS)


class NotSetUp(RuntimeError):
    """No updater has set this Redis (and prefix) up: there is no intake script to run."""


class RedisEventWriter(ClosedOnExit):
    """`send(events)`: dicts with event_id (default: a random one), user_id, item_id, kind, value
    (default 0), timestamp (default: Redis's clock). A context manager."""

    def __init__(self, url: str, *, prefix: str = c.DEFAULT_REDIS_PREFIX):
        self.url = url
        self.keys = RedisKeys(prefix)
        self._redis = redis_client(url)
        source = self._redis.get(self.keys.intake_script)
        if source is None:
            self._redis.close()
            raise NotSetUp(f"redis {url} holds no freshrec intake under prefix {prefix!r}: start "
                           f"the updater with --redis {url} --redis-prefix {prefix} first")
        # EVALSHA, and EVAL with the source again after a Redis restart emptied its script cache
        self._intake = self._redis.register_script(source)
        self._keys = layout.intake_keys(self.keys)

    def send(self, events: Iterable[Mapping]) -> FeedbackResult:
        rows = [_row(e) for e in events]
        outcomes = layout.parse_outcomes(self._intake(keys=self._keys,
                                                      args=layout.intake_args(self.keys, rows)))
        rejected = [{"index": n, "event_id": row[0], "field": o.field, "reason": o.reason,
                     "code": o.code} for n, (row, o) in enumerate(zip(rows, outcomes)) if o.code]
        stored = [o.offset for o in outcomes if o.offset]
        return FeedbackResult(
            accepted=len(stored),
            duplicate_event_ids=[row[0] for row, o in zip(rows, outcomes) if o.duplicate],
            rejected=rejected, last_offset=stored[-1] if stored else 0)

    def close(self) -> None:
        self._redis.close()
