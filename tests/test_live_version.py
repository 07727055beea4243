"""model_repository.live_version: the running retrieve switches to newer data-only versions."""

import gc
import threading
import time
import weakref

import numpy as np
import pytest

from model_repository import retrieve_schema as schema
from model_repository import templates, versions
from model_repository.live_version import VersionWatcher, swap_blocker
from model_repository.serving import Query, Retriever

DIM, USERS, ITEMS = 8, 20, 300
USER_OFFSET, ITEM_OFFSET = 1000, 50_000


def _tower(user_emb, history_emb):
    return user_emb + history_emb


def _tables(seed):
    rng = np.random.default_rng(seed)
    return schema.make_tables(
        user_ids=np.arange(USERS) + USER_OFFSET, item_ids=np.arange(ITEMS) + ITEM_OFFSET,
        user_rows=rng.normal(size=(USERS, DIM)), item_rows=rng.normal(size=(ITEMS, DIM)),
        user_history=rng.integers(-1, ITEMS, size=(USERS, 4)), item_popularity=np.ones(ITEMS))


class Repo:
    """A retrieve model folder written as the publisher writes it: small shards, hard links."""

    def __init__(self, root, *, code=None):
        self.model_dir = root / "retrieve"
        self.code = code or templates.template("retrieve")
        self.tables = {}

    def publish(self, version, seed, *, changed=None, code=None):
        tables = _tables(seed)
        parent = version - 1 if version - 1 in self.tables else None
        changed_rows = None
        if parent is not None and changed is not None:  # only item_rows row `changed` moves
            tables = {name: np.array(t) for name, t in self.tables[parent].items()}
            tables[schema.ITEM_ROWS][changed] += 1.0
            changed_rows = {name: np.zeros(0, np.int64) for name in tables}
            changed_rows[schema.ITEM_ROWS] = np.array([changed])
        path = versions.write_version(
            self.model_dir, version, tables, parent=parent, changed_rows=changed_rows,
            shard_bytes=1024, files={"model.py": code or self.code},
            meta=schema.RetrieveMeta(dim=DIM, history_len=4).to_dict())
        self.tables[version] = tables
        return path


def _open(version_dir):
    return Retriever(version_dir, _tower)


def _watcher(repo):
    first = repo.model_dir / str(versions.latest_version(repo.model_dir))
    return VersionWatcher(repo.model_dir, _open(first), _open)


def _answer(retriever, user=USER_OFFSET + 3):
    (answer,) = retriever.answer([Query(user_id=user, k=5)])
    return answer


def test_a_newer_version_is_switched_to_and_answers_with_its_own_tables(tmp_path):
    repo = Repo(tmp_path)
    repo.publish(1, seed=1)
    watcher = _watcher(repo)
    assert not watcher.check()  # nothing newer
    repo.publish(2, seed=1, changed=7)
    assert watcher.check() and watcher.version == 2
    got, want = _answer(watcher.current), _answer(_open(repo.model_dir / "2"))
    assert got.version == 2
    np.testing.assert_array_equal(got.item_ids, want.item_ids)
    np.testing.assert_array_equal(got.scores, want.scores)


def test_half_written_folders_are_never_seen(tmp_path):
    repo = Repo(tmp_path)
    repo.publish(1, seed=1)
    watcher = _watcher(repo)
    (repo.model_dir / ".tmp-2-123").mkdir()  # a publish in progress
    (repo.model_dir / ".tmp-2-123" / "manifest.json").write_text("{}")
    (repo.model_dir / "3").mkdir()  # numbered, but no manifest: not a version
    assert not watcher.check() and watcher.version == 1 and not watcher.refused


def test_a_corrupted_version_is_refused_once_and_a_later_good_one_still_switches(tmp_path):
    repo = Repo(tmp_path)
    repo.publish(1, seed=1)
    watcher = _watcher(repo)
    path = repo.publish(2, seed=1, changed=7)
    written = versions.written_shards(path, repo.model_dir / "1")
    data = bytearray(written[0].read_bytes())
    data[-1] ^= 0xFF
    written[0].write_bytes(bytes(data))
    assert not watcher.check()
    assert watcher.version == 1 and "checksum mismatch" in watcher.refused[2]
    repo.publish(3, seed=3)
    assert watcher.check() and watcher.version == 3


def test_other_code_or_another_embedding_size_waits_for_a_load(tmp_path):
    repo = Repo(tmp_path)
    repo.publish(1, seed=1)
    watcher = _watcher(repo)
    other_code = tmp_path / "model.py"
    other_code.write_text("# a new model.py\n")
    repo.publish(2, seed=2, code=other_code)
    assert not watcher.check() and "needs load_model" in watcher.refused[2]
    assert swap_blocker(versions.read_manifest(repo.model_dir / "1"),
                        versions.read_manifest(repo.model_dir / "1")) is None


def test_the_old_version_is_released_once_no_batch_holds_it(tmp_path):
    repo = Repo(tmp_path)
    repo.publish(1, seed=1)
    watcher = _watcher(repo)
    in_flight = watcher.current  # a batch that started before the switch
    old = weakref.ref(in_flight)
    repo.publish(2, seed=2)
    assert watcher.check()
    assert _answer(in_flight).version == 1  # that batch still answers from its own version
    del in_flight
    gc.collect()
    assert old() is None


def test_answers_during_switches_always_match_the_version_they_name(tmp_path):
    repo = Repo(tmp_path)
    repo.publish(1, seed=1)
    watcher = _watcher(repo).start()
    answers, stop = [], threading.Event()

    def ask():
        while not stop.is_set():
            answers.append(_answer(watcher.current))

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        for version in range(2, 12):
            repo.publish(version, seed=version % 3, changed=version)
            deadline = time.monotonic() + 10.0
            while watcher.version != version and time.monotonic() < deadline:
                time.sleep(0.005)
            assert watcher.version == version, watcher.refused
        deadline = time.monotonic() + 10.0
        while not (answers and answers[-1].version == 11) and time.monotonic() < deadline:
            time.sleep(0.005)  # the asker answers from the last version too
    finally:
        stop.set()
        asker.join()
        watcher.stop()
    want = {v: _answer(_open(repo.model_dir / str(v))) for v in repo.tables}
    assert {a.version for a in answers} >= {1, 11}
    for got in answers:
        np.testing.assert_array_equal(got.item_ids, want[got.version].item_ids)
        np.testing.assert_array_equal(got.scores, want[got.version].scores)


def test_a_version_deleted_while_being_read_is_not_refused(tmp_path, monkeypatch):
    repo = Repo(tmp_path)
    repo.publish(1, seed=1)
    watcher = _watcher(repo)
    repo.publish(2, seed=2)

    def vanish(version_dir, **kwargs):
        versions.remove_version(repo.model_dir, 2)
        raise versions.VersionError(f"{version_dir}: gone")

    monkeypatch.setattr(versions, "verify_version", vanish)
    assert not watcher.check() and 2 not in watcher.refused and watcher.version == 1


def test_a_loaded_model_starts_from_the_newest_version_that_verifies(tmp_path):
    from model_repository.live_version import newest_good_version

    repo = Repo(tmp_path)
    repo.publish(1, seed=1)
    repo.publish(2, seed=1, changed=7)
    path = repo.publish(3, seed=1, changed=9)
    shard = versions.written_shards(path, repo.model_dir / "2")[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # a flipped byte no publisher checked
    shard.write_bytes(bytes(data))
    assert newest_good_version(repo.model_dir, at_most=3) == repo.model_dir / "2"
    assert newest_good_version(repo.model_dir, at_most=1) == repo.model_dir / "1"
    with pytest.raises(versions.VersionError, match="no retrieve version up to 0"):
        newest_good_version(repo.model_dir, at_most=0)
