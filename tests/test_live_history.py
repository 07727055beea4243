"""model_repository.live_history: each user's recent items, written per event, read per batch."""

import numpy as np
import pytest

from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.live_history import LiveHistory, LiveHistoryReader, history_path
from model_repository.serving import Query, Retriever

DIM, USERS, ITEMS, HISTORY = 6, 5, 40, 4
USER_OFFSET, ITEM_OFFSET = 100, 7000


@pytest.fixture
def store(tmp_path):
    writer = LiveHistory(history_path(tmp_path / "retrieve"), history_len=3)
    yield writer, LiveHistoryReader(writer.path)
    writer.close()


def test_appends_keep_the_last_items_in_order_and_the_offset(store):
    writer, reader = store
    writer.append([(1, 10, 1.0), (2, 20, 1.0), (1, 11, 1.0)], offset=3)
    writer.append([(1, 12, 1.0), (1, 13, 1.0)], offset=5)
    assert writer.applied_offset() == 5
    got = reader.recent([1, 2, 3])
    assert got.keys() == {1, 2}
    assert got[1].tolist() == [11, 12, 13] and got[2].tolist() == [20]
    assert writer.recent(1).tolist() == [11, 12, 13] and writer.recent(3).size == 0


def test_a_reader_sees_each_commit_at_once(store):
    writer, reader = store
    for n in range(5):
        writer.append([(9, 100 + n, 1.0)], offset=n + 1)
        assert reader.recent([9])[9][-1] == 100 + n  # read-your-writes, no reopen


def test_forget_deletes_the_row(store):
    writer, reader = store
    writer.append([(1, 10, 1.0), (2, 20, 1.0)], offset=2)
    assert writer.forget(1) and not writer.forget(1)
    assert reader.recent([1, 2]).keys() == {2}


def test_a_reader_waits_for_a_store_that_does_not_exist_yet(tmp_path):
    path = history_path(tmp_path / "retrieve")
    reader = LiveHistoryReader(path)
    assert reader.recent([1]) == {}
    writer = LiveHistory(path, history_len=2)
    writer.append([(1, 5, 1.0)], offset=1)
    assert reader.recent([1])[1].tolist() == [5]
    writer.close()
    reader.close()


# --- Retriever: HISTORY, then the live history, then the version's stored history ---

def _tower(user_emb, history_emb):
    return user_emb + history_emb


@pytest.fixture
def retriever(tmp_path):
    rng = np.random.default_rng(2)
    history = np.full((USERS, HISTORY), -1, np.int64)
    history[:, -1] = np.arange(USERS)  # user u's stored history: item row u
    tables = schema.make_tables(
        user_ids=np.arange(USERS) + USER_OFFSET, item_ids=np.arange(ITEMS) + ITEM_OFFSET,
        user_rows=rng.normal(size=(USERS, DIM)), item_rows=rng.normal(size=(ITEMS, DIM)),
        user_history=history, item_popularity=np.arange(ITEMS)[::-1])
    model_dir = tmp_path / "retrieve"
    versions.write_version(model_dir, 1, tables, meta={"recency_decay": 0.5})
    writer = LiveHistory(history_path(model_dir), history_len=HISTORY)
    yield Retriever(model_dir / "1", _tower, live_history=LiveHistoryReader(writer.path)), writer
    writer.close()


def _seen(retriever, user_id, **kwargs):
    """The items EXCLUDE_SEEN leaves out: exactly the history the query was built from."""
    (everything,) = retriever.answer([Query(user_id=user_id, k=ITEMS, **kwargs)])
    (without,) = retriever.answer([Query(user_id=user_id, k=ITEMS, exclude_seen=True, **kwargs)])
    return set(everything.item_ids.tolist()) - set(without.item_ids.tolist())


def test_the_live_history_comes_before_the_stored_one(retriever):
    model, writer = retriever
    user = USER_OFFSET + 2
    assert _seen(model, user) == {ITEM_OFFSET + 2}  # the version's stored history
    writer.append([(user, ITEM_OFFSET + 30, 1.0), (user, 99_999_999, 1.0),
                   (user, ITEM_OFFSET + 31, 1.0)], offset=3)
    assert _seen(model, user) == {ITEM_OFFSET + 30, ITEM_OFFSET + 31}  # unknown ids ignored
    sent = np.array([ITEM_OFFSET + 5])
    assert _seen(model, user, history=sent) == {ITEM_OFFSET + 5}  # HISTORY overrides both


def test_a_new_user_with_live_history_is_served_from_it_not_from_popularity(retriever):
    model, writer = retriever
    new_user = 424242
    (popular,) = model.answer([Query(user_id=new_user, k=5)])
    np.testing.assert_array_equal(popular.item_ids, np.arange(5) + ITEM_OFFSET)
    writer.append([(new_user, ITEM_OFFSET + 17, 1.0)], offset=1)
    (live,) = model.answer([Query(user_id=new_user, k=5)])
    (same,) = model.answer([Query(user_id=new_user, k=5, history=np.array([ITEM_OFFSET + 17]))])
    np.testing.assert_array_equal(live.item_ids, same.item_ids)
    np.testing.assert_array_equal(live.scores, same.scores)
    assert not np.array_equal(live.item_ids, popular.item_ids)


def test_a_reader_follows_a_store_deleted_and_rebuilt(store):
    writer, reader = store
    writer.append([(1, 10, 1.0)], offset=1)
    assert reader.recent([1])[1].tolist() == [10]
    writer.close()
    for path in writer.path.parent.iterdir():
        path.unlink()
    rebuilt = LiveHistory(writer.path, history_len=3)
    rebuilt.append([(1, 77, 1.0)], offset=1)
    assert reader.recent([1])[1].tolist() == [77]
    rebuilt.close()
