"""The user tower's forward and its gradient w.r.t. the user row, in numpy, for the trainer.

The history is held constant (its item rows move only as scored items), so the user row's
gradient goes through the pooled tower's fixed two-layer MLP (`PooledTowerGrad`), and through a
sequence tower, query = u + Seq(history), it is the query's gradient itself (`SequenceTowerGrad`).
Per event that costs a fraction of torch autograd's overhead; tests/updater/test_trainer.py
checks both against autograd.
"""

from __future__ import annotations

import numpy as np

from model_repository.pooling import recency_weights
from model_repository.sequence_tower import NumpySequenceTower
from model_repository.tower import NumpyTower


class PooledTowerGrad:
    """For one user: the pooled tower's forward with its hidden pre-activation kept, and the
    gradient of a loss through it w.r.t. the user row (numpy, float32; model_repository.tower)."""

    def __init__(self, tower: NumpyTower, decay: float):
        self.w1, self.b1, self.w2, self.b2 = tower.w1, tower.b1, tower.w2, tower.b2
        self.dim = tower.dim
        # the backward's matrices in float64, laid out as it reads them: multiplying the float32
        # ones by a float64 gradient cast them anew on every event (3x the backward's cost; the
        # same products to the bit, tests/updater/test_trainer.py)
        self._w1_user_t = np.ascontiguousarray(tower.w1[:, : self.dim].T, dtype=np.float64)
        self._w2_t = np.ascontiguousarray(tower.w2.T, dtype=np.float64)
        self.decay = decay
        self._weights: dict[int, np.ndarray] = {}  # by history length: they depend on nothing else

    def _weights_of(self, length: int) -> np.ndarray:
        """(length, 1) float32 recency weights of a history of ``length`` items, oldest first."""
        weights = self._weights.get(length)
        if weights is None:
            weights = self._weights[length] = recency_weights(np.array([0, length]),
                                                              decay=self.decay)[:, None]
        return weights

    def forward(self, user: np.ndarray, item_rows: np.ndarray, history: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """(query (d,), hidden pre-activation (hidden,)) for one user; ``history``: item rows,
        oldest first."""
        if history.size:
            pooled = (self._weights_of(history.size) * item_rows[history]).sum(0).astype(np.float32)
        else:
            pooled = np.zeros(self.dim, np.float32)
        z1 = self.w1 @ np.concatenate([user, pooled]) + self.b1
        return user + pooled + self.w2 @ np.maximum(z1, 0.0) + self.b2, z1

    def user_grad(self, query_grad: np.ndarray, z1: np.ndarray) -> np.ndarray:
        """dL/du from dL/dquery (the pooled history is held constant)."""
        return query_grad + self._w1_user_t @ ((self._w2_t @ query_grad) * (z1 > 0))

    def forward_many(self, users: np.ndarray, item_rows: np.ndarray, histories: list[np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """`forward` for T users at once: users (T, d), histories oldest first; (T, d), (T, hidden)."""
        width = max(1, max(h.size for h in histories))
        padded = np.zeros((len(histories), width), np.int64)
        weights = np.zeros((len(histories), width), np.float32)
        for n, history in enumerate(histories):
            if history.size:
                padded[n, width - history.size:] = history
                weights[n, width - history.size:] = self._weights_of(history.size)[:, 0]
        pooled = np.einsum("tl,tld->td", weights, item_rows[padded])
        z1 = np.concatenate([users, pooled], axis=1) @ self.w1.T + self.b1
        return users + pooled + np.maximum(z1, 0.0) @ self.w2.T + self.b2, z1

    def user_grad_many(self, query_grads: np.ndarray, z1: np.ndarray) -> np.ndarray:
        """`user_grad` for T users at once: (T, d) float64."""
        return query_grads + ((query_grads @ self._w2_t.T) * (z1 > 0)) @ self._w1_user_t.T


class SequenceTowerGrad:
    """For one user: query = u + Seq(history) (model_repository.sequence_tower); with the
    history held constant d(query)/du is the identity, so dL/du is dL/dquery."""

    def __init__(self, tower: NumpySequenceTower):
        self.tower = tower

    def forward(self, user: np.ndarray, item_rows: np.ndarray, history: np.ndarray
                ) -> tuple[np.ndarray, None]:
        rows, mask = self.tower.history_inputs(item_rows, [history])
        return self.tower(user[None], rows, mask)[0], None

    def user_grad(self, query_grad: np.ndarray, _context: None) -> np.ndarray:
        return query_grad

    def forward_many(self, users: np.ndarray, item_rows: np.ndarray, histories: list[np.ndarray]
                     ) -> tuple[np.ndarray, None]:
        rows, mask = self.tower.history_inputs(item_rows, histories)
        return self.tower(users, rows, mask), None

    def user_grad_many(self, query_grads: np.ndarray, _context: None) -> np.ndarray:
        return query_grads.astype(np.float64)


def tower_grad(tower: NumpyTower | NumpySequenceTower, decay: float
               ) -> PooledTowerGrad | SequenceTowerGrad:
    """The gradient form of a version's tower (``decay``: a pooled tower's recency decay)."""
    if isinstance(tower, NumpySequenceTower):
        return SequenceTowerGrad(tower)
    return PooledTowerGrad(tower, decay)
