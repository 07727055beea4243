"""Event validation (the bad field is named) and the durable SQLite log."""

import sqlite3

import pytest

from model_repository.live_history import LiveHistoryReader
from updater.events import EventError, label, validate
from updater.feedback_log import FeedbackLog

NOW = 1_790_000_000.0
GOOD = dict(event_id="e1", user_id=1, item_id=2, kind="click", value=0.0, timestamp=NOW - 5)


@pytest.mark.parametrize("change, field", [
    pytest.param(dict(event_id=""), "event_id", id="missing-event-id"),
    pytest.param(dict(user_id=None), "user_id", id="missing-user"),
    pytest.param(dict(item_id=None), "item_id", id="missing-item"),
    pytest.param(dict(user_id=-3), "user_id", id="negative-user"),
    pytest.param(dict(kind="like"), "kind", id="unknown-kind"),
    pytest.param(dict(kind="rating", value=9.0), "value", id="rating-out-of-range"),
    pytest.param(dict(timestamp=-1.0), "timestamp", id="timestamp-before-1970"),
    pytest.param(dict(timestamp=float("nan")), "timestamp", id="timestamp-nan"),
    pytest.param(dict(timestamp=NOW + 10 * 86_400), "timestamp", id="timestamp-future"),
])
def test_a_bad_event_names_its_field(change, field):
    with pytest.raises(EventError) as caught:
        validate(**{**GOOD, **change}, now=NOW)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}:")


@pytest.mark.parametrize("timestamp", [
    pytest.param(0.0, id="the-epoch"),
    pytest.param(874_724_710.0, id="ml-100k-1997"),  # MovieLens 100k's first rating
    pytest.param(NOW + 86_400, id="a-day-ahead"),
])
def test_any_time_since_1970_is_accepted_as_sent(timestamp):
    assert validate(**{**GOOD, "timestamp": timestamp}, now=NOW).timestamp == timestamp


def test_a_missing_timestamp_is_the_time_of_receipt():
    assert validate(**{**GOOD, "timestamp": None}, now=NOW).timestamp == NOW


@pytest.mark.parametrize("kind, value, want", [
    ("click", 0, 1.0), ("purchase", 0, 3.0), ("skip", 0, -0.1),
    ("rating", 5, 2.0), ("rating", 4, 1.0), ("rating", 3, 0.0), ("rating", 1, -2.0),
])
def test_labels(kind, value, want):
    assert label(validate(**{**GOOD, "kind": kind, "value": value}, now=NOW)) == want


def _events(n, *, user_id=1, prefix="e"):
    return [validate(f"{prefix}{i}", user_id, 100 + i, "click", 0.0, NOW, now=NOW) for i in range(n)]


def test_log_orders_events_and_applies_a_resent_id_once(tmp_path):
    log = FeedbackLog(tmp_path / "log.sqlite")
    stored, dups = log.append(_events(3))
    assert [e.offset for e in stored] == [1, 2, 3] and dups == []
    stored, dups = log.append(_events(4))  # e0..e2 again, e3 new
    assert [e.event_id for e in stored] == ["e3"] and dups == ["e0", "e1", "e2"]
    assert [e.item_id for e in log.read_after(1)] == [101, 102, 103]
    assert log.count() == 4 and log.count_after(2) == 2 and log.last_offset() == 4
    log.close()
    reopened = FeedbackLog(tmp_path / "log.sqlite")  # what was acknowledged is still there
    assert [e.event_id for e in reopened.read_after(0)] == ["e0", "e1", "e2", "e3"]
    reopened.close()


def test_log_is_wal_with_full_sync(tmp_path):
    log = FeedbackLog(tmp_path / "log.sqlite")
    log.append(_events(1))
    log.close()
    with sqlite3.connect(tmp_path / "log.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_forget_deletes_the_bytes_and_keeps_offsets_increasing(tmp_path):
    path = tmp_path / "log.sqlite"
    log = FeedbackLog(path)
    marker = "forget-me-5f1c9a"
    log.append(_events(3, user_id=7, prefix=marker) + _events(2, user_id=8, prefix="keep"))
    assert log.forget_user(7) == 3
    assert log.pending_forgets() == [7]
    assert log.count(user_id=7) == 0 and log.count(user_id=8) == 2
    for file in tmp_path.iterdir():
        assert marker.encode() not in file.read_bytes(), file.name
    log.clear_forget(7)
    assert log.pending_forgets() == []
    stored, _ = log.append(_events(1, user_id=9, prefix="new"))
    assert stored[0].offset == 6  # offsets are never reused
    log.close()


def test_the_log_writes_the_live_history_catches_it_up_and_forgets_it(tmp_path):
    """EventLog's contract for the SQLite log: append puts positives in the live history before
    it returns, open_intake rebuilds what the history missed (here: all of it, deleted) and redoes
    a forget a crash interrupted, forget_user deletes the history with the events."""
    live_path = tmp_path / "live" / "history.sqlite"
    log = FeedbackLog(tmp_path / "log.sqlite", live_history=live_path)
    log.open_intake(history_len=3)
    log.append(_events(4, user_id=7) + [validate("s", 8, 300, "skip", 0.0, NOW, now=NOW),
                                         validate("p", 8, 301, "purchase", 0.0, NOW, now=NOW)])
    reader = LiveHistoryReader(live_path)
    assert {u: h.tolist() for u, h in reader.recent([7, 8]).items()} == {7: [101, 102, 103],
                                                                          8: [301]}
    log.close()
    for path in live_path.parent.iterdir():
        path.unlink()
    with sqlite3.connect(tmp_path / "log.sqlite") as db:  # a forget whose history part was lost
        db.execute("INSERT INTO pending_forgets (user_id) VALUES (8)")
    log = FeedbackLog(tmp_path / "log.sqlite", live_history=live_path)
    log.open_intake(history_len=3)
    assert {u: h.tolist() for u, h in reader.recent([7, 8]).items()} == {7: [101, 102, 103]}
    log.forget_user(7)
    assert reader.recent([7, 8]) == {}
    reader.close()
    log.close()
