"""bench.peers on tiny hand-made matrices: EASE against its per-column definition, the top-K and
id mapping helpers, the retrained replay adapter (and its durably logged form, on a real
redis-server) and the split protocol's scorer. No quality level is asserted."""

from __future__ import annotations

import numpy as np
import pytest

from bench.peers import (
    EASEPeer,
    LoggedPeer,
    RetrainedPeer,
    binary_matrix,
    columns_of,
    make_peers,
    peer_scorer,
    top_k_columns,
)
from bench.replay import replay
from exporter.data import Interactions
from freshrec.processes import RedisServer

# 5 users x 4 items, ids offset so no id equals its row
USER_IDS = np.array([101, 102, 103, 104, 105])
ITEM_IDS = np.array([11, 12, 13, 14])
PAIRS = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 2), (2, 3), (3, 3), (4, 0), (4, 1), (4, 1)]


def _train() -> Interactions:
    users = [USER_IDS[u] for u, _ in PAIRS]
    items = [ITEM_IDS[i] for _, i in PAIRS]
    return Interactions.from_arrays(users, items, np.ones(len(PAIRS)), np.arange(len(PAIRS)))


def _matrix():
    rows, cols = zip(*PAIRS)
    return binary_matrix(np.array(rows), np.array(cols), (5, 4))


def test_binary_matrix_counts_a_repeated_pair_once():
    dense = _matrix().toarray()
    assert dense[4, 1] == 1.0 and dense.sum() == len(set(PAIRS))


@pytest.mark.parametrize("l2", [0.5, 10.0])
def test_ease_solves_each_column_as_ridge_regression_without_itself(l2):
    peer = EASEPeer(l2=l2)
    peer.fit(_matrix())
    x = _matrix().toarray().astype(np.float64)
    for j in range(x.shape[1]):
        others = [c for c in range(x.shape[1]) if c != j]
        a = x[:, others]
        want = np.linalg.solve(a.T @ a + l2 * np.eye(len(others)), a.T @ x[:, j])
        np.testing.assert_allclose(peer.weights[others, j], want, rtol=1e-4, atol=1e-6)
        assert peer.weights[j, j] == 0.0
    np.testing.assert_allclose(peer.scores(np.array([0, 2])), x[[0, 2]] @ peer.weights, rtol=1e-5)


def test_top_k_columns_best_first_and_minus_inf_last():
    scores = np.array([[0.5, 2.0, -np.inf, 1.0, 3.0],
                       [-np.inf, -1.0, 0.25, 7.0, 0.0]], dtype=np.float32)
    assert top_k_columns(scores, 3).tolist() == [[4, 1, 3], [3, 2, 4]]
    assert top_k_columns(scores, 10).tolist() == [np.argsort(-r, kind="stable").tolist() for r in scores]
    assert top_k_columns(scores, 0).shape == (2, 0)


def test_columns_of_drops_ids_outside_the_catalogue():
    assert columns_of(np.array([14, 99, 11, 5]), ITEM_IDS).tolist() == [3, 0]
    assert columns_of(np.array([3]), np.zeros(0, np.int64)).tolist() == []


class CountingPeer:
    """Scores item column c as c for everyone (the last column is best); counts fits."""

    name = "counting"

    def __init__(self):
        self.fits, self.shapes = 0, []

    def fit(self, matrix):
        self.fits += 1
        self.shapes.append(matrix.shape)
        self.n_items = matrix.shape[1]

    def scores(self, user_rows):
        return np.tile(np.arange(self.n_items, dtype=np.float32), (len(user_rows), 1))


def test_retrained_peer_refits_only_after_learning_and_serves_new_users_popularity():
    counting = CountingPeer()
    peer = RetrainedPeer(counting, _train())
    first = peer.recommend(np.array([101, 999]), [np.array([14, 77]), np.array([12])], 2)
    # known user: best columns first, excluded item 14 gone, ids not rows; unknown user 999:
    # popularity (item 12 four events, 11 three, then 13 and 14 by lower id), 12 excluded
    assert [a.tolist() for a in first] == [[13, 12], [11, 13]]
    peer.recommend(np.array([101]), [np.array([], np.int64)], 2)
    assert counting.fits == 1
    peer.learn(Interactions.from_arrays([999], [15], [1.0], [99]))
    again = peer.recommend(np.array([999]), [np.array([], np.int64)], 1)
    assert counting.fits == 2 and counting.shapes[-1] == (6, 5)  # user 999 and item 15 now have rows
    assert again[0].tolist() == [15]


def test_logged_peer_answers_as_retrained_and_stores_every_event_in_its_stream():
    train = _train()
    test = Interactions.from_arrays([101, 101, 103, 105, 102, 101], [13, 14, 11, 12, 14, 12],
                                    [1.0, 1.0, 3.0, 1.0, 1.0, 1.0], 100 + np.arange(6))
    windowed = replay(train, test, RetrainedPeer(EASEPeer(l2=1.0), train), window_events=3, ks=(2,))
    with RedisServer() as server:
        logged = LoggedPeer(EASEPeer(l2=1.0), train, server.url)
        try:
            streamed = replay(train, test, logged, window_events=3, ks=(2,))
            entries = logged.log.redis.xrange(logged.log.STREAM)
        finally:
            logged.close()
    assert streamed.ranks == windowed.ranks and logged.fits == 2
    assert streamed.runs > windowed.runs  # asked per run of distinct users, one send each
    got = [(int(f[b"u"]), int(f[b"i"]), float(f[b"v"]), float(f[b"t"])) for _, f in entries]
    assert got == list(zip(test.user_ids.tolist(), test.item_ids.tolist(), test.values.tolist(),
                           test.timestamps.tolist()))
    assert [f[b"id"] for _, f in entries] == [f"replay-{n}".encode() for n in range(len(test))]


def test_peer_scorer_scores_the_whole_catalogue_in_its_order():
    catalogue = np.array([11, 12, 13, 14, 20])  # item 20 has no training event
    score, fit_s = peer_scorer(EASEPeer(l2=1.0), _train(), catalogue)
    got = score(np.array([103, 101]))
    assert got.shape == (2, 5) and fit_s >= 0.0
    assert np.all(got[:, 4] == 0.0)  # no co-occurrence, no score
    with pytest.raises(ValueError, match="without a row"):
        score(np.array([999]))


@pytest.mark.parametrize("peer", make_peers(seed=0), ids=lambda p: p.name)
def test_each_peer_fits_and_scores_every_item(peer):
    peer.fit(_matrix())
    got = peer.scores(np.array([0, 3, 4]))
    assert got.shape == (3, 4) and got.dtype == np.float32 and np.all(np.isfinite(got))


def test_bench_quality_charges_the_logged_peer_its_redis_servers_cpu():
    from bench.quality import _logged_replay

    train = _train()
    test = Interactions.from_arrays([101, 103, 101, 105] * 10, [13, 11, 14, 12] * 10,
                                    np.ones(40), 100 + np.arange(40))
    windowed = replay(train, test, RetrainedPeer(EASEPeer(l2=1.0), train), window_events=20)
    result, logged, log_cpu_s = _logged_replay(EASEPeer(l2=1.0), train, test, 20, [0, 1], "always")
    assert result.ranks == windowed.ranks and logged.sent == len(test)
    assert log_cpu_s > 0.0  # the server's on-CPU time over 40 fsynced sends
