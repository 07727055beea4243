"""Engine.add_items without a server: the publish step is a stand-in that fails, so what is
checked is the engine's own bookkeeping (the live path is tests/text/test_add_items.py)."""

import numpy as np
import pytest

from model_repository import contract as c
from tests.updater.test_trainer import DIM, ITEMS, _numpy_tower, _tables
from updater.engine import CommandError, Engine
from updater.feedback_log import FeedbackLog
from updater.publisher import PublishError
from updater.trainer import SparseTrainer


class FailingPublisher:
    current = 1

    def publish(self, tables, **kwargs):
        raise PublishError("version 2 not served: probe failed")


@pytest.fixture
def engine(tmp_path):
    engine = Engine(FeedbackLog(tmp_path / "log.db"), FailingPublisher())
    rng = np.random.default_rng(5)
    text = {"text_projection": rng.normal(size=(c.TEXT_DIM, DIM)).astype(np.float32),
            "text_projection_bias": np.zeros(DIM, np.float32)}
    engine.trainer = SparseTrainer({**_tables(), **text}, _numpy_tower())
    return engine


def test_a_failed_publish_takes_the_new_items_out_again(engine):
    emb = np.random.default_rng(6).normal(size=(2, c.TEXT_DIM)).astype(np.float32)
    with pytest.raises(PublishError):
        engine.add_items(np.array([9001, 9002]), emb)
    assert engine.trainer.n_items == ITEMS and 9001 not in engine.trainer.item_index
    assert not engine.trainer.has_changes()


def test_known_ids_and_a_version_without_text_are_refused(engine):
    emb = np.zeros((1, c.TEXT_DIM), np.float32)
    with pytest.raises(CommandError, match=r"items\[0\].item_id: item 500 exists already") as err:
        engine.add_items(np.array([500]), emb)
    assert err.value.code == "ALREADY_EXISTS"
    del engine.trainer.fixed["text_projection"]
    with pytest.raises(CommandError, match="built without the text encoder") as err:
        engine.add_items(np.array([9001]), emb)
    assert err.value.code == "FAILED_PRECONDITION"
    assert engine.trainer.n_items == ITEMS
