"""exporter.evaluate's per-user metrics and the paired bootstrap bench.quality reports."""

import numpy as np

from exporter.data import Interactions
from exporter.evaluate import (
    build_eval_split,
    paired_ratio_interval,
    per_user_metrics,
    ranking_metrics,
)


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
