"""Read-your-writes of the live history against real processes: once Feedback.Send (or a
SendEach session's send) has replied, the user's next recommend is built from the event, with no
version published in between."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest

from clients import Client, UpdaterClient
from model_repository import contract as c
from model_repository import versions
from model_repository.live_history import history_path

pytestmark = pytest.mark.integration
NO_PUBLISH = ("--publish-every-s", "100000", "--publish-every-events", "1000000")


@pytest.mark.parametrize("via", ["Send", "SendEach"])
def test_each_reply_is_visible_to_the_next_request_under_load_without_a_publish(via, stack,
                                                                               start_updater):
    updater = start_updater(args=NO_PUBLISH)
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
            send = (lambda user, item: up.feedback(user, item, "click")) if via == "Send" else (
                lambda user, item: session.send([dict(user_id=user, item_id=item, kind="click")]))
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
