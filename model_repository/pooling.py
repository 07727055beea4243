"""Recency-weighted pooling of a user's recent items: the one definition training and serving share.

A history lists item rows oldest first, most recent last. Item j of a history of length L gets
weight ``decay ** (L - 1 - j)`` (the most recent item weighs 1), and the pooled vector is the
weighted mean ``sum_j w_j * item_rows[h_j] / sum_j w_j``. An empty history pools to zeros.
Serving feeds these weights to ``kernels.gather_pool(..., mode="sum")``.
"""

from __future__ import annotations

import numpy as np

DEFAULT_HISTORY_LEN = 20
DEFAULT_RECENCY_DECAY = 0.8


def recency_weights(offsets: np.ndarray, *, decay: float = DEFAULT_RECENCY_DECAY) -> np.ndarray:
    """Normalised recency weights for CSR histories.

    offsets: (B + 1,) int64, history b is ``ids[offsets[b]:offsets[b + 1]]``, oldest first.
    Returns (offsets[-1],) float32 weights; each non-empty history's weights sum to 1.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    total = int(offsets[-1]) if offsets.size else 0
    if total == 0:
        return np.zeros(0, dtype=np.float32)
    # age 0 for the most recent item of each history
    owner = np.repeat(np.arange(lengths.size), lengths)
    age = offsets[owner + 1] - 1 - np.arange(total)
    raw = np.power(np.float64(decay), age)
    sums = np.add.reduceat(raw, offsets[:-1][lengths > 0])
    norm = np.repeat(sums, lengths[lengths > 0])
    return (raw / norm).astype(np.float32)


def padded_to_csr(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, H) item rows, -1 on the left for missing entries -> CSR (offsets, ids), oldest first."""
    history = np.asarray(history)
    valid = history >= 0
    lengths = valid.sum(axis=1)
    offsets = np.zeros(history.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, history[valid].astype(np.int64)


def pool_padded(rows: np.ndarray, history: np.ndarray, *, decay: float = DEFAULT_RECENCY_DECAY
                ) -> np.ndarray:
    """(B, H) item rows of ``rows`` with -1 pads -> (B, d) float64 recency-weighted means
    (padded_to_csr -> recency_weights -> weighted sum, the maths serving feeds gather_pool);
    an empty history pools to zeros."""
    offsets, ids = padded_to_csr(history)
    weights = recency_weights(offsets, decay=decay).astype(np.float64)
    owner = np.repeat(np.arange(len(history)), np.diff(offsets))
    pooled = np.zeros((len(history), rows.shape[1]))
    np.add.at(pooled, owner, weights[:, None] * rows[ids])
    return pooled
