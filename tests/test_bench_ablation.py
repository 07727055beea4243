"""bench.ablation's split of the replay's questions by what is new after the cut (issue 33)."""

import numpy as np

from bench.ablation import new_after_the_cut
from bench.replay import ReplayResult
from exporter.data import Interactions


def test_new_items_and_new_users_are_scored_apart_from_the_rest():
    train = Interactions.from_arrays(np.array([1, 1, 2]), np.array([10, 11, 10]),
                                     np.ones(3, np.float32), np.arange(3, dtype=np.float64))
    # asked: (user, item, rank): a new item hit, a new item missed, a new user hit, the rest
    users, items, ranks = [1, 2, 3, 1], [99, 98, 10, 11], [0, -1, 3, 20]
    result = ReplayResult(metrics={}, scored=4, skipped_repeats=0, windows=1, recommend_s=0.0,
                          learn_s=0.0, ranks=ranks, users=users, items=items)
    header, line = new_after_the_cut(train, [("row", result)])
    assert "(2 of 4)" in header and "whose user is (1)" in header and "the rest (1)" in header
    assert line == "  row: 0.5000 / 1.0000 / 0.0000"
