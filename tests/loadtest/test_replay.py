"""The prequential replay of bench.quality on tiny hand-made data, and once through the real server
and updater. Nothing here asserts a timing or a quality level of a trained model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.replay import (
    PopularityRecommender,
    ServedRecommender,
    metrics_from_ranks,
    replay,
    top_k_excluding,
)
from exporter.data import Interactions, read_dataset, split_by_time
from tests.fixtures.builds import SMALL

FIXED_RANKING = np.array([10, 3, 2, 5, 4, 1], dtype=np.int64)


def _events(rows):
    users, items, times = zip(*rows)
    return Interactions.from_arrays(users, items, np.ones(len(rows)), times)


TRAIN = _events([(1, 1, 1), (1, 2, 2), (2, 1, 3)])
# user 1 twice in window 0 (the second question must exclude the first answer's item), a repeat
# of (1, 3) in window 1 (not scored), and a user unknown in training
TEST = _events([(1, 3, 10), (1, 4, 11), (2, 2, 12), (1, 3, 13), (3, 5, 14)])


class FixedRecommender:
    """Always the same ranking minus the exclusions; records what the replay did, in order."""

    def __init__(self):
        self.calls = []

    def recommend(self, user_ids, excludes, k):
        self.calls.append(("recommend", user_ids.tolist(), [sorted(e.tolist()) for e in excludes], k))
        return [top_k_excluding(FIXED_RANKING, e, k) for e in excludes]

    def learn(self, events):
        self.calls.append(("learn", list(zip(events.user_ids.tolist(), events.item_ids.tolist()))))


def test_replay_asks_before_learning_with_seen_items_excluded():
    fake = FixedRecommender()
    result = replay(TRAIN, TEST, fake, window_events=3, ks=(1, 3))
    assert fake.calls == [
        ("recommend", [1, 1, 2], [[1, 2], [1, 2, 3], [1]], 3),
        ("learn", [(1, 3), (1, 4), (2, 2)]),
        ("recommend", [3], [[]], 3),
        ("learn", [(1, 3), (3, 5)]),
    ]
    # ranks: item 3 after 10 -> 1; item 4 after 10, 5 -> 2; item 2 after 10, 3 -> 2; item 5 is
    # 4th for user 3, beyond K = 3 -> missed
    assert result.ranks == [1, 2, 2, -1]
    assert (result.scored, result.skipped_repeats, result.windows) == (4, 1, 2)
    assert result.metrics["recall@1"] == 0.0
    assert result.metrics["recall@3"] == pytest.approx(3 / 4)
    assert result.metrics["ndcg@10"] == pytest.approx((1 / math.log2(3) + 2 / math.log2(4)) / 4)


def test_replay_scores_only_the_chosen_windows_but_learns_all():
    fake = FixedRecommender()
    result = replay(TRAIN, TEST, fake, window_events=3, ks=(1, 3), scored_windows=[1])
    assert [c[0] for c in fake.calls] == ["learn", "recommend", "learn"]
    assert result.ranks == [-1] and result.skipped_repeats == 1


def test_metrics_from_ranks_by_hand():
    got = metrics_from_ranks([0, 9, 10, -1], ks=(10, 50))
    assert got["recall@10"] == pytest.approx(0.5)
    assert got["recall@50"] == pytest.approx(0.75)
    assert got["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(11)) / 4)


def test_popularity_recounts_after_each_window():
    pop = PopularityRecommender(TRAIN)
    assert pop.ranking.tolist() == [1, 2]
    pop.learn(TEST.take(slice(0, 3)))  # items 3, 4, 2: item 2 ties item 1, lower id first
    assert pop.ranking.tolist() == [1, 2, 3, 4]
    answers = pop.recommend(np.array([1, 2]), [np.array([1, 2]), np.array([], np.int64)], 2)
    assert [a.tolist() for a in answers] == [[3, 4], [1, 2]]


class ExclusionChecked:
    """Wraps a recommender and fails if any answer holds an excluded item."""

    def __init__(self, inner):
        self.inner = inner

    def recommend(self, user_ids, excludes, k):
        answers = self.inner.recommend(user_ids, excludes, k)
        for answer, exclude in zip(answers, excludes):
            assert not set(answer.tolist()) & set(exclude.tolist())
            assert len(answer) == k
        return answers

    def learn(self, events):
        self.inner.learn(events)


@pytest.mark.integration
def test_served_replay_static_and_online(builds, stack):
    data = read_dataset(builds.get(SMALL).ratings)
    train, test = split_by_time(data.interactions)
    test = test.take(slice(0, 240))
    static = ServedRecommender(stack.grpc_url)
    online = ServedRecommender(stack.grpc_url, updater_url=stack.updater.url)
    try:
        static_result = replay(train, test, ExclusionChecked(static), window_events=80)
        online_result = replay(train, test, ExclusionChecked(online), window_events=80)
    finally:
        static.close()
        online.close()
    assert static_result.scored == online_result.scored > 0
    assert static_result.windows == online_result.windows == 3
    for result in (static_result, online_result):
        assert 0.0 <= result.metrics["recall@10"] <= result.metrics["recall@50"] <= 1.0
    # static: one version answered throughout; online: later windows were answered by versions
    # the updater published from the replayed feedback
    assert len(static.versions_seen) == 1
    assert max(online.versions_seen) > max(static.versions_seen)
