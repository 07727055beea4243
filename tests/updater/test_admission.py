"""What feedback may enter (updater.admission), without Triton: the catalogue check at the gRPC
intake over the SQLite log (a real grpcio server), and the bound on new user rows in the engine."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import UpdaterClient
from model_repository.live_history import LiveHistoryReader, history_path
from tests.updater.test_trainer import ITEMS, NOW, USERS, _numpy_tower, _tables
from updater.admission import Catalogue, NewUserBudget, not_found_reason
from updater.engine import Engine
from updater.events import validate
from updater.feedback_log import FeedbackLog
from updater.service import grpc_server
from updater.settings import IntakePolicy
from updater.trainer import SparseTrainer

KNOWN_ITEMS = np.arange(ITEMS, dtype=np.int64) * 7 + 500  # _tables()' item ids
KNOWN_USER = 1000
UNKNOWN_ITEM = 999_999_999


class NoPublisher:
    """The publisher's state Status reads; these tests publish nothing."""

    current = 1
    failed = records = quality = ()
    model_dir = Path("no-versions")  # nothing to ask for a quality record: it logs and skips

    def kept_versions(self):
        return [1]

    def against_parent(self, record):
        return record


def _engine(tmp_path, **intake) -> Engine:
    """An engine on a SQLite log (with its live history) over test_trainer's tables, its
    catalogue set as recover() sets it."""
    feedback_log = FeedbackLog(tmp_path / "log.sqlite", live_history=history_path(tmp_path))
    engine = Engine(feedback_log, NoPublisher(), intake=IntakePolicy(**intake))
    engine.trainer = SparseTrainer(_tables(), _numpy_tower())
    feedback_log.open_intake(history_len=engine.trainer.history_len)
    engine._catalogue_changed()
    return engine


@pytest.fixture
def intake(tmp_path):
    """(engine, UpdaterClient) with the engine's Feedback service on a free port."""
    engine = _engine(tmp_path)
    server, port = grpc_server("127.0.0.1:0", engine.log, engine, triton=None)
    try:
        with UpdaterClient(f"127.0.0.1:{port}") as up:
            yield engine, up
    finally:
        server.stop(grace=0).wait()
        engine.log.close()


def test_an_unknown_item_is_not_found_and_never_enters_the_log_or_the_history(intake, tmp_path):
    engine, up = intake
    result = up.feedback_batch([dict(event_id="a", user_id=KNOWN_USER, item_id=UNKNOWN_ITEM,
                                     kind="purchase"),
                                dict(event_id="b", user_id=KNOWN_USER, item_id=507, kind="like"),
                                dict(event_id="c", user_id=KNOWN_USER, item_id=507, kind="click")])
    assert result.accepted == 1
    assert [(r["index"], r["code"], r["field"]) for r in result.rejected] == [
        (0, "NOT_FOUND", "item_id"), (1, "INVALID_ARGUMENT", "kind")]
    assert result.rejected[0]["reason"] == not_found_reason(UNKNOWN_ITEM)
    assert [e.item_id for e in engine.log.read_after(0)] == [507]
    live = LiveHistoryReader(history_path(tmp_path))
    assert live.recent([KNOWN_USER])[KNOWN_USER].tolist() == [507]
    # a call whose every event names unknown items fails NOT_FOUND, naming the field
    with pytest.raises(grpc.RpcError) as caught:
        up.feedback(1, UNKNOWN_ITEM, "purchase")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"item_id: item {UNKNOWN_ITEM} is not in the serving catalogue" in caught.value.details()
    # so 199 purchases by 199 users add no item: nothing of them reaches the trainer
    for user in range(199):
        with pytest.raises(grpc.RpcError):
            up.feedback(50_000 + user, UNKNOWN_ITEM, "purchase")
    engine._consume()
    assert engine.trainer.n_items == ITEMS and UNKNOWN_ITEM not in engine.trainer.item_index
    assert live.recent([1, 50_000]) == {}
    live.close()


def test_items_added_join_the_catalogue_and_growing_from_feedback_is_explicit(tmp_path):
    engine = _engine(tmp_path / "fixed")
    assert engine.catalogue.unknown([UNKNOWN_ITEM, 500]).tolist() == [True, False]
    engine.trainer.add_items(np.array([UNKNOWN_ITEM]), np.zeros((1, 8), np.float32))
    engine._catalogue_changed()  # what add_items does once the version serving them is out
    assert engine.catalogue.unknown([UNKNOWN_ITEM]).tolist() == [False]
    grows = _engine(tmp_path / "grows", grow_catalogue=True)
    assert grows.catalogue.unknown([UNKNOWN_ITEM, 1]).tolist() == [False, False]
    assert grows.snapshot()["catalogue_grows"] and not engine.snapshot()["catalogue_grows"]


def test_catalogue_lookups_on_edges():
    assert Catalogue().unknown([0]).tolist() == [True]  # empty
    catalogue = Catalogue([30, 10, 20, 10])
    assert len(catalogue) == 3
    assert catalogue.unknown([5, 10, 15, 30, 31]).tolist() == [True, False, True, False, True]
    assert catalogue.unknown([]).shape == (0,)


def test_the_new_user_budget_is_a_sliding_minute():
    now = [0.0]
    budget = NewUserBudget(2, clock=lambda: now[0])
    assert [budget.take() for _ in range(3)] == [True, True, False]
    now[0] = 59.9
    assert not budget.take() and budget.last_min() == 2
    now[0] = 60.0  # the first two leave the window
    assert budget.last_min() == 0 and budget.take() and budget.last_min() == 1
    assert not NewUserBudget(0).take()


def test_past_the_bound_a_new_user_s_events_are_logged_and_live_but_train_nothing(tmp_path):
    engine = _engine(tmp_path, max_new_users_per_min=2)
    new_users = [7001, 7002, 7003, 7004]
    events = [validate(f"n{n}", user, 500 + 7 * n, "click", 0.0, NOW, now=NOW)
              for n, user in enumerate(new_users + [7001, KNOWN_USER])]
    stored, _ = engine.log.append(events)
    assert len(stored) == 6
    popularity = engine.trainer.t["item_popularity"].live.copy()
    engine._consume()
    trainer = engine.trainer
    assert trainer.n_users == USERS + 2
    assert [u in trainer.user_index for u in new_users] == [True, True, False, False]
    # the deferred users' items got no count; the admitted ones' (7001 twice, the known user) did
    moved = np.flatnonzero(trainer.t["item_popularity"].live != popularity).tolist()
    assert moved == [0, 1, 4, 5]
    snap = engine.snapshot()
    assert (snap["new_users_last_min"], snap["max_new_users_per_min"],
            snap["deferred_new_user_events"]) == (2, 2, 2)
    assert engine.applied_offset == 6  # read past: they are not retried
    live = LiveHistoryReader(history_path(tmp_path))
    assert live.recent([7003])[7003].tolist() == [514]  # the user's answers still see the event
    live.close()
    engine.log.close()
