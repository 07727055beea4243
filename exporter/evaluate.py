"""Offline quality on a time split: recall@K and NDCG@K of a model against a popularity baseline.

Protocol: a test user must be known in training. Their targets are the catalogue items they
interacted with in the test period and never in training; the ranking covers the catalogue minus
the items the user saw in training (for every scorer alike). recall@K = |top-K ∩ targets| /
|targets|, NDCG@K uses binary relevance; both are averaged over users with at least one target.

The next-event protocol (`build_next_event_split`, `next_event_metrics`) asks each test event
before it is known, as the live history serves it: the user's history is everything before the
event, a user unknown to the model has a zero row, the popularity is recounted every
NEXT_EVENT_WINDOW events, no row moves (bench.quality's "static + app-sent history" replay row,
in process: on ml-100k 0.190 here against 0.189 through the server). Each event's history age
(for the prior's session gate, model_repository.scoring) is measured as serving measures it:
from the user's previous event to the newest event before it. exporter.search scores
candidates both ways.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from exporter.data import Interactions
from exporter.towers import tower_query
from exporter.train import TrainedModel
from model_repository.scoring import history_ages, popularity_prior, trend_counts

log = logging.getLogger(__name__)

DEFAULT_KS = (10, 50)
DEFAULT_EVAL_BATCH = 512
TABLE_COLUMNS = ("recall@10", "ndcg@10", "recall@50")
RECENT_POPULARITY = "recent popularity"  # popularity with the model's half-life
NEXT_EVENT_WINDOW = 1000  # events between two recounts of the popularity (a publish)

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


@dataclass(frozen=True)
class NextEventSplit:
    """Each event of a stream asked before it is known, as a live history serves it.

    The scored events (E of them: the item in the catalogue and new to its user): user_ids (E,)
    external ids; histories (E, H) item rows of the user's last H events before it (-1 padded on
    the left, most recent last); seen_offsets / seen_items the CSR of every item the user had
    before it (excluded from the ranking); targets (E,) its item row; counted (E,) how many of
    ``event_rows`` / ``event_times`` (every event in time order, -1 for items outside the
    catalogue) the popularity counts hold when it is asked: those before its window; ages (E,)
    seconds from the user's previous event to the newest event before it (inf: none).
    """

    item_ids: np.ndarray
    user_ids: np.ndarray
    histories: np.ndarray
    seen_offsets: np.ndarray
    seen_items: np.ndarray
    targets: np.ndarray
    counted: np.ndarray
    event_rows: np.ndarray
    event_times: np.ndarray
    ages: np.ndarray


def build_next_event_split(before: Interactions, events: Interactions, *, item_ids: np.ndarray,
                           history_len: int, window_events: int = NEXT_EVENT_WINDOW
                           ) -> NextEventSplit:
    """``events`` (after ``before`` in time) asked one by one over catalogue ``item_ids``: the
    replay protocol of bench.quality in process, with the popularity recounted every
    ``window_events`` events (a publish) and no row updates."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    users = np.concatenate([before.user_ids, events.user_ids])
    items = np.concatenate([before.item_ids, events.item_ids])
    rows = np.where(np.isin(items, item_ids), np.searchsorted(item_ids, items), -1)
    order = np.argsort(users, kind="stable")  # by user, time order kept inside each
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    grouped = rows[order]
    starts = np.searchsorted(users[order], users[order], side="left")
    asked = np.arange(len(before), len(users))
    asked = asked[rows[asked] >= 0]
    p, start = position[asked], starts[position[asked]]
    seen_lists = [grouped[a:b][grouped[a:b] >= 0] for a, b in zip(start.tolist(), p.tolist())]
    new = np.array([rows[e] not in set(seen.tolist()) for e, seen in zip(asked, seen_lists)],
                   dtype=bool)
    asked = asked[new]
    seen_lists = [seen for seen, keep in zip(seen_lists, new) if keep]
    histories = np.full((len(asked), history_len), -1, dtype=np.int64)
    for row, seen in enumerate(seen_lists):  # the catalogue items before it, most recent last
        recent = seen[-history_len:]
        histories[row, history_len - len(recent):] = recent
    seen_offsets = np.zeros(len(asked) + 1, dtype=np.int64)
    np.cumsum([len(seen) for seen in seen_lists], out=seen_offsets[1:])
    window = (asked - len(before)) // window_events
    times = np.concatenate([before.timestamps, events.timestamps]).astype(np.float64)
    p, start = position[asked], starts[position[asked]]  # of the scored events
    previous = np.where(p > start, times[order][np.maximum(p - 1, 0)], -np.inf)
    newest_before = np.maximum.accumulate(times)[np.maximum(asked - 1, 0)]
    return NextEventSplit(
        item_ids=item_ids, user_ids=users[asked], histories=histories.astype(np.int64),
        seen_offsets=seen_offsets,
        seen_items=(np.concatenate(seen_lists) if seen_lists else np.zeros(0)).astype(np.int64),
        targets=rows[asked].astype(np.int64), counted=len(before) + window * window_events,
        event_rows=rows.astype(np.int64), event_times=times,
        ages=history_ages(previous, newest_before))


def next_event_counts(split: NextEventSplit, counted: int, half_life_s: float) -> np.ndarray:
    """(I,) float32: the popularity counts of the first ``counted`` events, all-time or trend
    (as of the last of them) with ``half_life_s`` > 0."""
    rows, times = split.event_rows[:counted], split.event_times[:counted]
    known = rows >= 0
    if half_life_s > 0 and known.any():
        return trend_counts(rows[known], times[known], len(split.item_ids),
                            as_of=float(times[known].max()), half_life_s=half_life_s)
    return np.bincount(rows[known], minlength=len(split.item_ids)).astype(np.float32)


def next_event_queries(model: TrainedModel, split: NextEventSplit) -> np.ndarray:
    """(E, d) float32: each scored event's query, from its user's row (zero for a user the model
    has no row for) and the history before it, as serving computes it."""
    index = np.searchsorted(model.user_ids, split.user_ids).clip(max=len(model.user_ids) - 1)
    known = model.user_ids[index] == split.user_ids
    user_emb = np.where(known[:, None], model.user_rows[index], 0.0).astype(np.float32)
    with torch.no_grad():
        return tower_query(model.tower, torch.from_numpy(user_emb),
                           torch.from_numpy(model.item_rows), torch.from_numpy(split.histories),
                           decay=model.config.recency_decay).numpy()


def next_event_results(split: NextEventSplit, *, queries: np.ndarray | None,
                       item_rows: np.ndarray | None, weights: np.ndarray | float,
                       half_life_s: float, k: int = 10,
                       batch_size: int = DEFAULT_EVAL_BATCH) -> dict[str, np.ndarray]:
    """Per scored event (E,) float64: recall@k (1 when its item is in the top k: one target each)
    and ndcg@k, scored ``queries @ item_rows.T`` plus the popularity prior of the counts when it
    is asked, weighed by ``weights`` ((E,), or one for all; 0: no prior); ``queries=None`` ranks
    by those counts alone (popularity)."""
    n = len(split.targets)
    hits = np.zeros(n)
    gains = np.zeros(n)
    k = min(k, len(split.item_ids))
    weights = np.broadcast_to(np.asarray(weights, np.float32), (n,))
    for counted in np.unique(split.counted):
        counts = next_event_counts(split, int(counted), half_life_s)
        prior = torch.from_numpy(popularity_prior(counts, 1.0) if queries is not None else counts)
        members = np.flatnonzero(split.counted == counted)
        for lo in range(0, len(members), batch_size):
            chosen = members[lo:lo + batch_size]
            if queries is None:
                scores = prior.expand(len(chosen), -1).clone()
            else:
                scores = torch.from_numpy(queries[chosen]) @ torch.from_numpy(item_rows).T
                if (weights[chosen] > 0).any():
                    scores += torch.from_numpy(weights[chosen].copy())[:, None] * prior
            seen_counts = split.seen_offsets[chosen + 1] - split.seen_offsets[chosen]
            seen = np.concatenate([split.seen_items[split.seen_offsets[e]:split.seen_offsets[e + 1]]
                                   for e in chosen])
            scores[torch.from_numpy(np.repeat(np.arange(len(chosen)), seen_counts)),
                   torch.from_numpy(seen)] = float("-inf")
            top = scores.topk(k, dim=1).indices.numpy()
            hit = top == split.targets[chosen][:, None]
            found = hit.any(1)
            hits[chosen] = found
            gains[chosen] = np.where(found, 1.0 / np.log2(hit.argmax(1) + 2.0), 0.0)
    return {f"recall@{k}": hits, f"ndcg@{k}": gains}


def next_event_metrics(split: NextEventSplit, *, queries: np.ndarray | None,
                       item_rows: np.ndarray | None, weights: np.ndarray | float,
                       half_life_s: float, k: int = 10,
                       batch_size: int = DEFAULT_EVAL_BATCH) -> dict[str, float]:
    """`next_event_results` averaged over the split's events, plus "events" (how many)."""
    results = next_event_results(split, queries=queries, item_rows=item_rows, weights=weights,
                                 half_life_s=half_life_s, k=k, batch_size=batch_size)
    return {**{name: float(values.mean()) if values.size else 0.0
               for name, values in results.items()}, "events": float(len(split.targets))}


def paired_ratio_interval(ours: np.ndarray, theirs: np.ndarray, *,
                          groups: np.ndarray | None = None, draws: int = 2000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval (the same draw for both) of sum(ours) / sum(theirs), two per-user metric
    arrays: mean(ours) / mean(theirs) of one split. ``groups`` (same length): resample whole groups
    instead of single entries (a cluster bootstrap): entries of one user at several cuts of a log
    are not independent draws, so the user is what is resampled."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if groups is not None:
        _, group = np.unique(groups, return_inverse=True)
        ours, theirs = np.bincount(group, weights=ours), np.bincount(group, weights=theirs)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ours), size=(draws, len(ours)))
    ratios = ours[picks].sum(1) / np.maximum(theirs[picks].sum(1), 1e-12)
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


@dataclass(frozen=True)
class PairedUsers:
    """Who makes a paired difference of two per-user metric arrays: how many users are ahead,
    behind and level, and mean(ours) / mean(theirs) with each one user left out in turn (its
    lowest and highest): on a split with few users one user can decide a ratio."""

    ahead: int
    behind: int
    level: int
    without_one: tuple[float, float]

    def describe(self) -> str:
        return (f"users ahead / behind / level {self.ahead} / {self.behind} / {self.level}, "
                "any one user left out x{:.2f}-{:.2f}".format(*self.without_one))


def paired_users(ours: np.ndarray, theirs: np.ndarray) -> PairedUsers:
    """`PairedUsers` of two per-user metric arrays of one split (two users or more)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape or ours.ndim != 1 or len(ours) < 2:
        raise ValueError(f"paired_users needs two arrays of one shape, over two users or more; "
                         f"got {ours.shape} and {theirs.shape}")
    diff = ours - theirs
    ratios = (ours.sum() - ours) / np.maximum(theirs.sum() - theirs, 1e-12)
    return PairedUsers(ahead=int((diff > 0).sum()), behind=int((diff < 0).sum()),
                       level=int((diff == 0).sum()),
                       without_one=(float(ratios.min()), float(ratios.max())))


def popularity_scorer(item_popularity: np.ndarray) -> ScoreFn:
    """Every user gets the same scores: the items' training-window counts."""
    popularity = np.asarray(item_popularity, dtype=np.float32)
    return lambda user_ids: np.tile(popularity, (len(user_ids), 1))


def model_scorer(model: TrainedModel, *, use_user_rows: bool = True) -> ScoreFn:
    """Scores ``query @ item_rows.T`` plus the model's popularity prior, as serving scores, the
    query from each user's row (or a zero row when ``use_user_rows`` is False) and stored
    history, the prior weighed by each user's session gate (the history's age at the cut)."""
    queries = model.user_queries(use_user_rows=use_user_rows)
    prior = popularity_prior(model.prior_counts(), 1.0)
    weights = model.prior_weights(model.history_ages())  # each user's, by the session gate

    def score(user_ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(model.user_ids, user_ids).clip(max=len(model.user_ids) - 1)
        unknown = model.user_ids[rows] != user_ids
        if unknown.any():
            raise ValueError(f"user ids without a row in the model: {user_ids[unknown][:5]}")
        return queries[rows] @ model.item_rows.T + weights[rows, None] * prior[None, :]

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
