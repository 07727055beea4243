"""bench.ablation (issue 33): the rows that say what each online mechanism adds, on tiny data.

The paired comparison, publishing off, and full retraining's refits; the updater's switches for
the row-only and count-only variants are tested with the trainer (tests/updater/test_trainer.py).
Nothing here asserts a timing or a quality level.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.ablation import RetrainedBase, against
from bench.replay import ReplayResult, replay
from exporter.data import Interactions, read_dataset, split_by_time
from exporter.train import TrainConfig, train_base_model
from tests.fixtures.builds import SMALL
from tests.loadtest.test_replay import TEST, TRAIN, FixedRecommender, replay_recorded


def _result(ranks, users) -> ReplayResult:
    return ReplayResult(metrics={}, scored=len(ranks), skipped_repeats=0, windows=1,
                        recommend_s=0.0, learn_s=0.0, ranks=list(ranks), users=list(users))


def test_the_replay_records_who_asked_each_scored_question_in_order():
    result = replay(TRAIN, TEST, FixedRecommender(), window_events=3, ks=(1,))
    # window 0: users 1, 1, 2; window 1: (1, 3) repeats (not scored), then user 3
    assert result.users == [1, 1, 2, 3] and len(result.ranks) == 4
    np.testing.assert_array_equal(result.hits(1), [r == 0 for r in result.ranks])


def test_against_is_the_recall_ratio_on_the_same_questions_with_an_interval_over_users():
    users = [1, 1, 2, 3, 4, 5]
    ours = _result([0, 3, -1, 12, 2, 0], users)  # hits@10: 1 1 0 0 1 1 -> 4
    theirs = _result([0, -1, 5, 12, -1, 0], users)  # 1 0 1 0 0 1 -> 3
    text = against(ours, theirs)
    ratio, interval = text.split(" ", 1)
    assert ratio == "x1.333"
    low, high = (float(x) for x in interval.strip("()").split("-"))
    assert low <= 4 / 3 <= high
    with pytest.raises(ValueError, match="different questions"):
        against(ours, _result(ours.ranks, [9, 1, 2, 3, 4, 5]))


def test_publishing_off_sends_every_event_and_publishes_nothing():
    online = replay_recorded(publish=False)
    assert sum(len(b) for b in online.updater.batches) == len(TEST)
    assert online.updater.publishes == online.publishes == 0


def test_full_retraining_refits_on_every_event_so_far_and_then_knows_new_items(builds, tmp_path):
    data = read_dataset(builds.get(SMALL).ratings)
    train, test = split_by_time(data.interactions)
    test = test.take(slice(0, 300))
    # an item no training event names, taken twice in the first window
    new_item = int(data.interactions.item_ids.max()) + 1000
    first = test.take(slice(0, 100))
    test = Interactions.from_arrays(
        np.concatenate([[int(first.user_ids[0]), int(first.user_ids[1])], test.user_ids]),
        np.concatenate([[new_item, new_item], test.item_ids]),
        np.ones(len(test) + 2), np.concatenate([first.timestamps[:2], test.timestamps]))
    model = train_base_model(train, config=TrainConfig(dim=8, epochs=1, seed=1), progress=False)
    base = RetrainedBase(train, None, model, tmp_path, every=2, history_len=20)
    assert new_item not in base.retriever.items.ids.tolist()
    result = replay(train, test, base, window_events=100)
    assert base.windows == 4 and base.fits == 2  # every 2nd window
    assert base.fit_cpu_s > 0 and result.scored > 0
    assert new_item in base.retriever.items.ids.tolist()  # the refit's catalogue has it
    # each fit replaced the last: one repository on disk at a time
    assert len(list(tmp_path.glob("retrain-*"))) == 1
    answers = base.recommend(np.array([int(test.user_ids[0])]), [np.array([new_item])], 10)
    assert len(answers[0]) == 10 and new_item not in answers[0].tolist()


class _PushRecorder:
    """The updater's Status and Push as RetrainPusher calls them: the log offset the sends
    reached, and each pushed folder with what its manifest records."""

    def __init__(self):
        self.log_offset, self.pushed = 0, []

    def status(self):
        return {"log_offset": self.log_offset}

    def push(self, repository, *, force):
        from model_repository import contract as c
        from model_repository import versions

        manifest = versions.read_manifest(repository / c.RETRIEVE / "1")
        users = versions.load_table(repository / c.RETRIEVE / "1", manifest, "user_ids")
        self.pushed.append((manifest.feedback_offset, force, set(users.tolist())))
        return {"replayed": 7}


def test_a_pushed_retrain_is_fitted_on_every_event_so_far_and_records_the_offset(builds, tmp_path):
    from types import SimpleNamespace

    from bench.ablation import RetrainPusher

    data = read_dataset(builds.get(SMALL).ratings)
    train, test = split_by_time(data.interactions)
    model = train_base_model(train, config=TrainConfig(dim=8, epochs=1, seed=1), progress=False)
    online = SimpleNamespace(updater=_PushRecorder())
    pusher = RetrainPusher(train, None, model, tmp_path, every=2)
    new_user = 9_999_999
    windows = [test.take(slice(0, 50)), test.take(slice(50, 100)), test.take(slice(100, 150))]
    windows[1] = Interactions.from_arrays(
        np.concatenate([windows[1].user_ids, [new_user]]),
        np.concatenate([windows[1].item_ids, [int(train.item_ids[0])]]),
        np.ones(len(windows[1]) + 1), np.concatenate([windows[1].timestamps,
                                                      [windows[1].timestamps[-1]]]))
    for n, window in enumerate(windows):
        online.updater.log_offset = 50 * (n + 1)
        pusher(online, window)
    assert pusher.pushes == 1 and pusher.replayed == 7 and pusher.fit_cpu_s > 0
    ((offset, force, users),) = online.updater.pushed
    assert offset == 100 and force  # the offset its events reach; the gate is not measured
    assert new_user in users  # fitted on the windows so far, not the training window alone
