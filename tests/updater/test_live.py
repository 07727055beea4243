"""The updater against a real tritonserver: freshness, reload under load, crashes, rollback, forget.

One Triton serves this module's own copy of a build; each test starts real updater processes on
that repository and its feedback log, and asserts only relative to the state it finds (its own
new users and events, the versions it saw published), so each passes alone and in any order.
Waits poll under a deadline. Nothing here asserts a timing.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid

import grpc
import numpy as np
import pytest

from clients import Client, UpdaterClient
from freshrec.child_process import wait_until
from model_repository import contract as c
from model_repository import versions
from model_repository.impressions import RECORD, impressions_dir, wait_recording
from tests.updater.load import recommend_load
from updater import faults
from updater.main import LOG_FILE

pytestmark = pytest.mark.integration
WAIT_S = 60.0


def _new_id(base=10_000_000):
    return base + uuid.uuid4().int % 1_000_000


def _wait_published(up: UpdaterClient, offset: int, *, timeout_s: float = WAIT_S) -> dict:
    last = {}

    def published():
        last.update(up.status())
        return dict(last) if last["last_published_offset"] >= offset else None

    return wait_until(published, timeout_s=timeout_s, interval_s=0.05,
                      what=lambda: f"offset {offset} to be published (last status {last})")


def _serving_tables(repository):
    model_dir = repository / c.RETRIEVE
    version = versions.latest_version(model_dir)
    manifest, tables = versions.load_tables(model_dir / str(version))
    return manifest, {name: np.array(t) for name, t in tables.items()}


def _clicks(user_id, item_ids, *, prefix=None):
    prefix = prefix or uuid.uuid4().hex
    return [dict(event_id=f"{prefix}-{n}", user_id=user_id, item_id=i, kind="click")
            for n, i in enumerate(item_ids)]


def _log_db(repository):
    return sqlite3.connect(repository.parent / "updater" / LOG_FILE)


def test_a_click_moves_similar_items_up_for_that_user(repository, stack, start_updater):
    updater = start_updater()
    manifest, tables = _serving_tables(repository)
    user_id = int(tables["user_ids"][3])
    n_items = len(tables["item_ids"])
    with Client(stack.grpc_url) as client, UpdaterClient(updater.url) as up:
        before = client.recommend(user_id, k=n_items)
        # the clicked item: one the user ranks low today; "like it": its nearest items by row
        clicked = before.item_ids[int(n_items * 0.8)]
        rows = tables["item_rows"]
        row = int(np.flatnonzero(tables["item_ids"] == clicked)[0])
        cosine = rows @ rows[row] / (np.linalg.norm(rows, axis=1) * np.linalg.norm(rows[row]))
        cosine[row] = -np.inf
        similar = set(tables["item_ids"][np.argsort(-cosine)[:10]].tolist())
        result = up.feedback_batch(_clicks(user_id, [clicked] * 3))
        assert result.accepted == 3
        status = _wait_published(up, result.last_offset)
        after = client.recommend(user_id, k=n_items)
    assert after.version == status["published_version"] > before.version
    rank = lambda rec: np.mean([rec.item_ids.index(i) for i in similar])  # noqa: E731
    assert rank(after) < rank(before), (rank(before), rank(after))
    assert after.item_ids.index(clicked) < before.item_ids.index(clicked)
    _, tables = _serving_tables(repository)
    user_row = int(np.flatnonzero(tables["user_ids"] == user_id)[0])
    assert tables["user_history"][user_row, -3:].tolist() == [row] * 3


def test_the_recommend_client_sends_feedback_to_the_updater(repository, stack, start_updater):
    updater = start_updater()
    user_id = _new_id()
    item_id = int(_serving_tables(repository)[1]["item_ids"][2])
    with Client(stack.grpc_url, updater_url=updater.url) as client, UpdaterClient(updater.url) as up:
        sent = client.feedback(user_id, item_id, "click", event_id=f"client-{user_id}")
        again = client.feedback(user_id, item_id, "click", event_id=f"client-{user_id}")
        assert (sent.accepted, again.accepted) == (1, 0)
        assert again.duplicate_event_ids == [f"client-{user_id}"]
        status = _wait_published(up, sent.last_offset)
        answer = client.recommend(user_id, k=3)
    assert answer.version == status["published_version"]
    _, tables = _serving_tables(repository)
    assert user_id in tables["user_ids"].tolist()  # the new user got a row from that click


def test_clicks_are_attributed_to_the_answers_their_users_were_shown(repository, stack,
                                                                     start_updater):
    """Retrieve records each answer as an impression; the updater counts a later click on a
    shown item as a hit, on an item not shown as a miss, and a click of a user shown nothing
    as unexposed."""
    updater = start_updater()
    folder = impressions_dir(repository / c.RETRIEVE)
    shown_user, other_user = _new_id(), _new_id()
    with Client(stack.grpc_url) as client, UpdaterClient(updater.url) as up:
        before = up.status()["exposure"]
        wait_recording(repository / c.RETRIEVE, lambda: client.recommend(1, k=1))
        answer = client.recommend(shown_user, k=5)
        records = np.concatenate([np.fromfile(f, RECORD) for f in folder.glob("*.imp")])
        mine = records[records["user"] == shown_user]
        assert mine.size and mine["version"][-1] == answer.version and mine["arm"][-1] == 0
        assert mine["items"][-1][:5].tolist() == list(answer.item_ids)
        not_shown = next(int(i) for i in _serving_tables(repository)[1]["item_ids"]
                         if int(i) not in answer.item_ids)
        events = _clicks(shown_user, [int(answer.item_ids[1]), not_shown])
        events += _clicks(other_user, [int(answer.item_ids[0])])
        _wait_published(up, up.feedback_batch(events).last_offset)
        after = up.status()["exposure"]
    assert after["impressions"] > before["impressions"]
    assert after["events"] - before["events"] == 2  # the shown user's two clicks
    assert after["hits"] - before["hits"] == 1       # the one on a shown item
    assert after["unexposed"] - before["unexposed"] == 1  # the user shown nothing


def test_single_event_sends_are_trained_on_the_engine_tick_and_its_cpu_is_counted(
        repository, start_updater):
    """The intake does not wake the engine per Send while it has work: events still reach the
    trainer on its next tick with no publish asked, and Status splits out its CPU."""
    updater = start_updater(args=("--publish-every-s", "1e9", "--publish-every-events", "1000000"))
    item_ids = _serving_tables(repository)[1]["item_ids"][:5].tolist()
    with UpdaterClient(updater.url) as up:
        before = up.status()
        for n in range(40):
            last = up.feedback_batch(_clicks(_new_id(), [item_ids[n % 5]])).last_offset
        applied = wait_until(lambda: (s := up.status())["applied_offset"] >= last and s,
                             timeout_s=WAIT_S, interval_s=0.02, what="the events to be trained")
        assert applied["last_published_offset"] < last  # trained, not published
        assert applied["training_cpu_s"] > before["training_cpu_s"]
        assert applied["publishing_cpu_s"] == before["publishing_cpu_s"]
        assert up.publish()["feedback_offset"] >= last
        assert up.status()["publishing_cpu_s"] > applied["publishing_cpu_s"]


def test_a_session_replies_per_send_and_goes_on_past_rejected_events(repository, start_updater):
    updater = start_updater()
    user_id = _new_id()
    items = [int(i) for i in _serving_tables(repository)[1]["item_ids"][:3]]
    with UpdaterClient(updater.url) as up:
        with up.feedback_session() as session:
            first = session.send(_clicks(user_id, items[:2], prefix=f"s{user_id}"))
            bad = session.send([dict(event_id="x", user_id=user_id, item_id=1, kind="like"),
                                dict(event_id=f"t{user_id}", user_id=user_id, item_id=items[2],
                                     kind="click")])
            only_bad = session.send([dict(event_id="y", item_id=1, kind="click")])
            again = session.send(_clicks(user_id, items[:2], prefix=f"s{user_id}"))
        assert first.accepted == 2 and first.last_offset > 0
        assert bad.accepted == 1 and bad.last_offset > first.last_offset
        assert bad.rejected == [dict(index=0, event_id="x", field="kind", reason=bad.rejected[0][
            "reason"], code="INVALID_ARGUMENT")]
        assert only_bad.accepted == 0 and only_bad.rejected[0]["field"] == "user_id"
        assert again.accepted == 0 and len(again.duplicate_event_ids) == 2
        with up.feedback_session() as session, pytest.raises(grpc.RpcError) as empty:
            session.send([])
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "events: no events sent" in empty.value.details()
        # each open session holds one of the updater's gRPC workers: at most half of them
        sessions = [up.feedback_session() for _ in range(4)]
        try:
            for session in sessions:
                assert session.send(_clicks(user_id, items[:1])).accepted == 1
            with up.feedback_session() as extra, pytest.raises(grpc.RpcError) as full:
                extra.send(_clicks(user_id, items[:1]))
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert up.feedback_batch(_clicks(user_id, items[:1])).accepted == 1  # Send still works
        finally:
            for session in sessions:
                session.close()
        with up.feedback_session() as session:  # a closed session frees its worker
            assert session.send(_clicks(user_id, items[:1])).accepted == 1


def test_resent_events_count_once_and_bad_events_name_their_field(repository, start_updater):
    updater = start_updater()
    user_id = _new_id()
    items = [int(i) for i in _serving_tables(repository)[1]["item_ids"][:4]]
    events = _clicks(user_id, items)
    with UpdaterClient(updater.url) as up:
        first = up.feedback_batch(events)
        again = up.feedback_batch(events)
        streamed = up.feedback_stream([events[:2], events[2:]])
        assert (first.accepted, len(first.duplicate_event_ids)) == (4, 0)
        sent_ids = sorted(e["event_id"] for e in events)
        assert (again.accepted, sorted(again.duplicate_event_ids)) == (0, sent_ids)
        assert streamed.accepted == 0 and len(streamed.duplicate_event_ids) == 4
        bad = [dict(event_id="x1", user_id=user_id, item_id=1, kind="like"),
               dict(event_id="x2", item_id=1, kind="click"),
               dict(event_id="x3", user_id=user_id, item_id=1, kind="click", timestamp=-3.0),
               dict(event_id=f"ok-{uuid.uuid4().hex}", user_id=user_id, item_id=items[0], kind="click")]
        mixed = up.feedback_batch(bad)
        assert mixed.accepted == 1
        assert [(r["index"], r["field"]) for r in mixed.rejected] == [(0, "kind"), (1, "user_id"),
                                                                       (2, "timestamp")]
        with pytest.raises(grpc.RpcError) as caught:
            up.feedback(user_id, 1, "like")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "kind" in caught.value.details()
        _wait_published(up, mixed.last_offset)
    _, tables = _serving_tables(repository)
    row = int(np.flatnonzero(tables["user_ids"] == user_id)[0])
    item_rows = [int(np.flatnonzero(tables["item_ids"] == i)[0]) for i in items + [items[0]]]
    history = tables["user_history"][row]
    assert history[history >= 0].tolist() == item_rows  # each event applied exactly once
    with _log_db(repository) as db:
        assert db.execute("SELECT COUNT(*) FROM events WHERE user_id = ?", (user_id,)).fetchone()[0] == 5


def test_reloads_under_concurrent_load_fail_no_request(repository, stack, start_updater):
    updater = start_updater()
    user_ids = [int(u) for u in _serving_tables(repository)[1]["user_ids"][:8]]
    with recommend_load(stack.grpc_url, user_ids) as load, UpdaterClient(updater.url) as up:
        start_version = up.status()["published_version"]
        for n in range(4):  # four publishes, each a Triton reload, under load
            result = up.feedback(user_ids[n], int(_serving_tables(repository)[1]["item_ids"][n]))
            status = _wait_published(up, result.last_offset)
        # keep the load on until it has been answered by the last version published
        wait_until(lambda: status["published_version"] in load.seen, timeout_s=WAIT_S,
                   what="an answer from the last published version")
    assert load.failures == []
    assert status["published_version"] >= start_version + 4
    assert len(load.seen) >= 2 and load.served > 0  # answers really came from several versions


def _check_recovered(repository, up, client, *, user_id, items):
    """After a restart: every acknowledged event is in the log once and in the serving version
    once, the serving version is the newest one on disk and it verifies."""
    status = _wait_published(up, up.status()["log_offset"])
    model_dir = repository / c.RETRIEVE
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".tmp-")]
    newest = versions.latest_version(model_dir)
    assert status["published_version"] == newest == status["serving_versions"]["retrieve"]
    assert client.recommend(user_id, k=3).version == newest
    for v in versions.list_versions(model_dir):
        versions.verify_version(model_dir / str(v))
    _, tables = _serving_tables(repository)
    row = int(np.flatnonzero(tables["user_ids"] == user_id)[0])
    history = tables["user_history"][row]
    want = [int(np.flatnonzero(tables["item_ids"] == i)[0]) for i in items]
    assert history[history >= 0].tolist() == want[-history.shape[0]:]
    with _log_db(repository) as db:
        assert db.execute("SELECT COUNT(*) FROM events WHERE user_id = ?",
                          (user_id,)).fetchone()[0] == len(items)


@pytest.mark.parametrize("point", faults.CRASH_POINTS)
def test_kill_9_at_each_point_then_restart_recovers(point, repository, stack, start_updater):
    updater = start_updater(extra_env={faults.CRASH_ENV: point})
    user_id = _new_id()
    items = [int(i) for i in _serving_tables(repository)[1]["item_ids"][10:16]]
    events = _clicks(user_id, items)
    model_dir = repository / c.RETRIEVE
    with Client(stack.grpc_url) as client:
        serving_before = client.recommend(user_id, k=3).version
        with UpdaterClient(updater.url) as up:
            try:
                up.feedback_batch(events)  # durable before the reply; the crash follows it
            except grpc.RpcError:
                pass  # killed before the reply left: the client retries below, idempotently
        assert updater.wait_exit() == -9
        # Triton kept serving a complete version all along
        serving = client.recommend(user_id, k=3).version
        assert serving in versions.list_versions(model_dir)
        if point in ("mid_batch", "before_rename"):
            assert serving == serving_before
        if point == "before_rename":
            assert [p for p in model_dir.iterdir() if p.name.startswith(".tmp-")]
            assert versions.latest_version(model_dir) == serving_before
        if point == "after_rename":
            # complete once renamed: the running retrieve may switch to it on its own (after
            # verifying it), with no updater left to probe it
            assert versions.latest_version(model_dir) == serving_before + 1
            assert serving in (serving_before, serving_before + 1)
            versions.verify_version(model_dir / str(serving))
        restarted = start_updater()
        with UpdaterClient(restarted.url) as up:
            retry = up.feedback_batch(events)
            assert retry.accepted == 0 and len(retry.duplicate_event_ids) == len(events)
            _check_recovered(repository, up, client, user_id=user_id, items=items)


def test_kill_9_under_streaming_feedback_loses_nothing(repository, stack, start_updater):
    updater = start_updater()
    user_id = _new_id()
    items = [int(i) for i in _serving_tables(repository)[1]["item_ids"]]
    acked, stop = [], threading.Event()

    def send():
        with UpdaterClient(updater.url) as up:
            for n in range(10_000):
                if stop.is_set():
                    return
                event = _clicks(user_id, [items[n % len(items)]], prefix=f"s{n}")
                try:
                    up.feedback_batch(event)
                except grpc.RpcError:
                    return
                acked.append(event[0]["item_id"])

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: len(acked) >= 40 or not sender.is_alive(), timeout_s=WAIT_S, interval_s=0.01,
               what=lambda: f"40 acknowledged events (got {len(acked)})")
    assert len(acked) >= 40, f"the sender stopped after {len(acked)} events"
    updater.kill()  # kill -9 wherever it is: mid-batch, mid-publish, mid-reload
    stop.set()
    sender.join()
    restarted = start_updater()
    with UpdaterClient(restarted.url) as up, Client(stack.grpc_url) as client:
        with _log_db(repository) as db:
            stored = db.execute('SELECT item_id FROM events WHERE user_id = ? ORDER BY "offset"',
                                (user_id,)).fetchall()
        stored = [s[0] for s in stored]
        assert stored[: len(acked)] == acked  # every acknowledged event, in order, once
        assert len(stored) <= len(acked) + 1  # at most the one in flight when it died
        _check_recovered(repository, up, client, user_id=user_id, items=stored)


def test_a_version_that_fails_verification_is_never_served(repository, stack, start_updater):
    updater = start_updater(extra_env={faults.FAULT_ENV: "corrupt_once"})
    user_id = _new_id()
    item = int(_serving_tables(repository)[1]["item_ids"][0])
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        before = up.status()["published_version"]
        result = up.feedback(user_id, item)
        status = _wait_published(up, result.last_offset)  # the retry after the failure
        failed = status["failed_versions"]
        assert len(failed) == 1 and "checksum" in failed[0]["reason"]
        bad = failed[0]["version"]
        assert bad > before and bad not in status["kept_versions"]
        assert not (repository / c.RETRIEVE / str(bad)).exists()
        assert (repository / c.RETRIEVE / failed[0]["moved_to"]).is_dir()
        assert status["published_version"] > bad
        assert client.recommend(user_id, k=3).version == status["published_version"]


def test_rollback_serves_the_previous_tables_in_a_new_version(repository, stack, start_updater):
    updater = start_updater()
    model_dir = repository / c.RETRIEVE
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        result = up.feedback(_new_id(), int(_serving_tables(repository)[1]["item_ids"][1]))
        status = _wait_published(up, result.last_offset)
        current = status["published_version"]
        previous = max(v for v in status["kept_versions"] if v < current)
        reply = up.rollback()
        assert reply["version"] > current
        assert client.recommend(0, k=3).version == reply["version"]
        _, target = versions.load_tables(model_dir / str(previous))
        _, rolled = versions.load_tables(model_dir / str(reply["version"]))
        for name in ("user_ids", "user_rows", "item_rows", "user_history"):
            np.testing.assert_array_equal(rolled[name], target[name], err_msg=name)
        assert versions.read_manifest(model_dir / str(reply["version"])).parent == previous
        with pytest.raises(grpc.RpcError) as caught:
            up.rollback(to=999_999)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_forget_user_leaves_no_trace(repository, stack, start_updater):
    updater = start_updater()
    _, tables = _serving_tables(repository)
    user_id = int(tables["user_ids"][5])  # in the base model too: every kept version holds them
    marker = f"forget-me-{uuid.uuid4().hex}"
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        result = up.feedback_batch(_clicks(user_id, [int(tables["item_ids"][7])] * 2, prefix=marker))
        _wait_published(up, result.last_offset)
        reply = up.forget_user(user_id)
        assert reply["deleted_events"] >= 2
        status = up.status()
        assert status["serving_versions"]["retrieve"] == reply["version"]
        assert client.recommend(user_id, k=3).version == reply["version"]
    model_dir = repository / c.RETRIEVE
    for version in versions.list_versions(model_dir):
        _, kept = versions.load_tables(model_dir / str(version))
        assert user_id not in np.asarray(kept["user_ids"]), version
    assert reply["removed_versions"]
    for _, quarantined in versions.list_quarantined(model_dir):  # failed versions are scrubbed too
        assert user_id not in np.asarray(versions.load_tables(quarantined)[1]["user_ids"])
    with _log_db(repository) as db:
        assert db.execute("SELECT COUNT(*) FROM events WHERE user_id = ?", (user_id,)).fetchone()[0] == 0
    for file in (repository.parent / "updater").glob(LOG_FILE + "*"):
        assert marker.encode() not in file.read_bytes(), file.name
