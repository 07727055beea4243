"""Offline quality on a time split: recall@K and NDCG@K of a model against a popularity baseline.

Protocol: a test user must be known in training. Their targets are the catalogue items they
interacted with in the test period and never in training; the ranking covers the catalogue minus
the items the user saw in training (for every scorer alike). recall@K = |top-K ∩ targets| /
|targets|, NDCG@K uses binary relevance; both are averaged over users with at least one target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from exporter.data import Interactions
from exporter.train import TrainedModel
from model_repository.scoring import popularity_prior

log = logging.getLogger(__name__)

DEFAULT_KS = (10, 50)
DEFAULT_EVAL_BATCH = 512
TABLE_COLUMNS = ("recall@10", "ndcg@10", "recall@50")
RECENT_POPULARITY = "recent popularity"  # popularity with the model's half-life

# (B,) external user ids -> (B, I) float32 scores over the split's catalogue, in its row order
ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EvalSplit:
    """Who is evaluated on what, over a catalogue of ``item_ids`` (I,) int64.

    user_ids: (E,) int64 external ids of the evaluated users; target_offsets / target_items and
    seen_offsets / seen_items: CSR (E + 1,) offsets and int64 catalogue rows of each user's
    targets and training-seen items.
    """

    item_ids: np.ndarray
    user_ids: np.ndarray
    target_offsets: np.ndarray
    target_items: np.ndarray
    seen_offsets: np.ndarray
    seen_items: np.ndarray


def _pairs_csr(keys: np.ndarray, users: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique (user_row * n_items + item_row) keys -> CSR over ``users`` (sorted rows)."""
    counts = np.bincount(np.searchsorted(users, keys // n_items), minlength=len(users))
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, (keys % n_items).astype(np.int64)


def build_eval_split(train: Interactions, test: Interactions, *,
                     item_ids: np.ndarray) -> EvalSplit:
    """Targets and exclusions per test user known in training, over catalogue ``item_ids``
    (sorted unique int64 external ids)."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    n_items = len(item_ids)
    known_users = np.unique(train.user_ids)
    in_catalogue = np.isin(train.item_ids, item_ids)
    train_keys = np.unique(np.searchsorted(known_users, train.user_ids[in_catalogue]) * n_items
                           + np.searchsorted(item_ids, train.item_ids[in_catalogue]))
    usable = np.isin(test.user_ids, known_users) & np.isin(test.item_ids, item_ids)
    test_keys = np.unique(np.searchsorted(known_users, test.user_ids[usable]) * n_items
                          + np.searchsorted(item_ids, test.item_ids[usable]))
    target_keys = test_keys[~np.isin(test_keys, train_keys, assume_unique=True)]
    users = np.unique(target_keys // n_items)
    target_offsets, target_items = _pairs_csr(target_keys, users, n_items)
    seen_keys = train_keys[np.isin(train_keys // n_items, users)]
    seen_offsets, seen_items = _pairs_csr(seen_keys, users, n_items)
    return EvalSplit(item_ids=item_ids, user_ids=known_users[users],
                     target_offsets=target_offsets, target_items=target_items,
                     seen_offsets=seen_offsets, seen_items=seen_items)


def _csr_mask(offsets: np.ndarray, ids: np.ndarray, lo: int, hi: int, n_items: int
              ) -> torch.Tensor:
    """(hi - lo, n_items) bool mask of CSR rows lo..hi."""
    start, end = offsets[lo], offsets[hi]
    rows = np.repeat(np.arange(hi - lo), np.diff(offsets[lo:hi + 1]))
    mask = torch.zeros(hi - lo, n_items, dtype=torch.bool)
    mask[torch.from_numpy(rows), torch.from_numpy(ids[start:end])] = True
    return mask


def per_user_metrics(score_fn: ScoreFn, split: EvalSplit, *, ks: Sequence[int] = DEFAULT_KS,
                     batch_size: int = DEFAULT_EVAL_BATCH) -> dict[str, np.ndarray]:
    """recall@k and ndcg@k for each k, each an (E,) float64 array over the split's users."""
    n_users, n_items = len(split.user_ids), len(split.item_ids)
    k_max = min(max(ks), n_items)
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64))
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64), discount.cumsum(0)])
    out = {f"{m}@{k}": np.zeros(n_users) for k in ks for m in ("recall", "ndcg")}
    for lo in range(0, n_users, batch_size):
        hi = min(lo + batch_size, n_users)
        scores = torch.as_tensor(score_fn(split.user_ids[lo:hi]), dtype=torch.float32)
        if scores.shape != (hi - lo, n_items):
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, "
                             f"expected {(hi - lo, n_items)}")
        seen = _csr_mask(split.seen_offsets, split.seen_items, lo, hi, n_items)
        scores = scores.masked_fill(seen, float("-inf"))
        top = scores.topk(k_max, dim=1).indices
        targets = _csr_mask(split.target_offsets, split.target_items, lo, hi, n_items)
        hits = targets.gather(1, top).to(torch.float64)
        n_targets = targets.sum(1).to(torch.float64)
        for k in ks:
            k_eff = min(k, n_items)
            out[f"recall@{k}"][lo:hi] = (hits[:, :k_eff].sum(1) / n_targets).numpy()
            dcg = (hits[:, :k_eff] * discount[:k_eff]).sum(1)
            idcg = ideal[n_targets.clamp(max=k_eff).long()]
            out[f"ndcg@{k}"][lo:hi] = (dcg / idcg).numpy()
    return out


def ranking_metrics(score_fn: ScoreFn, split: EvalSplit, *, ks: Sequence[int] = DEFAULT_KS,
                    batch_size: int = DEFAULT_EVAL_BATCH) -> dict[str, float]:
    """recall@k and ndcg@k for each k, plus "users" (how many were evaluated)."""
    per_user = per_user_metrics(score_fn, split, ks=ks, batch_size=batch_size)
    metrics = {name: float(values.mean()) if values.size else 0.0
               for name, values in per_user.items()}
    metrics["users"] = float(len(split.user_ids))
    return metrics


def paired_ratio_interval(ours: np.ndarray, theirs: np.ndarray, *, draws: int = 2000,
                          seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval (users resampled, the same draw for both) of mean(ours) / mean(theirs),
    two per-user metric arrays of one split."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ours), size=(draws, len(ours)))
    ratios = ours[picks].mean(1) / np.maximum(theirs[picks].mean(1), 1e-12)
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


def popularity_scorer(item_popularity: np.ndarray) -> ScoreFn:
    """Every user gets the same scores: the items' training-window counts."""
    popularity = np.asarray(item_popularity, dtype=np.float32)
    return lambda user_ids: np.tile(popularity, (len(user_ids), 1))


def model_scorer(model: TrainedModel, *, use_user_rows: bool = True) -> ScoreFn:
    """Scores ``query @ item_rows.T`` plus the model's popularity prior, as serving scores, the
    query from each user's row (or a zero row when ``use_user_rows`` is False) and stored
    history."""
    queries = model.user_queries(use_user_rows=use_user_rows)
    prior = popularity_prior(model.prior_counts(), model.popularity_weight)

    def score(user_ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(model.user_ids, user_ids).clip(max=len(model.user_ids) - 1)
        unknown = model.user_ids[rows] != user_ids
        if unknown.any():
            raise ValueError(f"user ids without a row in the model: {user_ids[unknown][:5]}")
        return queries[rows] @ model.item_rows.T + prior

    return score


def evaluate(model: TrainedModel, train: Interactions, test: Interactions, *,
             ks: Sequence[int] = DEFAULT_KS, batch_size: int = DEFAULT_EVAL_BATCH,
             extra: Mapping[str, ScoreFn] | None = None) -> dict[str, dict[str, float]]:
    """Metrics per scorer, all on one split over the model's catalogue: "model", "history only"
    (the model with zero user rows: how a user without a row is served), "popularity" (the
    model's training-window counts), "recent popularity" (its trend counts, when the model's
    prior has a half-life) and any ``extra`` scorers."""
    split = build_eval_split(train, test, item_ids=model.item_ids)
    scorers = {"model": model_scorer(model),
               "history only": model_scorer(model, use_user_rows=False),
               "popularity": popularity_scorer(model.item_popularity)}
    if model.popularity_half_life_s > 0:
        scorers[RECENT_POPULARITY] = popularity_scorer(model.item_trend)
    scorers.update(extra or {})
    results = {name: ranking_metrics(fn, split, ks=ks, batch_size=batch_size)
               for name, fn in scorers.items()}
    log.info("evaluated %d users on %d catalogue items", len(split.user_ids), len(split.item_ids))
    return results


def format_quality_table(rows: Mapping[str, Mapping[str, float]], *,
                         columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A plain aligned table: one line per scorer, the metric columns, then users evaluated."""
    header = ["model", *columns, "users"]
    body = [[name, *(f"{metrics[c]:.4f}" for c in columns), f"{int(metrics['users'])}"]
            for name, metrics in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [header, *body]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines)
