"""exporter.evaluate's per-user metrics, the next-event protocol and the paired bootstrap
bench.quality reports."""

import numpy as np
import pytest

from exporter.data import Interactions
from exporter.evaluate import (
    build_eval_split,
    build_next_event_split,
    next_event_metrics,
    next_event_queries,
    paired_ratio_interval,
    paired_users,
    per_user_metrics,
    ranking_metrics,
)
from exporter.train import TrainConfig, fit_closed_form


def _split():
    train = Interactions.from_arrays([1, 1, 2, 3], [10, 11, 10, 12], [1.0] * 4, [1, 2, 3, 4])
    test = Interactions.from_arrays([1, 2, 3], [12, 11, 10], [1.0] * 3, [5, 6, 7])
    return build_eval_split(train, test, item_ids=np.array([10, 11, 12, 13]))


def test_per_user_metrics_average_to_the_reported_ones():
    split = _split()
    scores = np.array([[0.0, 0.0, 1.0, 0.5], [0.0, 0.1, 0.0, 0.9], [0.3, 0.0, 0.0, 0.9]])
    score_fn = lambda users: scores[np.searchsorted(split.user_ids, users)]  # noqa: E731
    per_user = per_user_metrics(score_fn, split, ks=(1, 2))
    # user 1 ranks its target 12 first; user 2's target 11 is second; user 3's target 10 second
    np.testing.assert_allclose(per_user["recall@1"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(per_user["ndcg@2"], [1.0, 1 / np.log2(3), 1 / np.log2(3)])
    means = ranking_metrics(score_fn, split, ks=(1, 2))
    assert means["users"] == 3
    for name, values in per_user.items():
        assert means[name] == np.mean(values)


def test_the_paired_bootstrap_brackets_the_ratio_and_narrows_with_more_users():
    rng = np.random.default_rng(1)
    theirs = rng.random(400)
    ours = theirs * 1.2
    low, high = paired_ratio_interval(ours, theirs)
    assert abs(low - 1.2) < 1e-9 and abs(high - 1.2) < 1e-9  # every draw's ratio is 1.2
    noisy = theirs * 1.2 + rng.normal(0, 0.3, 400)
    wide = paired_ratio_interval(noisy[:40], theirs[:40])
    narrow = paired_ratio_interval(noisy, theirs)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_the_grouped_bootstrap_draws_each_group_whole():
    rng = np.random.default_rng(2)
    theirs = rng.random(60)
    ours = theirs * 1.1 + rng.normal(0, 0.2, 60)
    # one entry per group is the plain bootstrap, draw for draw
    assert paired_ratio_interval(ours, theirs, groups=np.arange(60) + 12345) == \
        paired_ratio_interval(ours, theirs)
    # each group's entries summed first: a group of three equal copies is one draw, not three
    # (the interval of the copies grouped equals that of one copy each, not a narrower one)
    copies = np.tile(np.arange(60), 3)
    grouped = paired_ratio_interval(np.tile(ours, 3), np.tile(theirs, 3), groups=copies)
    np.testing.assert_allclose(grouped, paired_ratio_interval(ours, theirs), rtol=1e-12)
    loose = paired_ratio_interval(np.tile(ours, 3), np.tile(theirs, 3))
    assert grouped[1] - grouped[0] > loose[1] - loose[0]
    # the ratio is of sums over groups of unequal size
    low, high = paired_ratio_interval(np.array([2.0, 2.0, 4.0]), np.array([1.0, 1.0, 2.0]),
                                      groups=np.array([7, 7, 9]))
    assert low == high == 2.0


def test_paired_users_count_who_is_ahead_and_how_far_one_user_moves_the_ratio():
    ours = np.array([0.0, 0.2, 0.1, 0.3, 0.0])
    theirs = np.array([0.6, 0.2, 0.1, 0.1, 0.0])  # the first user alone puts ours behind
    paired = paired_users(ours, theirs)
    assert (paired.ahead, paired.behind, paired.level) == (1, 1, 3)
    low, high = paired.without_one
    assert abs(low - 0.3 / 0.9) < 1e-12  # without the one user ahead
    assert abs(high - 0.6 / 0.4) < 1e-12  # without the first user: ahead, x1.5
    assert "ahead / behind / level 1 / 1 / 3" in paired.describe()
    with pytest.raises(ValueError, match="two users"):
        paired_users(ours[:1], theirs[:1])


def test_each_next_event_is_asked_with_the_history_and_counts_before_it():
    A, B, C, D, ELSEWHERE = 10, 11, 12, 13, 99
    before = Interactions.from_arrays([1, 1, 2, 2], [A, B, A, C], [1.0] * 4, [1, 2, 3, 4])
    events = Interactions.from_arrays(
        [1, 3, 1, 1, 3], [C, A, B, ELSEWHERE, D], [1.0] * 5, [5, 6, 7, 8, 9])
    split = build_next_event_split(before, events, item_ids=np.array([A, B, C, D]),
                                   history_len=3, window_events=2)
    # user 1 -> C, new user 3 -> A, user 3 -> D; a repeat (1 -> B) and an item outside the
    # catalogue are not asked
    np.testing.assert_array_equal(split.user_ids, [1, 3, 3])
    np.testing.assert_array_equal(split.targets, [2, 0, 3])
    np.testing.assert_array_equal(split.histories, [[-1, 0, 1], [-1, -1, -1], [-1, -1, 0]])
    np.testing.assert_array_equal(split.counted, [4, 4, 8])  # windows of 2: recounted at 6, 8
    # history ages, as serving measures them: from the user's previous event (user 1 at 2, none
    # for new user 3, then 6) to the newest event before (4, 5, 8)
    np.testing.assert_array_equal(split.ages, [2.0, np.inf, 2.0])
    seen = [split.seen_items[a:b].tolist() for a, b in zip(split.seen_offsets, split.seen_offsets[1:])]
    assert seen == [[0, 1], [], [0]]
    # popularity when asked: A 2, B 1, C 1, D 0 -> user 1 (A, B excluded) gets C, user 3 A;
    # then A 3, B 2, C 2, D 0: user 3 (A excluded) gets B or C, not D
    metrics = next_event_metrics(split, queries=None, item_rows=None, weights=0.0,
                                 half_life_s=0.0, k=1)
    assert metrics == {"recall@1": 2 / 3, "ndcg@1": 2 / 3, "events": 3.0}


def test_a_known_users_first_next_event_is_asked_with_the_stored_query():
    rng = np.random.default_rng(0)
    before = Interactions.from_arrays(rng.integers(0, 30, 600), rng.integers(0, 40, 600),
                                      np.ones(600), np.arange(600))
    (model,) = fit_closed_form(before, items=None, configs=[
        TrainConfig(method="ease", dim=8, ease_l2=10.0, history_weight=1.0)])
    users = np.unique(before.user_ids)
    seen_by = {u: set(before.item_ids[before.user_ids == u].tolist()) for u in users.tolist()}
    first = [(u, next(i for i in range(40) if i not in seen_by[u])) for u in users.tolist()]
    events = Interactions.from_arrays([u for u, _ in first], [i for _, i in first],
                                      np.ones(len(first)), 600 + np.arange(len(first)))
    split = build_next_event_split(before, events, item_ids=model.item_ids,
                                   history_len=model.user_history.shape[1])
    np.testing.assert_array_equal(split.user_ids, users)
    np.testing.assert_allclose(next_event_queries(model, split), model.user_queries(
        np.searchsorted(model.user_ids, users)), rtol=1e-5, atol=1e-6)
