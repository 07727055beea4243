"""Impressions (model_repository.impressions) and their attribution (updater.exposure)."""

import os
import time
from types import SimpleNamespace

import numpy as np

from model_repository import impressions as imp
from model_repository.canary import ARM_CODES, CANARY, CONTROL
from updater.canary import ArmCount
from updater.events import Event
from updater.exposure import Arrivals, Exposure

CTRL, CAN = ARM_CODES[CONTROL], ARM_CODES[CANARY]


def _rows(t, users, version=3, arm=CTRL, items=((1, 2, 3),)):
    n = len(users)
    items = list(items) * n if len(items) == 1 else list(items)
    return imp.records([t] * n, users, [version] * n, [arm] * n, items)


def _event(offset, user, item, kind="click", value=1.0):
    return Event(f"e{offset}", user, item, kind, value, 0.0, offset)


def test_records_keep_the_top_items_and_their_count():
    rows = imp.records([1.5, 2.5], [7, 8], [4, 5], [CTRL, CAN], [range(20), [9]])
    assert rows.dtype.itemsize == 104
    assert rows["count"].tolist() == [imp.TOP, 1]
    assert rows["items"][0].tolist() == list(range(imp.TOP))
    assert rows["items"][1].tolist() == [9] + [-1] * (imp.TOP - 1)
    assert rows["arm"].tolist() == [CTRL, CAN] and rows["version"].tolist() == [4, 5]


def test_retrieve_records_only_while_the_updater_keeps_the_folder(tmp_path):
    writer = imp.ImpressionWriter(tmp_path)
    assert writer.write(_rows(1.0, [1])) == 0  # no folder: recording is off
    assert not imp.impressions_dir(tmp_path).exists()
    reader = imp.ImpressionReader(tmp_path)  # the updater starts: the folder exists
    writer._checked_at = -imp.CHECK_DIR_S  # the writer looks again (it does each second)
    assert writer.write(_rows(1.0, [1, 2])) == 2 * imp.RECORD.itemsize
    got = reader.read_new()
    assert got["user"].tolist() == [1, 2]
    assert reader.read_new().size == 0  # only what is new
    writer.write(_rows(2.0, [3]))
    assert reader.read_new()["user"].tolist() == [3]
    reader.remove()  # the updater stops
    writer._checked_at = -imp.CHECK_DIR_S
    assert writer.write(_rows(3.0, [4])) == 0 and writer._fd is None


def test_the_reader_waits_for_a_half_written_record_and_skips_what_came_before_it(tmp_path):
    folder = imp.impressions_dir(tmp_path)
    folder.mkdir()
    old = folder / f"1-1{imp.SUFFIX}"
    old.write_bytes(_rows(1.0, [1, 2]).tobytes())
    reader = imp.ImpressionReader(tmp_path)
    assert reader.read_new().size == 0  # answered before the updater started
    record = _rows(2.0, [5]).tobytes()
    with open(old, "ab") as f:
        f.write(record[:40])  # a writer mid-write
    assert reader.read_new().size == 0
    with open(old, "ab") as f:
        f.write(record[40:])
    assert reader.read_new()["user"].tolist() == [5]


def test_finished_files_read_to_the_end_are_deleted(tmp_path):
    reader = imp.ImpressionReader(tmp_path)
    finished = imp.impressions_dir(tmp_path) / f"1-1{imp.SUFFIX}"
    finished.write_bytes(_rows(1.0, [1]).tobytes())
    long_ago = time.time() - 3 * imp.ROTATE_S
    os.utime(finished, (long_ago, long_ago))
    assert reader.read_new()["user"].tolist() == [1]  # read first, then deleted
    assert not finished.exists()
    writing = imp.impressions_dir(tmp_path) / f"2-1{imp.SUFFIX}"
    writing.write_bytes(_rows(1.0, [2]).tobytes())
    assert reader.read_new()["user"].tolist() == [2]
    assert writing.exists()  # recent: its writer may append to it


def test_the_writer_starts_a_new_file_when_its_file_is_old(tmp_path, monkeypatch):
    imp.ImpressionReader(tmp_path)
    writer = imp.ImpressionWriter(tmp_path)
    writer.write(_rows(1.0, [1]))
    writer._opened_at -= imp.ROTATE_S + 1
    writer.write(_rows(1.0, [2]))
    assert len(list(imp.impressions_dir(tmp_path).glob(f"*{imp.SUFFIX}"))) == 2


def test_arrivals_are_the_first_stamp_at_or_past_an_offset():
    arrivals = Arrivals(base=10)
    arrivals.stamp(5, at=1.0)  # before the start: no stamp
    arrivals.stamp(12, at=100.0)
    arrivals.stamp(15, at=200.0)
    assert arrivals.of(9) is None  # logged before the updater started
    assert arrivals.of(11) == 100.0 and arrivals.of(12) == 100.0
    assert arrivals.of(13) == 200.0
    assert arrivals.of(16) is None  # not stamped yet
    arrivals.forget_through(12)
    assert arrivals.of(13) == 200.0


def test_a_positive_event_is_a_hit_for_the_arm_whose_answer_in_the_window_held_it():
    exposure = Exposure(window_s=60.0)
    exposure.add(_rows(1000.0, [1], arm=CTRL, items=[(10, 11)]))
    exposure.add(_rows(1010.0, [1], arm=CAN, items=[(20, 21)]))
    exposure.add(_rows(1000.0, [2], arm=CAN, items=[(30,)]))
    arrivals = {1: 1020.0, 2: 1020.0, 3: 1020.0, 4: 1100.0, 5: 1020.0, 6: 1020.0, 7: 999.0}
    exposure.attribute([
        _event(1, 1, 10),                  # only in the older answer, of another arm: a miss
        _event(2, 1, 99),                  # in neither: a miss of the newest's arm (canary)
        _event(3, 2, 30),                  # canary hit
        _event(4, 2, 30),                  # arrived 100 s after the answer: outside the window
        _event(5, 1, 20, kind="skip"),     # not positive: not counted
        _event(6, 3, 10),                  # user 3 was shown nothing
        _event(7, 1, 10),                  # arrived before the answers: not exposed by them
        _event(8, 1, 10),                  # no arrival (logged before the start): skipped
    ], arrivals.get)
    # event 1: the newest answer is the canary's, and only its own arm's answers hit
    assert exposure.count(CTRL) == ArmCount(0, 0)
    assert exposure.count(CAN) == ArmCount(3, 1)
    assert exposure.unexposed == 3
    status = exposure.status()
    assert status["events"] == 3 and status["hits"] == 1 and status["impressions"] == 3
    assert status["low"] < 1 / 3 < status["high"]


def test_during_a_canary_answers_from_before_it_do_not_count():
    exposure = Exposure(window_s=600.0)
    exposure.add(_rows(1000.0, [1], arm=CTRL, items=[(10, 11)]))  # before the split
    exposure.add(_rows(1100.0, [1], arm=CAN, items=[(20, 21)]))
    exposure.add(_rows(1000.0, [2], arm=CTRL, items=[(10,)]))
    exposure.add(_rows(1100.0, [2], arm=CTRL, items=[(30,)]))
    arrived = lambda _: 1200.0  # noqa: E731
    exposure.attribute([_event(1, 1, 10), _event(2, 2, 10)], arrived, since=1050.0)
    assert exposure.count(CAN) == ArmCount(1, 0)   # its control answer is not the canary's
    assert exposure.count(CTRL) == ArmCount(1, 0)  # nor is the control user's older one counted
    exposure.attribute([_event(3, 2, 10)], arrived)  # no canary: the whole window
    assert exposure.count(CTRL) == ArmCount(2, 1)


def test_pruning_forgets_users_shown_nothing_lately():
    exposure = Exposure(window_s=60.0)
    exposure.add(_rows(1000.0, [1, 2]))
    exposure.add(_rows(2000.0, [2]))
    exposure.prune(1500.0)
    exposure.attribute([_event(1, 1, 1), _event(2, 2, 1)], lambda _: 2001.0)
    assert exposure.unexposed == 1 and exposure.count(CTRL) == ArmCount(1, 1)
    assert np.array_equal(sorted(exposure._shown), [2])


def test_derived_skips_are_the_newest_answers_top_items_but_the_one_taken():
    exposure = Exposure(window_s=60.0)
    exposure.add(_rows(1000.0, [1], items=[(7, 8, 9)]))
    exposure.add(_rows(1001.0, [1], items=[(10, 11, 12)]))
    derived = exposure.attribute([_event(1, 1, 11), _event(2, 2, 11), _event(3, 1, 5, "skip")],
                                 lambda _: 1002.0, skips=2)
    assert list(derived) == [0]  # only the exposed positive event
    assert [(e.user_id, e.item_id, e.kind, e.offset) for e in derived[0]] == [(1, 10, "skip", 1)]
    assert exposure.attribute([_event(4, 1, 7)], lambda _: 1002.0) == {}  # off by default


def _engine(tmp_path, skips):
    from model_repository.impressions import ImpressionReader
    from tests.updater.test_trainer import _numpy_tower, _tables
    from updater.engine import Engine
    from updater.feedback_log import FeedbackLog
    from updater.settings import QualityPolicy, TrainerConfig
    from updater.trainer import SparseTrainer

    config = TrainerConfig(impression_skips=skips)
    publisher = SimpleNamespace(model_dir=tmp_path / f"retrieve{skips}", current=1)
    engine = Engine(FeedbackLog(tmp_path / f"log{skips}.db"), publisher,
                    trainer_config=config, quality=QualityPolicy(events_per_batch=0))
    engine.trainer = SparseTrainer(_tables(), _numpy_tower(), config=config)
    engine.impressions = ImpressionReader(tmp_path / f"retrieve{skips}")
    return engine


def test_the_engine_trains_the_shown_and_skipped_items_with_impression_skips(tmp_path):
    from updater.events import validate

    rows = {}
    for skips in (0, 3):
        engine = _engine(tmp_path, skips)
        item_ids = engine.trainer.t["item_ids"].live
        user = int(engine.trainer.t["user_ids"].live[0])
        shown = [int(i) for i in item_ids[[3, 4, 5]]]
        writer = imp.ImpressionWriter(tmp_path / f"retrieve{skips}")
        writer.write(_rows(time.time(), [user], items=[shown]))
        stored, _ = engine.log.append([validate("c1", user, shown[1], "click", 0.0, None)])
        engine.notify(1, stored[-1].offset)
        before = np.array(engine.trainer.t["item_rows"].live)
        assert [e.offset for e in engine._train_next()] == [stored[-1].offset]
        rows[skips] = np.array(engine.trainer.t["item_rows"].live) - before
        assert engine.exposure.count(CTRL) == ArmCount(1, 1)
    # the two shown and not taken are pushed away only with --impression-skips
    for row in (3, 5):
        assert not np.allclose(rows[3][row], rows[0][row]), row
