"""The matrix peers of bench.quality: implicit's ALS, BPR and item-item kNN, and EASE.

Each peer is fitted from scratch on a binary user x item matrix (a pair seen once or ten times
counts once, as the metrics see it) and then scores user rows against every item column:

    peer = EASEPeer()
    peer.fit(matrix)                    # scipy.sparse CSR (U, I), float32 ones
    scores = peer.scores(user_rows)     # (B, I) float32, higher is better

Two adapters put a peer in a protocol: `RetrainedPeer` is a bench.replay recommender refitted
on every event learned so far before it answers (prequential replay; `LoggedPeer` also stores
each event in a durable log as it happens, as a deployed peer must), `peer_scorer` an
exporter.evaluate ScoreFn over the split's catalogue (`--protocol split`). Settings are picked for
the peers, not for us; each constant says what it was picked from.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from bench.replay import PopularityRecommender
from exporter import closed_form
from exporter.data import Interactions

log = logging.getLogger(__name__)

# ALS: on the synthetic set's first 4 windows recall@10 was 0.11 / 0.15 / 0.18 / 0.20 / 0.17
# with 128 / 64 / 32 / 16 / 8 factors; regularization 0.05-2 and alpha 1-4 moved it by < 0.02
# (alpha 40: 0.13)
ALS_FACTORS = 16
ALS_REGULARIZATION = 0.05
ALS_ITERATIONS = 15
ALS_ALPHA = 1.0
# BPR, item-kNN and EASE: from `--protocol split` sweeps (2026-12, recall@10 synthetic / ml-100k).
# BPR, 64 factors: lr 0.05 x 100 iterations 0.113 / -; lr 0.01 x 60: 0.196 / 0.052; lr 0.005 x
# 100: 0.198 / 0.055; lr 0.005 x 150: - / 0.063 (more iterations at a higher rate overfit: lr 0.02
# x 100: 0.148); 128 factors moved it by < 0.005
BPR_FACTORS = 64
BPR_LEARNING_RATE = 0.005
BPR_REGULARIZATION = 0.01
BPR_ITERATIONS = 150
# item-kNN, 20 / 50 / 100 / 200 / 400 neighbours: 0.185 / 0.184 / 0.190 / 0.199 / - and
# - / 0.045 / 0.041 / 0.042 / 0.044 (recall@50 on ml-100k: 0.185 with 50, 0.139 with 100)
KNN_NEIGHBOURS = 50
# EASE, l2 50 / 100 / 200 / 500 / 1000: 0.197 / - / 0.206 / 0.209 / 0.209 and
# - / 0.079 / 0.079 / 0.077 / 0.074
EASE_L2 = 200.0


class Peer(Protocol):
    """A recommender fitted on a whole binary (U, I) matrix; `scores` of user rows after `fit`."""

    name: str

    def fit(self, matrix: sp.csr_matrix) -> None: ...

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """(B,) int64 rows of the fitted matrix -> (B, I) float32 scores of every item column."""
        ...


class _Described:
    """A peer's `settings` (its constructor's keywords, named as its library names them) and the
    line bench tables print for it: the name, then each setting but the seed."""

    name = ""
    settings: dict = {}

    def describe(self) -> str:
        return f"{self.name} " + ", ".join(f"{key.replace('_', ' ')} {value}"
                                           for key, value in self.settings.items()
                                           if key != "random_state")


class _FactorPeer(_Described):
    """implicit's matrix factorisations: `_fitted` fits one on the matrix; scores are dot
    products of its user and item factors."""

    def _fitted(self, matrix: sp.csr_matrix):
        raise NotImplementedError

    def fit(self, matrix: sp.csr_matrix) -> None:
        model = self._fitted(matrix)
        self.user_factors = np.asarray(model.user_factors)
        self.item_factors = np.asarray(model.item_factors)

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        return self.user_factors[user_rows] @ self.item_factors.T


class ALSPeer(_FactorPeer):
    """implicit's AlternatingLeastSquares (conjugate gradient), confidence 1 + alpha * x."""

    name = "ALS"

    def __init__(self, *, factors: int = ALS_FACTORS, regularization: float = ALS_REGULARIZATION,
                 iterations: int = ALS_ITERATIONS, alpha: float = ALS_ALPHA, seed: int = 0):
        self.settings = dict(factors=factors, regularization=regularization, iterations=iterations,
                             alpha=alpha, random_state=seed)

    def _fitted(self, matrix: sp.csr_matrix):
        from implicit.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        # implicit asks for a single-threaded BLAS (its own threads do the work) and checks it
        # in the constructor
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(**self.settings, use_gpu=False)
            model.fit(matrix, show_progress=False)
        return model


class BPRPeer(_FactorPeer):
    """implicit's BayesianPersonalizedRanking (SGD on sampled (user, positive, negative) triples;
    its factors carry an item bias column)."""

    name = "BPR"

    def __init__(self, *, factors: int = BPR_FACTORS, learning_rate: float = BPR_LEARNING_RATE,
                 regularization: float = BPR_REGULARIZATION, iterations: int = BPR_ITERATIONS,
                 seed: int = 0):
        self.settings = dict(factors=factors, learning_rate=learning_rate,
                             regularization=regularization, iterations=iterations, random_state=seed)

    def _fitted(self, matrix: sp.csr_matrix):
        from implicit.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(**self.settings, use_gpu=False)
        model.fit(matrix, show_progress=False)
        return model


class _ItemItemPeer(_Described):
    """Item-item models: `fit` sets `weights`, an (I, I) matrix (sparse or dense); a user's
    scores are their row of the fitted matrix times it."""

    def _keep(self, matrix: sp.csr_matrix, weights) -> None:
        self.matrix, self.weights = matrix, weights

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        product = self.matrix[user_rows] @ self.weights
        return np.asarray(product.todense() if sp.issparse(product) else product, dtype=np.float32)


class ItemKNNPeer(_ItemItemPeer):
    """implicit's CosineRecommender: item-item cosine similarity, each item's `neighbours` most
    similar kept; a user's score of an item sums its similarities to the user's items."""

    name = "item-kNN"

    def __init__(self, *, neighbours: int = KNN_NEIGHBOURS):
        self.settings = dict(neighbours=neighbours)

    def fit(self, matrix: sp.csr_matrix) -> None:
        from implicit.nearest_neighbours import CosineRecommender

        model = CosineRecommender(K=self.settings["neighbours"])
        with warnings.catch_warnings():
            # implicit 0.7.3's CosineRecommender.fit hands its own normalize() result, a COO
            # matrix, to ItemItemRecommender.fit, which then warns that it expected CSR
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(matrix, show_progress=False)
        self._keep(matrix, model.similarity.tocsr())


class EASEPeer(_ItemItemPeer):
    """EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019), closed form:
    P = (X^T X + l2 I)^-1, B = I - P diag(1 / diag(P)), so diag(B) = 0; scores = X B. Dense
    (I, I) float64: 0.65 GiB and an I^3 inverse at I = 9,066 (ml-latest-small)."""

    name = "EASE"

    def __init__(self, *, l2: float = EASE_L2):
        self.settings = dict(l2=l2)

    def fit(self, matrix: sp.csr_matrix) -> None:
        self._keep(matrix, closed_form.ease_weights(matrix, self.settings["l2"]).astype(np.float32))


def make_peers(*, seed: int = 0) -> list[Peer]:
    """ALS, BPR, item-kNN and EASE with the module's settings (seeded where they sample)."""
    return [ALSPeer(seed=seed), BPRPeer(seed=seed), ItemKNNPeer(), EASEPeer()]


def binary_matrix(user_rows: np.ndarray, item_rows: np.ndarray, shape: tuple[int, int]
                  ) -> sp.csr_matrix:
    """(U, I) float32 CSR with 1 where a (user row, item row) pair occurs, however often (what
    implicit takes; exporter.closed_form's matrix)."""
    return closed_form.binary_matrix(user_rows, item_rows, shape, dtype=np.float32)


def top_k_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, I) scores -> (B, min(k, I)) column indices, best first (-inf scores sort last)."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((len(scores), 0), np.int64)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def columns_of(ids: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    """The columns of the ids found in the sorted catalogue (ids not in it are dropped)."""
    if not len(catalogue):
        return np.zeros(0, np.int64)
    columns = np.searchsorted(catalogue, ids).clip(max=len(catalogue) - 1)
    return columns[catalogue[columns] == ids]


class RetrainedPeer:
    """A bench.replay recommender: the peer refitted from scratch on every event learned so far
    (training included) before it answers, whenever something new was learned, so with
    `scored_windows` it fits only before the windows it is asked in. Users without a row (first
    seen after the last fit) get the popularity ranking, as freshrec serves them."""

    def __init__(self, peer: Peer, train: Interactions):
        self.peer = peer
        self.parts = [train]
        self.popularity = PopularityRecommender(train)
        self.stale = True
        self.fits = 0
        self.fit_s = 0.0
        self.fit_cpu_s = 0.0  # CPU seconds of the fits, every thread of this process

    def learn(self, events: Interactions) -> None:
        self.parts.append(events)
        self.popularity.learn(events)
        self.stale = True

    def _fit(self) -> None:
        started, cpu_started = time.perf_counter(), time.process_time()
        users = np.concatenate([p.user_ids for p in self.parts])
        items = np.concatenate([p.item_ids for p in self.parts])
        self.user_ids, user_rows = np.unique(users, return_inverse=True)
        self.item_ids, item_rows = np.unique(items, return_inverse=True)
        self.peer.fit(binary_matrix(user_rows, item_rows, (len(self.user_ids), len(self.item_ids))))
        self.stale = False
        self.fits += 1
        self.fit_s += time.perf_counter() - started
        self.fit_cpu_s += time.process_time() - cpu_started

    def recommend(self, user_ids: np.ndarray, excludes: Sequence[np.ndarray], k: int
                  ) -> list[np.ndarray]:
        if self.stale:
            self._fit()
        rows = np.searchsorted(self.user_ids, user_ids).clip(max=len(self.user_ids) - 1)
        known = np.flatnonzero(self.user_ids[rows] == user_ids)
        answers: list[np.ndarray | None] = [None] * len(user_ids)
        if known.size:
            scores = self.peer.scores(rows[known])
            for n, question in enumerate(known):
                scores[n, columns_of(excludes[question], self.item_ids)] = -np.inf
            top = top_k_columns(scores, k)
            for n, question in enumerate(known):
                best = top[n][np.isfinite(scores[n, top[n]])]
                answers[question] = self.item_ids[best]
        for question in np.flatnonzero(self.user_ids[rows] != user_ids):
            answers[question] = self.popularity.recommend(None, [excludes[question]], k)[0]
        return answers


class PeerLog:
    """A deployed peer's durable log in Redis: each send's events (the dicts an app sends to
    clients.RedisEventWriter) an XADD each to STREAM, all in one MULTI, so one reply (after the
    fsync, appendfsync always). Nothing dedupes them or keeps live histories."""

    STREAM = "peer:events"

    def __init__(self, url: str):
        from model_repository.redis_layout import redis_client

        self.redis = redis_client(url)

    def send(self, events: Sequence[dict]) -> None:
        from model_repository.redis_layout import STREAM_FIELDS  # freshrec's stream fields

        pipe = self.redis.pipeline(transaction=True)
        for event in events:
            pipe.xadd(self.STREAM, {field: event[name] for field, name in STREAM_FIELDS})
        pipe.execute()

    def close(self) -> None:
        self.redis.close()


class LoggedPeer(RetrainedPeer):
    """A `RetrainedPeer` that also keeps what a deployed one needs to refit from: a durable log
    (`PeerLog`). As a bench.replay StreamingRecommender it gets the events as freshrec online
    does, right after their questions, one send per run of distinct users, each send one MULTI.
    The redis-server's CPU is the peer's intake cost, to set beside freshrec's, whose intake
    script also dedupes and keeps live histories. Answers and fits are RetrainedPeer's: asking
    per run instead of per window changes no answer."""

    def __init__(self, peer: Peer, train: Interactions, redis_url: str):
        super().__init__(peer, train)
        self.log = PeerLog(redis_url)
        self.sent = 0

    def send(self, events: Interactions) -> None:
        self.log.send([
            dict(event_id=f"replay-{self.sent + n}", user_id=user, item_id=item, kind="click",
                 value=value, timestamp=timestamp)
            for n, (user, item, value, timestamp) in enumerate(zip(
                events.user_ids.tolist(), events.item_ids.tolist(), events.values.tolist(),
                events.timestamps.tolist()))])
        self.sent += len(events)

    def close(self) -> None:
        self.log.close()


def peer_scorer(peer: Peer, train: Interactions, item_ids: np.ndarray):
    """An exporter.evaluate ScoreFn: the peer fitted once on `train` over the catalogue
    `item_ids` (sorted int64; training items outside it are dropped), scoring users known in
    `train` over the catalogue's columns. Returns (score_fn, fit seconds)."""
    started = time.perf_counter()
    in_catalogue = np.isin(train.item_ids, item_ids)
    user_ids, user_rows = np.unique(train.user_ids[in_catalogue], return_inverse=True)
    item_rows = np.searchsorted(item_ids, train.item_ids[in_catalogue])
    peer.fit(binary_matrix(user_rows, item_rows, (len(user_ids), len(item_ids))))
    fit_s = time.perf_counter() - started

    def score(batch_user_ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(user_ids, batch_user_ids).clip(max=len(user_ids) - 1)
        unknown = user_ids[rows] != batch_user_ids
        if unknown.any():
            raise ValueError(f"user ids without a row in the fitted matrix: {batch_user_ids[unknown][:5]}")
        return peer.scores(rows)

    return score, fit_s
