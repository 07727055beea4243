"""bench.sasrec on a tiny hand-made log: RecBole trains (one epoch), answers honour exclusions and
follow the streamed history. Skipped, with the install command, where the `bench-seq` extra is not
installed; no quality level is asserted."""

from __future__ import annotations

import numpy as np
import pytest

from bench.replay import replay
from bench.sasrec import recbole_missing
from exporter.data import Interactions

pytestmark = pytest.mark.skipif(recbole_missing() is not None, reason=str(recbole_missing()))


def _cycles(n_users: int, n_items: int, length: int) -> Interactions:
    """Each user walks the catalogue in order from their own start: a sequence to learn."""
    users, items, times = [], [], []
    for user in range(n_users):
        for step in range(length):
            users.append(1000 + user)
            items.append(100 + (user + step) % n_items)
            times.append(step * n_users + user)
    return Interactions.from_arrays(users, items, np.ones(len(users)), times)


def test_sasrec_trains_and_answers_from_the_streamed_history(tmp_path, monkeypatch):
    from bench.sasrec import SASRecRecommender

    monkeypatch.chdir(tmp_path)  # RecBole writes relative to it; nothing may land there
    workdir = tmp_path / "work"
    workdir.mkdir()
    events = _cycles(n_users=12, n_items=9, length=8)
    cut = len(events) * 3 // 4
    train, test = events.take(slice(0, cut)), events.take(slice(cut, None))
    sasrec = SASRecRecommender(train, workdir=workdir, epochs=1, max_len=5, seed=0)
    assert sorted(sasrec.item_ids.tolist()) == list(range(100, 109))
    assert [p.name for p in tmp_path.iterdir()] == ["work"]
    exclude = np.array([100, 101, 5555])
    answers = sasrec.recommend(np.array([1000, 4242]), [exclude, np.zeros(0, np.int64)], 4)
    assert len(answers[0]) == 4 and not set(answers[0].tolist()) & {100, 101}
    assert len(answers[1]) == 4  # a user with no history: the popularity ranking
    result = replay(train, test, sasrec, window_events=10, ks=(1, 5))
    assert result.scored + result.skipped_repeats == len(test)
    # every test event was streamed into its user's sequence
    for user in np.unique(test.user_ids).tolist():
        want = events.item_ids[events.user_ids == user][-5:]
        assert sasrec.recent.of(user).tolist() == want.tolist()
