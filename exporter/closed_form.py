"""A closed-form base model: low-rank symmetric EASE rows served through the pooled user tower.

EASE (Steck, WWW 2019) scores a user's items as ``x_u B`` over their whole binary history x_u,
with ``B = I - P diag(1 / diag(P))``, ``P = (X^T X + l2 I)^-1``. Its symmetric part's top
``dim`` eigenpairs give item factors ``Q = V sqrt(max(lambda, 0))``, so ``B ~ Q Q^T`` and

    score(u, i) = unit(x_u Q) . Q_i   +   a * s * pool(Q[recent history of u]) . Q_i

which is exactly the pooled tower's ``query . item_row`` with

    item_rows = c Q,   user_rows = unit(x_u Q),   tower MLP = 0 (query = u + h),   c = a * s

(pool: model_repository.pooling's recency-weighted mean of the last ``history_len`` items; s =
1 / the mean norm of ``pool(Q)`` over users, so ``a`` weighs the recent history against the
whole one in comparable units). One table of item rows serves both the history and the scoring,
the recent history moves with the live history store at serving time, the popularity prior adds
as in any model (model_repository.scoring), and a user without a row is served from ``h``.

Measured (2026-12, 2 cores, 80/20 time split as `build` prints, before any search): ml-100k
recall@10 / NDCG@10: EASE itself 0.085 / 0.181, this with dim 64, a 0.5, prior 0.1: 0.097 /
0.203 (popularity 0.067 / 0.149).

Cost: a dense (I, I) float64 inverse and a top-``dim`` eigensolve over the I items with training
events, so it is offered only up to `MAX_ITEMS` of them (1.6 k items: 0.6 s; 11 k items: ~1 min
on 2 quiet cores, 2.5-4.5 min while other work shares them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from model_repository.pooling import pool_padded

log = logging.getLogger(__name__)

# the dense (I, I) float64 matrices take 8 I^2 bytes each, three at once: 6 GiB at 16 k items
MAX_ITEMS = 16_000
# below this many items a full eigendecomposition is as quick as a partial one
FULL_EIGH_ITEMS = 3_000


@dataclass(frozen=True)
class Factors:
    """What one EASE fit gives, before the history weight is chosen.

    q: (I, dim) float64 item factors; user_rows: (U, dim) float32 unit rows of ``x_u Q``
    (zero for a user with no training item); pooled: (U, dim) float64 ``pool(Q)`` of each
    user's stored history."""

    q: np.ndarray
    user_rows: np.ndarray
    pooled: np.ndarray
    fit_s: float
    # (I, dim) float64: what one co-occurrence with each item adds to the factors of an item the
    # fit did not see (`cooccurrence_map`); zero rows for items without training events
    cooc: np.ndarray | None = None


def binary_matrix(user_index: np.ndarray, item_index: np.ndarray, shape: tuple[int, int], *,
                  dtype=np.float64) -> sp.csr_matrix:
    """(U, I) CSR with 1 where a (user row, item row) pair occurs, however often."""
    matrix = sp.csr_matrix((np.ones(len(user_index), dtype), (user_index, item_index)),
                           shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def ease_weights(matrix: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE's (I, I) float64 item-item weights, zero diagonal (the matrix in any float dtype)."""
    return ease_weights_and_diagonal(matrix, l2)[0]


def ease_weights_and_diagonal(matrix: sp.csr_matrix, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """EASE's weights B and the diagonal (I,) of ``P = (X^T X + l2 I)^-1`` they came from (B is
    P's columns divided by -P_jj in place, so P itself is not kept: `cooccurrence_map` needs
    only B and that diagonal)."""
    gram = (matrix.T @ matrix).toarray().astype(np.float64, copy=False)
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    del gram
    diagonal = np.diag(inverse).copy()
    inverse /= -diagonal  # column j divided by -P_jj
    inverse[np.diag_indices_from(inverse)] = 0.0
    return inverse, diagonal


def cooccurrence_map(weights: np.ndarray, p_diagonal: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(I, dim) float64 M with row k what one co-occurrence with item k adds to the factors of an
    item the fit did not see (issue 33: new items learned from their first events).

    For an item j outside the fit, EASE's column is the ridge regression of its occurrences on
    the fitted items, ``b_j = P c_j`` with ``c_j = X^T x_j`` its co-occurrence counts (exact: j
    is no regressor of itself, so the zero-diagonal constraint holds). Its factors are b_j's
    least-squares coordinates in the span of Q, ``w_j = (Q^T Q)^+ Q^T P c_j``, so that
    ``x_u Q . w_j ~ x_u b_j`` as ``x_u Q . Q_i ~ x_u B_{:,i}`` for a fitted item. So
    ``w_j^T = c_j^T M`` with ``M = P Q (Q^T Q)^+``, and each co-occurrence (a user who took j
    had taken k) adds row k of M: the updater keeps j's row as that sum. P is recovered from B
    and P's diagonal: ``P_kj = -B_kj P_jj`` off the diagonal, so ``P Q = D Q - B (D Q)``."""
    dq = p_diagonal[:, None] * q
    return (dq - weights @ dq) @ np.linalg.pinv(q.T @ q)


def top_eigen_factors(weights: np.ndarray, dim: int) -> np.ndarray:
    """(I, dim) ``V sqrt(max(lambda, 0))`` of the symmetric part's largest ``dim`` eigenpairs,
    each column's sign fixed (largest entry positive) so the result does not depend on the
    solver's. Columns beyond the catalogue's rank are zero."""
    sym = (weights + weights.T) / 2.0
    n = sym.shape[0]
    k = min(dim, n)
    if n <= FULL_EIGH_ITEMS or k >= n - 1:
        values, vectors = np.linalg.eigh(sym)
        values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
    else:
        from scipy.sparse.linalg import eigsh

        values, vectors = eigsh(sym, k=k, which="LA", v0=np.ones(n) / np.sqrt(n))
        order = np.argsort(-values)
        values, vectors = values[order], vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(k)])
    q = np.zeros((n, dim))
    q[:, :k] = vectors * np.where(signs == 0, 1.0, signs) * np.sqrt(np.clip(values, 0.0, None))
    return q


def fit_factors(user_index: np.ndarray, item_index: np.ndarray, shape: tuple[int, int], *,
                l2: float, dim: int, history: np.ndarray, decay: float,
                cooccurrence: bool = True) -> Factors:
    """EASE on the binary (user row, item row) matrix of ``shape``, its symmetric rank-``dim``
    factors, each user's unit whole-history row and pooled stored ``history``; with
    ``cooccurrence``, also the map the updater learns unfitted items' rows with (an (I, I) x
    (I, dim) product more: the validation search's candidates, never served, skip it)."""
    n_seen = len(np.unique(item_index))
    if n_seen > MAX_ITEMS:
        raise ValueError(f"the closed-form fit takes at most {MAX_ITEMS} items with events, got "
                         f"{n_seen}")
    started = time.perf_counter()
    matrix = binary_matrix(user_index, item_index, shape)
    # items without a training event have zero rows and columns in EASE: leave them out of the
    # (I, I) solve, their factors are zero (the text projection may give them rows later)
    seen = np.flatnonzero(np.bincount(item_index, minlength=shape[1]))
    q = np.zeros((shape[1], dim))
    weights, p_diagonal = ease_weights_and_diagonal(matrix[:, seen], l2)
    q[seen] = top_eigen_factors(weights, dim)
    cooc = None
    if cooccurrence:
        cooc = np.zeros((shape[1], dim))
        cooc[seen] = cooccurrence_map(weights, p_diagonal, q[seen])
    del weights
    whole = np.asarray(matrix @ q)
    norms = np.linalg.norm(whole, axis=1, keepdims=True)
    user_rows = np.where(norms > 0, whole / np.where(norms > 0, norms, 1.0), 0.0)
    pooled = pool_padded(q, history, decay=decay)
    fit_s = time.perf_counter() - started
    log.info("closed form: EASE l2 %g, rank %d, %d x %d in %.1f s", l2, dim, *shape, fit_s)
    return Factors(q=q, user_rows=user_rows.astype(np.float32), pooled=pooled, fit_s=fit_s,
                   cooc=cooc)


def served_rows(factors: Factors, history_weight: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(user_rows, item_rows, cooccurrence map) float32 that score ``unit(x_u Q) . Q_i + a s
    pool(Q) . Q_i`` up to a positive factor per model, through query = u + pool(item_rows); the
    map at the item rows' scale (None when the fit kept none)."""
    norms = np.linalg.norm(factors.pooled, axis=1)
    mean_norm = float(norms[norms > 0].mean()) if (norms > 0).any() else 1.0
    scale = history_weight / mean_norm
    cooc = None if factors.cooc is None else (scale * factors.cooc).astype(np.float32)
    return factors.user_rows, (scale * factors.q).astype(np.float32), cooc
