"""`freshrec build --feedback-log`: the updater's logged feedback as training events.

A nightly retrain trains on the base data plus every event the updater has logged since, up to
one log offset that the new base records (its retrieve manifest's ``feedback_offset``): a push
(issue 28) replays only the events after it, so none is learned twice or lost.

    logged_feedback(source)   SQLite log (the file, or the updater's state folder holding it)
                              or Redis (redis://...): (Interactions of the positive events,
                              the offset read up to)

Only events that enter a user's history train a base (updater.events.label > 0: clicks,
purchases, ratings of 4 or more), as the live history takes them; skips and low ratings train
the updater's rows but say nothing a closed form or a pooled tower fits. A forgotten user's
events are gone from the log (Admin.ForgetUser), so a retrain never brings them back; the
base data file is the operator's to keep clean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.data import Interactions

log = logging.getLogger(__name__)

READ_PAGE = 50_000  # events per read of the log


class FeedbackSourceError(ValueError):
    """The --feedback-log given cannot be read; the message says why."""


def open_log(source: str, *, redis_prefix: str | None = None):
    """The updater's event log at ``source``: a redis://, rediss:// or unix:// URL, a SQLite
    log file, or the updater's state folder holding one. FeedbackSourceError when none is."""
    from updater.main import LOG_FILE, REDIS_SCHEMES

    if source.startswith(REDIS_SCHEMES):
        from model_repository import contract as c
        from updater.redis_log import RedisFeedbackLog

        try:
            return RedisFeedbackLog(source, prefix=redis_prefix or c.DEFAULT_REDIS_PREFIX)
        except (ConnectionError, ValueError) as exc:
            raise FeedbackSourceError(f"--feedback-log {source}: {exc}") from exc
    path = Path(source)
    if path.is_dir():
        path = path / LOG_FILE
    if not path.is_file():
        raise FeedbackSourceError(
            f"--feedback-log {source}: no feedback log there (give the updater's {LOG_FILE}, "
            f"the folder holding it, or its redis:// URL)")
    from updater.feedback_log import FeedbackLog

    return FeedbackLog(path)


def logged_feedback(source: str, *, redis_prefix: str | None = None,
                    say: Callable[[str], None] = log.info) -> tuple[Interactions, int]:
    """The log's positive events up to its newest offset, as Interactions (value 1, the
    event's own time), and that offset."""
    from updater.events import positives

    feedback = open_log(source, redis_prefix=redis_prefix)
    try:
        until = feedback.last_offset()
        users, items, times = [], [], []
        offset, read = 0, 0
        while offset < until:
            events = [e for e in feedback.read_after(offset, limit=READ_PAGE) if e.offset <= until]
            if not events:
                break
            offset, read = events[-1].offset, read + len(events)
            for user, item, at in positives(events):
                users.append(user)
                items.append(item)
                times.append(at)
            say(f"feedback log: {read} events read up to offset {offset} of {until}")
    finally:
        feedback.close()
    interactions = Interactions.from_arrays(
        np.asarray(users, np.int64), np.asarray(items, np.int64), np.ones(len(users), np.float32),
        np.asarray(times, np.float64).round())
    return interactions, until
