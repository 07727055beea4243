"""The popularity prior in the score, folded into the inner product as one extra dimension.

    score(u, i) = query_u . item_row_i + w * log(1 + popularity_i)
                = [query_u, 1] . [item_row_i, w * log(1 + popularity_i)]

``w`` is the retrieve meta's `popularity_weight`, chosen by `freshrec build` on a validation
slice (0: no prior). Written as one more column of the item table and a 1 appended to each
query, an exact top-K stays one `kernels.score_topk` pass. The prior follows the version's
`item_popularity`, which the updater counts up with every positive event, so it drifts with the
traffic at every publish.

With a half-life h (the retrieve meta's `popularity_half_life_s`, chosen by `freshrec build` on
the validation slice; 0: none) the prior counts each event with weight 2 ** -(age / h) instead,
so what is popular *now* leads (`trend_counts`: measured on build's time split, time-decayed
popularity alone lifts recall@10 from 0.067 to 0.170 on ml-100k and from 0.095 to 0.137 on
MovieTweetings, at h = 3 % of the training window). The counts are kept as of a reference time
(`trend_as_of`); the updater adds each event's weight relative to it and moves it forward at
a publish (`settle_trend`), so no count is ever recomputed from the log.
A user in session weighs the prior differently (`session_weights`): a user whose newest history
event is less than ``session_s`` old (the retrieve meta's; 0: no sessions) is served with the
meta's `session_popularity_weight`, every other query with `popularity_weight`. What the user
did minutes ago predicts their next item; what is popular now predicts the items of a user back
after days (measured event by event on ml-100k's test period, closed form: next-event
recall@10 0.20 at prior weight 0 against 0.11 at weight 1 for events within an hour of the
user's previous one, 97 % of them; 0.13 against 0.30 for users back after a week). Both weights and
``session_s`` are chosen by `freshrec build` (exporter.search). The prior column then holds the
prior at weight 1 and each query carries its own weight in place of the 1 it met before, so
top-K stays one `kernels.score_topk` pass. Ages are measured on the log's clock (the newest
event time known), not the wall clock, so a replayed or backfilled log is served as it was.
Numpy only: retrieve imports this on every reload.
"""

from __future__ import annotations

import numpy as np


def popularity_prior(item_popularity: np.ndarray, weight: float) -> np.ndarray:
    """(I,) float32: ``weight * log(1 + popularity)``, where an item with no events yet (a cold
    item from its title, one added while serving) counts as the median item with events: a
    prior of 0 put every cold item below the catalogue (measured: cold-item recall@10 0.124 ->
    0.000 at weight 1 on the synthetic build)."""
    counts = np.asarray(item_popularity, np.float64)
    warm = counts[counts > 0]
    if warm.size:
        counts = np.where(counts > 0, counts, np.median(warm))
    return (float(weight) * np.log1p(counts)).astype(np.float32)


# exponents of 2 a trend weight is clipped to: an event 60 half-lives old still counts (an item
# with events never looks cold), and no weight overflows float32 between two settles
MAX_TREND_EXPONENT = 60.0


def trend_weights(timestamps: np.ndarray, *, as_of: float, half_life_s: float) -> np.ndarray:
    """(N,) float64: ``2 ** ((t - as_of) / half_life_s)`` per event time t (Unix seconds), 1 at
    ``as_of``, 1/2 one half-life before it; the exponent is clipped to +-MAX_TREND_EXPONENT."""
    if not half_life_s > 0:
        raise ValueError(f"half_life_s must be > 0, got {half_life_s!r}")
    exponent = (np.asarray(timestamps, np.float64) - float(as_of)) / float(half_life_s)
    return np.exp2(np.clip(exponent, -MAX_TREND_EXPONENT, MAX_TREND_EXPONENT))


def trend_counts(item_rows: np.ndarray, timestamps: np.ndarray, n_items: int, *,
                 as_of: float, half_life_s: float) -> np.ndarray:
    """(n_items,) float32: each item's events (``item_rows`` (N,) int, ``timestamps`` (N,)
    Unix seconds) counted with their `trend_weights` as of ``as_of``."""
    weights = trend_weights(timestamps, as_of=as_of, half_life_s=half_life_s)
    return np.bincount(np.asarray(item_rows, np.int64), weights=weights,
                       minlength=n_items).astype(np.float32)


def settle_trend(counts: np.ndarray, *, as_of: float, to: float, half_life_s: float) -> None:
    """Move trend ``counts`` (float32, in place) from reference time ``as_of`` to the later
    ``to``: every count decays by ``2 ** -((to - as_of) / half_life_s)``, never below the weight
    of an event MAX_TREND_EXPONENT half-lives old (a count that was above 0 stays above 0)."""
    factor = float(trend_weights(np.array([as_of]), as_of=to, half_life_s=half_life_s)[0])
    floor = np.float32(2.0 ** -MAX_TREND_EXPONENT)
    warm = counts > 0
    counts *= np.float32(factor)
    np.maximum(counts, floor, out=counts, where=warm)


# the trend's minimum mass, as a share of the trend counts' sum at the build's cut (the mass the
# prior's weights were validated at): below it the all-time counts fill the shortfall
# (`floored_trend`). At the cut the floor adds nothing, so build's validation is unchanged.
TREND_MIN_MASS_SHARE = 0.5


def trend_min_mass(trend: np.ndarray) -> float:
    """The minimum mass a version's trend counts (I,) carry into serving:
    TREND_MIN_MASS_SHARE of their sum at the build's cut."""
    return TREND_MIN_MASS_SHARE * float(np.asarray(trend, np.float64).sum())


def floored_trend(trend: np.ndarray, all_time: np.ndarray, *, min_mass: float) -> np.ndarray:
    """(I,) float32: the trend counts with the all-time counts under them while the trend is thin.

        counts_i = trend_i + max(0, min_mass - sum(trend)) * all_time_i / sum(all_time)

    The trend decays by half every half-life: after a gap in traffic (a weekend, a base built
    from an older log, a backfill) its sum falls towards 0 and a handful of new events would
    decide the prior alone (issue 27: one click made its item every new user's first answer).
    With this floor the prior falls back to all-time popularity carrying ``min_mass``, and the
    trend takes over again as new events bring its mass back to ``min_mass``; while the trend
    holds at least ``min_mass`` (continuous traffic) the counts are the trend's own.
    ``min_mass`` 0: the plain trend."""
    shortfall = float(min_mass) - float(np.asarray(trend, np.float64).sum())
    total = float(np.asarray(all_time, np.float64).sum())
    if shortfall <= 0 or total <= 0:
        return np.asarray(trend, np.float32)
    return (np.asarray(trend, np.float64)
            + shortfall * np.asarray(all_time, np.float64) / total).astype(np.float32)


def rows_with_prior(item_rows: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(I, d + 1) float32, C-contiguous: the item rows with the prior as their last column."""
    out = np.empty((item_rows.shape[0], item_rows.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = item_rows
    out[:, -1] = prior
    return out


def queries_with_prior(queries: np.ndarray, weights: np.ndarray | float = 1.0) -> np.ndarray:
    """(B, d + 1) float32: each query with its prior weight appended (``weights`` (B,) or one
    for all), to meet the prior column."""
    out = np.empty((queries.shape[0], queries.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = queries
    out[:, -1] = weights
    return out


def session_weights(ages_s: np.ndarray, *, weight: float, session_weight: float,
                    session_s: float) -> np.ndarray:
    """(B,) float32: the prior's weight per query from the age (s, np.inf when unknown) of its
    user's newest history event: ``session_weight`` below ``session_s`` (in session),
    ``weight`` otherwise; ``session_s`` 0: ``weight`` for all."""
    ages_s = np.asarray(ages_s, np.float64)
    if session_s <= 0:
        return np.full(ages_s.shape, weight, np.float32)
    return np.where(ages_s < session_s, session_weight, weight).astype(np.float32)


def history_clock(last_at: np.ndarray | None) -> float:
    """The newest of the users' newest history event times (``last_at``, -inf for none), -inf
    when there is none: the clock a version's history ages are measured on until the live
    history knows a later event."""
    if last_at is None:
        return -np.inf
    known = np.asarray(last_at, np.float64)
    known = known[np.isfinite(known)]
    return float(known.max()) if known.size else -np.inf


def history_ages(last_at: np.ndarray, clock: float | np.ndarray) -> np.ndarray:
    """(B,) float64 seconds from each user's newest history event (``last_at``, Unix seconds,
    -inf or NaN for none) to ``clock`` (the newest event time known; one, or one per user),
    np.inf where there is none; never below 0."""
    last_at = np.asarray(last_at, np.float64)
    clock = np.broadcast_to(np.asarray(clock, np.float64), last_at.shape)
    known = np.isfinite(last_at)
    ages = np.full(last_at.shape, np.inf)
    ages[known] = np.maximum(clock[known] - last_at[known], 0.0)
    return ages
