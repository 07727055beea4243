"""The event log and live history in a real redis-server (updater.redis_log), without Triton:
the intake script's rules against updater.events, offsets and duplicates, the history lists,
durability across kill -9 of Redis, forgetting, and the app-side writer."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from clients import RedisEventWriter
from clients.redis_events import NotSetUp
from freshrec.processes import RedisServer
from model_repository import redis_layout as layout
from model_repository.live_history import (
    LiveStoreReader,
    RedisLiveHistoryReader,
    history_path,
    write_store_choice,
)
from model_repository.redis_layout import STREAM_FIELDS, RedisKeys, redis_client
from updater.admission import not_found_reason
from updater.events import EventError, label, validate
from updater.redis_log import RedisFeedbackLog

NOW = 1_790_000_000.0
GOOD = dict(event_id="e1", user_id=1, item_id=2, kind="click", value=0.0, timestamp=NOW - 5)
CATALOGUE = np.arange(1000)  # the item ids these tests' events may name


def _open(url, **options) -> RedisFeedbackLog:
    """A log set up as the updater sets it up: a history length and the catalogue."""
    feedback_log = RedisFeedbackLog(url, **{"history_len": 3, **options})
    feedback_log.set_catalogue(CATALOGUE, grows=False)
    return feedback_log


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def log(redis_server):
    """A fresh prefix per test: its own log in the module's server."""
    feedback_log = _open(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}")
    yield feedback_log
    feedback_log.close()


def _row(**change):
    e = {**GOOD, **change}
    return (e["event_id"], e["user_id"], e["item_id"], e["kind"], e["value"], e["timestamp"])


@pytest.mark.parametrize("change", [
    dict(event_id=""), dict(event_id="x" * 201), dict(event_id="é" * 200),
    dict(user_id=None), dict(item_id=None), dict(user_id=-3), dict(item_id=-1),
    dict(kind="like"), dict(kind=""), dict(kind="rating", value=9.0), dict(kind="rating", value=0.5),
    dict(kind="rating", value=4.5), dict(kind="rating", value=float("nan")),
    dict(value=float("nan")), dict(timestamp=-1.0), dict(timestamp=float("nan")),
    dict(timestamp=NOW + 10 * 86_400), dict(timestamp=NOW + 86_400), dict(timestamp=0.0),
    dict(timestamp=874_724_710.0), dict(kind="skip"), dict(kind="purchase"),
], ids=lambda change: ",".join(f"{k}={v!r}"[:24] for k, v in change.items()))
def test_the_intake_script_takes_and_refuses_what_validate_does(log, change):
    try:
        validate(*_row(**change), now=NOW)
        expected = None
    except EventError as exc:
        expected = exc
    (outcome,) = log.take([_row(**change)], now=NOW)
    if expected is None:
        assert not outcome.field and outcome.offset > 0
    else:
        assert outcome.field == expected.field and not outcome.offset
        assert outcome.reason == expected.reason


def test_ids_sent_as_text_are_checked_and_canonical(log):
    bad, padded, huge = log.take([_row(event_id="a", user_id="7x"), _row(event_id="b", user_id="007"),
                                  _row(event_id="c", item_id=str(2**63))], now=NOW)
    assert (bad.field, bad.reason) == ("user_id", "must be an integer, got 7x")
    assert huge.field == "item_id" and "2^63" in huge.reason
    (event,) = log.read_after(0)
    assert event.user_id == 7 and event.offset == padded.offset


@pytest.mark.parametrize("kind, value", [("click", 0.0), ("purchase", 0.0), ("skip", 0.0),
                                         ("rating", 1.0), ("rating", 3.0), ("rating", 3.5),
                                         ("rating", 4.0), ("rating", 5.0)])
def test_what_enters_a_history_is_what_label_calls_positive(log, kind, value):
    log.take([_row(kind=kind, value=value)], now=NOW)
    reader = RedisLiveHistoryReader(log.url, log.keys.prefix)
    positive = label(validate(*_row(kind=kind, value=value), now=NOW)) > 0
    assert (1 in reader.recent([1])) == positive
    reader.close()


def test_offsets_order_duplicates_and_the_history_lists(log):
    events = [validate(f"e{n}", n % 2, 100 + n, "click", 0.0, NOW + n, now=NOW + 10) for n in range(6)]
    stored, duplicates = log.append(events[:4])
    assert [e.offset for e in stored] == [1, 2, 3, 4] and duplicates == []
    stored, duplicates = log.append(events[2:] + events[5:])  # e2, e3 again; e5 twice in one call
    assert [e.event_id for e in stored] == ["e4", "e5"] and duplicates == ["e2", "e3", "e5"]
    assert [e.event_id for e in log.read_after(2)] == ["e2", "e3", "e4", "e5"]
    assert log.read_after(0, limit=2)[-1].offset == 2 and log.last_offset() == 6
    assert log.count() == 6 and log.count(user_id=1) == 3 and log.count_after(4) == 2
    read = RedisLiveHistoryReader(log.url, log.keys.prefix).read([0, 1, 9], clock=True)
    assert {u: h.tolist() for u, h in read.items.items()} == {0: [100, 102, 104], 1: [101, 103, 105]}
    assert read.last_at == {0: NOW + 4, 1: NOW + 5} and read.clock == NOW + 5


def test_a_history_keeps_the_model_s_length_and_an_older_event_keeps_the_newest_time(log):
    log.take([_row(event_id=f"h{n}", item_id=n, timestamp=NOW - n) for n in range(5)], now=NOW)
    read = RedisLiveHistoryReader(log.url, log.keys.prefix).read([1], clock=True)
    assert read.items[1].tolist() == [2, 3, 4] and read.last_at[1] == NOW and read.clock == NOW


def test_set_up_continues_after_the_serving_version_s_offset(log):
    log.open_intake(history_len=3, after_offset=500)
    log.open_intake(history_len=3, after_offset=20)  # never lowered
    (outcome,) = log.take([_row()], now=NOW)
    assert outcome.offset == 501


def test_nothing_acknowledged_is_lost_when_redis_is_killed(tmp_path):
    server = RedisServer(data_dir=tmp_path / "data").start()
    try:
        log = _open(server.url, history_len=4)
        for n in range(50):
            assert log.take([_row(event_id=f"k{n}", item_id=n)], now=NOW)[0].offset == n + 1
        log.close()
        server.kill()  # SIGKILL right after the last reply: appendfsync always has it on disk
        server.stop()
        server = RedisServer(data_dir=tmp_path / "data").start()
        log = RedisFeedbackLog(server.url)
        assert [e.event_id for e in log.read_after(0, limit=100)] == [f"k{n}" for n in range(50)]
        assert RedisLiveHistoryReader(server.url).recent([1])[1].tolist() == [46, 47, 48, 49]
        log.close()
    finally:
        server.stop()


def test_forget_deletes_the_user_s_events_ids_and_history_from_memory_and_the_file(tmp_path):
    server = RedisServer(data_dir=tmp_path / "data").start()
    try:
        log = _open(server.url, history_len=4)
        marker = f"forget-me-{uuid.uuid4().hex}"
        log.take([_row(event_id=f"{marker}-{n}", user_id=5) for n in range(3)]
                 + [_row(event_id="other", user_id=6)], now=NOW)
        assert log.forget_user(5) == 3
        assert [e.event_id for e in log.read_after(0)] == ["other"]
        assert log.pending_forgets() == [5]
        assert RedisLiveHistoryReader(server.url).recent([5, 6]).keys() == {6}
        # the event ids are gone too: sent again, they are new events
        assert log.take([_row(event_id=f"{marker}-0", user_id=5)], now=NOW)[0].offset > 0
        log.forget_user(5)
        log.clear_forget(5)
        assert log.pending_forgets() == []
        files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
        assert files and all(marker.encode() not in p.read_bytes() for p in files)
        log.close()
    finally:
        server.stop()


def test_the_app_writer_needs_an_updater_s_set_up_then_answers_like_feedback(redis_server):
    prefix = f"w{uuid.uuid4().hex[:12]}"
    with pytest.raises(NotSetUp, match="--redis"):
        RedisEventWriter(redis_server.url, prefix=prefix)
    _open(redis_server.url, prefix=prefix, history_len=2).close()
    with RedisEventWriter(redis_server.url, prefix=prefix) as writer:
        result = writer.send([dict(event_id="a", user_id=3, item_id=9, kind="click"),
                              dict(event_id="a", user_id=3, item_id=9, kind="click"),
                              dict(user_id=3, kind="click"),
                              dict(user_id=3, item_id=8, kind="purchase")])
        assert result.accepted == 2 and result.duplicate_event_ids == ["a"]
        assert [(r["index"], r["field"]) for r in result.rejected] == [(2, "item_id")]
        assert result.last_offset == 2
        # a Redis restart empties its script cache: the writer sends the source again
        writer._redis.script_flush()
        assert writer.send([dict(user_id=3, item_id=7, kind="click")]).accepted == 1
    assert RedisLiveHistoryReader(redis_server.url, prefix).recent([3])[3].tolist() == [8, 7]


def test_retrieve_s_reader_follows_the_store_the_updater_chose(tmp_path, redis_server):
    model_dir = tmp_path / "retrieve"
    prefix = f"r{uuid.uuid4().hex[:12]}"
    log = _open(redis_server.url, prefix=prefix)
    log.take([_row(user_id=4, item_id=11)], now=NOW)
    reader = LiveStoreReader(model_dir)
    assert reader.recent([4]) == {}  # no choice written: the (absent) SQLite store
    write_store_choice(model_dir, redis_server.url, prefix)
    assert reader.recent([4])[4].tolist() == [11]
    write_store_choice(model_dir, None)
    assert reader.recent([4]) == {} and not history_path(model_dir).exists()
    reader.close()
    log.close()


def test_a_redis_that_does_not_answer_reads_as_no_live_history(tmp_path):
    reader = RedisLiveHistoryReader(f"unix://{tmp_path / 'nobody.sock'}")
    read = reader.read([1, 2], clock=True)
    assert read.items == {} and read.clock == -np.inf
    reader.close()


def test_a_log_on_a_redis_that_is_not_there_says_so(tmp_path):
    with pytest.raises(ConnectionError, match="no Redis answers"):
        RedisFeedbackLog(f"unix://{tmp_path / 'nobody.sock'}")


def test_keys_need_a_prefix_with_no_spaces():
    with pytest.raises(ValueError, match="prefix"):
        RedisKeys("a b")
    assert RedisKeys("x").history(7) == "x:history:7"


@pytest.mark.parametrize("change, name", [(dict(redis_url="http://127.0.0.1:6379"), "redis_url"),
                                          (dict(redis_prefix="a b"), "prefix")])
def test_the_updater_config_names_a_bad_redis_setting(tmp_path, change, name):
    from updater.main import UpdaterConfig

    with pytest.raises(ValueError, match=name):
        UpdaterConfig(repository=tmp_path, **{"redis_url": "redis://127.0.0.1:6379", **change})


def test_a_stream_entry_holds_the_layout_s_fields_in_its_order(log):
    """The intake script is generated from model_repository.redis_layout: what it writes is what
    RedisKeys and STREAM_FIELDS say, read raw, with no freshrec code in between."""
    (outcome,) = log.take([_row(event_id="raw", user_id="0012", item_id=5, value=1.5)], now=NOW)
    raw = redis_client(log.url, decode_responses=True)
    ((entry_id, fields),) = raw.xrange(log.keys.events)
    assert entry_id == f"0-{outcome.offset}"
    assert list(fields) == [field for field, _ in STREAM_FIELDS]
    assert layout.event_fields(fields) == {"event_id": "raw", "user_id": "12", "item_id": "5",
                                           "kind": "click", "value": "1.5",
                                           "timestamp": repr(NOW - 5)}
    assert raw.lrange(log.keys.history(12), 0, -1) == ["5"]
    assert raw.get(log.keys.offset) == str(outcome.offset)
    raw.close()


def test_an_item_outside_the_catalogue_is_not_found_and_leaves_no_trace(log):
    unknown, known, again = log.take([_row(event_id="u1", item_id=999_999_999),
                                      _row(event_id="k1", item_id=7),
                                      _row(event_id="u1", item_id=7)], now=NOW)
    assert (unknown.code, unknown.field) == (layout.NOT_FOUND, "item_id")
    assert unknown.reason == not_found_reason(999_999_999) and not unknown.offset
    # refused before the dedup: its event_id is still free, and nothing else moved
    assert known.offset == 1 and again.offset == 2
    assert [e.item_id for e in log.read_after(0)] == [7, 7]
    assert RedisLiveHistoryReader(log.url, log.keys.prefix).recent([1])[1].tolist() == [7, 7]
    log.set_catalogue(np.array([7, 999_999_999]), grows=False)  # items add: the set is replaced
    assert log.take([_row(event_id="u2", item_id=999_999_999)], now=NOW)[0].offset == 3
    assert log.take([_row(event_id="u3", item_id=2)], now=NOW)[0].code == layout.NOT_FOUND
    log.set_catalogue(np.array([7]), grows=True)
    assert log.take([_row(event_id="u4", item_id=123_456)], now=NOW)[0].offset == 4


def test_the_app_writer_reports_an_unknown_item_as_not_found(redis_server):
    prefix = f"n{uuid.uuid4().hex[:12]}"
    _open(redis_server.url, prefix=prefix).close()
    with RedisEventWriter(redis_server.url, prefix=prefix) as writer:
        result = writer.send([dict(user_id=1, item_id=999_999_999, kind="purchase"),
                              dict(user_id=1, item_id=3, kind="purchase")])
    assert result.accepted == 1
    assert [(r["index"], r["code"], r["field"]) for r in result.rejected] == [
        (0, "NOT_FOUND", "item_id")]
    assert RedisLiveHistoryReader(redis_server.url, prefix).recent([1])[1].tolist() == [3]
