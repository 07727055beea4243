"""Read-your-writes of the live history against real processes: once Feedback.Send (or a
SendEach session's send, or an app's write straight to a Redis log) has replied, the user's next
recommend is built from the event, with no version published in between."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest

from clients import Client, RedisEventWriter, UpdaterClient
from freshrec.child_process import wait_until
from freshrec.processes import RedisServer
from model_repository import contract as c
from model_repository import versions
from model_repository.live_history import RedisLiveHistoryReader, history_path

pytestmark = pytest.mark.integration
NO_PUBLISH = ("--publish-every-s", "100000", "--publish-every-events", "1000000")


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


def _redis_args(redis_server):
    """An updater on the module's Redis, under a prefix of its own."""
    return ("--redis", redis_server.url, "--redis-prefix", f"t{uuid.uuid4().hex[:12]}")


@pytest.mark.parametrize("via", ["Send", "SendEach", "redis-Send", "redis-app"])
def test_each_reply_is_visible_to_the_next_request_under_load_without_a_publish(via, stack,
                                                                               start_updater,
                                                                               redis_server):
    """redis-Send: the updater's Feedback.Send on a Redis log; redis-app: the app writes to Redis
    itself (clients.RedisEventWriter), the updater never sees the call."""
    redis_args = _redis_args(redis_server) if via.startswith("redis") else ()
    updater = start_updater(args=NO_PUBLISH + redis_args)
    model_dir = stack.repository / c.RETRIEVE
    _, tables = versions.load_tables(model_dir / str(versions.latest_version(model_dir)))
    items, users = np.array(tables["item_ids"]), np.array(tables["user_ids"])
    stop, failures = threading.Event(), []

    def hammer(seed):  # other users' traffic the whole time
        rng = np.random.default_rng(seed)
        with Client(stack.grpc_url) as client:
            while not stop.is_set():
                try:
                    client.recommend(int(rng.choice(users)), k=10)
                except Exception as exc:  # noqa: BLE001 - reported below
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    rng = np.random.default_rng(1)
    try:
        with Client(stack.grpc_url) as client, UpdaterClient(updater.url) as up, \
                up.feedback_session() as session:
            if via == "redis-app":
                sender = RedisEventWriter(redis_server.url, prefix=redis_args[-1]).send
            else:
                sender = session.send if via == "SendEach" else up.feedback_batch  # Feedback.Send

            def send(user, item):
                return sender([dict(user_id=user, item_id=item, kind="click")])
            version = client.recommend(int(users[0]), k=1).version
            for n in range(30):
                user = 50_000_000 + uuid.uuid4().int % 1_000_000  # new: no row, no stored history
                clicked = [int(i) for i in rng.choice(items, size=1 + n % 3, replace=False)]
                for item in clicked:
                    assert send(user, item).accepted == 1
                    seen = client.recommend(user, k=len(items), exclude_seen=True)
                    # built from exactly the live history so far: its items are the ones excluded
                    assert set(seen.item_ids).isdisjoint(clicked[:clicked.index(item) + 1])
                    assert len(seen.item_ids) == len(items) - clicked.index(item) - 1
                assert client.recommend(user, k=1).version == version  # nothing was published
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]


def test_forget_user_and_a_restart_cover_the_live_history(stack, start_updater):
    updater = start_updater(args=NO_PUBLISH)
    user = 60_000_000 + uuid.uuid4().int % 1_000_000
    model_dir = stack.repository / c.RETRIEVE
    _, tables = versions.load_tables(model_dir / str(versions.latest_version(model_dir)))
    item = int(tables["item_ids"][3])
    with Client(stack.grpc_url) as client, UpdaterClient(updater.url) as up:
        up.feedback(user, item, "click")
        assert item not in client.recommend(user, k=50, exclude_seen=True).item_ids
        # the store is deleted while the updater is down: the restart rebuilds it from the log
        stack.stop_updaters()
        for path in history_path(model_dir).parent.iterdir():
            path.unlink()
    restarted = start_updater(args=NO_PUBLISH)
    with Client(stack.grpc_url) as client, UpdaterClient(restarted.url) as up:
        before = client.recommend(user, k=50, exclude_seen=True).item_ids
        assert item not in before  # rebuilt from the log
        up.forget_user(user)
        # no history left: EXCLUDE_SEEN excludes nothing
        everything = client.recommend(user, k=len(tables["item_ids"]), exclude_seen=True)
        assert len(everything.item_ids) == len(tables["item_ids"])


def test_a_redis_log_is_learned_forgotten_and_survives_an_updater_restart(stack, start_updater,
                                                                         redis_server):
    redis_args = _redis_args(redis_server)
    prefix = redis_args[-1]
    updater = start_updater(args=NO_PUBLISH + redis_args)
    model_dir = stack.repository / c.RETRIEVE
    _, tables = versions.load_tables(model_dir / str(versions.latest_version(model_dir)))
    items, known = [int(i) for i in tables["item_ids"][:4]], int(tables["user_ids"][2])
    new_user = 70_000_000 + uuid.uuid4().int % 1_000_000
    with RedisEventWriter(redis_server.url, prefix=prefix) as writer, \
            UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        sent = writer.send([dict(user_id=known, item_id=items[0], kind="click"),
                            dict(user_id=new_user, item_id=items[1], kind="click")])
        # the engine reads what apps wrote straight to Redis, and publishes it when asked
        wait_until(lambda: up.status()["applied_offset"] >= sent.last_offset, timeout_s=60,
                   what="the updater to read the events written to redis")
        published = up.publish()
        assert published["published"] and published["feedback_offset"] >= sent.last_offset
        assert up.status()["events_per_s"] > 0
        stack.stop_updaters()
        # down: apps still write, and their users' next answers still see it
        late = writer.send([dict(user_id=new_user, item_id=items[2], kind="click")])
        seen = client.recommend(new_user, k=len(items) + 50, exclude_seen=True).item_ids
        assert not {items[1], items[2]} & set(seen)
    restarted = start_updater(args=NO_PUBLISH + redis_args)
    with UpdaterClient(restarted.url) as up, Client(stack.grpc_url) as client:
        wait_until(lambda: up.status()["applied_offset"] >= late.last_offset, timeout_s=60,
                   what="the restarted updater to read the event sent while it was down")
        # an item the serving version does not know: NOT_FOUND in the app's own write too, and
        # no trace of it in the user's history
        with RedisEventWriter(redis_server.url, prefix=prefix) as writer:
            refused = writer.send([dict(user_id=new_user, item_id=999_999_999, kind="purchase")])
        assert refused.accepted == 0
        assert [(r["code"], r["field"]) for r in refused.rejected] == [("NOT_FOUND", "item_id")]
        assert 999_999_999 not in RedisLiveHistoryReader(redis_server.url, prefix).recent(
            [new_user])[new_user]
        reply = up.forget_user(new_user)
        assert reply["deleted_events"] == 2
        assert RedisLiveHistoryReader(redis_server.url, prefix).recent([new_user]) == {}
        everything = client.recommend(new_user, k=len(tables["item_ids"]), exclude_seen=True)
        assert len(everything.item_ids) == len(tables["item_ids"])
