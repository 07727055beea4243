"""Choosing the build's settings on a validation slice, within a time budget.

    training window (earliest 80 % of events)  =  fit (its earliest 90 %)  +  valid (its latest 10 %)

Each candidate setting (`candidates`: the closed form's rank, ridge and history weight; the
trained model's embedding size, learning rate, L2, negatives) is fitted on *fit* and scored on
*valid* two ways, as the model is served: with the protocol `build` reports (exporter.evaluate:
recall@10 on items new to the user, from the history stored at the cut) and event by event as
the live history serves it (`exporter.evaluate.build_next_event_split`: each valid event asked
with its user's history up to it, the popularity recounted every 1,000 events). The score is
the geometric mean of the two recall@10s (then of the two NDCG@10s): measured on ml-100k, a
choice made on the first alone served the live history 18 % worse (replay recall@10 0.164;
scored both ways, 0.200). A trained candidate runs for up to `MAX_EPOCHS` epochs, scored after each,
stopping after `PATIENCE` epochs without a better score (early stopping). At its best epoch
the weight of the popularity prior (model_repository.scoring) is chosen from
`PRIOR_WEIGHTS`; its largest value makes the ranking popularity's with the model as tie-breaker,
so the chosen model does not lose to popularity on validation by more than that tie-breaking.
With it a session gate: from `SESSION_S`, how recent a user's newest history event must be for a
second weight (also from `PRIOR_WEIGHTS`) to apply instead; none when no gate scores better.
Measured on build's time split of ml-100k (closed form): the stored histories at the cut are
mostly weeks old and score best with a large weight, the live history's next events mostly
minutes old and best with none; one weight for both had to trade one for the other.
The prior's half-life is chosen once, before the weights: the one of `HALF_LIFE_FRACTIONS` (of
the fit slice's time span; 0: all-time counts) whose popularity ranking alone scores best on
valid (the same score), so the prior counts what is popular now where a log's interest drifts.
The winner (the best score) is then fitted on the whole training window
(trained for its best epoch count); `build` serves that.

The budget is checked before each candidate: the first always runs; a later one runs when the
time spent plus what its kind's last fresh fit took stays within the budget (a closed-form
candidate that shares a fit already made costs nothing), in the order `candidates` lists them
(the closed form first, then the trained defaults). Under a seed the search is deterministic
whenever the budget lets every candidate run; a cut is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from exporter import DEFAULT_SEARCH_BUDGET_S, closed_form
from exporter.data import Interactions, Items, split_by_time
from exporter.evaluate import (
    build_eval_split,
    build_next_event_split,
    model_scorer,
    next_event_metrics,
    next_event_queries,
    next_event_results,
    per_user_metrics,
    popularity_scorer,
    ranking_metrics,
)
from exporter.train import (
    DEFAULT_DIM,
    METHOD_EASE,
    METHOD_SOFTMAX,
    TrainConfig,
    TrainedModel,
    closed_form_key,
    fit_closed_form,
    train_base_model,
)
from model_repository.retrieve_schema import TOWER_POOLED

log = logging.getLogger(__name__)

VALID_FRACTION = 0.1    # of the training window, its latest events
MAX_EPOCHS = 12
PATIENCE = 2
PRIOR_WEIGHTS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 100.0)
# the prior's session gate (model_repository.scoring.session_weights): how recent a user's newest
# history event must be for the session weight to apply (0: no gate); absolute times, as
# sessions are human time, not a share of the log's span
SESSION_S = (0.0, 600.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)
# the closed form's (rank, EASE ridge) fits, and the recent-history weights tried on each fit
CLOSED_FORM_FITS = ((64, 200.0), (64, 50.0), (64, 800.0), (128, 200.0))
HISTORY_WEIGHTS = (0.25, 0.5, 1.0)
# the popularity prior's half-lives, as shares of the fit slice's time span (0: no decay)
HALF_LIFE_FRACTIONS = (0.0, 0.3, 0.1, 0.03, 0.01)
METRIC, TIE_BREAK = "recall@10", "ndcg@10"
NEXT = "next "  # the prefix of the next-event protocol's metrics in one metrics dict


def candidates(base: TrainConfig, *, n_items: int | None = None) -> list[TrainConfig]:
    """The settings tried: the closed form's ridge, rank and history weight (exporter.closed_form,
    when ``n_items`` items with events fit it and ``base`` is a pooled tower), then the trained
    model's defaults, embedding size, learning rate, L2 and negatives."""
    grid = []
    if base.tower == TOWER_POOLED and (n_items is None or n_items <= closed_form.MAX_ITEMS):
        grid += [replace(base, method=METHOD_EASE, dim=dim, ease_l2=l2, history_weight=weight)
                 for dim, l2 in CLOSED_FORM_FITS for weight in HISTORY_WEIGHTS]
    trained = replace(base, method=METHOD_SOFTMAX)
    grid += [trained, replace(trained, dim=2 * DEFAULT_DIM), replace(trained, lr=base.lr / 2),
             replace(trained, l2=base.l2 * 10 if base.l2 > 0 else 1e-4),
             replace(trained, negatives=max(1, base.negatives // 4))]
    unique: list[TrainConfig] = []
    for config in grid:
        if config not in unique:
            unique.append(config)
    return unique


@dataclass(frozen=True)
class Prior:
    """The popularity prior's weights (model_repository.scoring): ``weight``, and
    ``session_weight`` for users whose newest history event is less than ``session_s`` old."""

    weight: float = 0.0
    session_s: float = 0.0
    session_weight: float = 0.0

    def apply(self, model: TrainedModel) -> None:
        model.popularity_weight = self.weight
        model.session_s = self.session_s
        model.session_popularity_weight = self.session_weight if self.session_s > 0 else 0.0

    def describe(self) -> str:
        if self.session_s <= 0:
            return f"popularity weight {self.weight:g}"
        return (f"popularity weight {self.weight:g}, {self.session_weight:g} in session (newest "
                f"history event < {describe_duration(self.session_s)} old)")


@dataclass(frozen=True)
class Trial:
    config: TrainConfig
    best_epoch: int
    prior: Prior
    valid: dict[str, float]


@dataclass(frozen=True)
class SearchResult:
    config: TrainConfig          # the winner, with epochs set to its best epoch count
    prior: Prior
    valid: dict[str, float]      # the winner's validation metrics, both protocols (`_metrics`)
    popularity_valid: dict[str, float]          # all-time popularity's
    trials: list[Trial] = field(default_factory=list)
    budget_cut: int = 0          # candidates left out by the budget
    popularity_half_life_s: float = 0.0         # the prior's (0: all-time counts)
    recent_popularity_valid: dict[str, float] | None = None  # popularity with that half-life

    @property
    def loses_to_popularity(self) -> bool:
        best = max(_key(self.popularity_valid),
                   _key(self.recent_popularity_valid or self.popularity_valid))
        return _key(self.valid) < best

    def record(self) -> dict:
        """What the manifest keeps: the settings chosen and how they scored."""
        keep = (("method", "tower", "dim", "ease_l2", "history_weight", "seed")
                if self.config.method == METHOD_EASE else
                ("method", "tower", "dim", "epochs", "lr", "l2", "negatives", "batch_size", "seed"))

        def rounded(metrics):
            return {k: round(v, 5) for k, v in metrics.items() if k != "users"}

        return {"settings": {k: v for k, v in asdict(self.config).items() if k in keep},
                "popularity_weight": self.prior.weight,
                "session_s": self.prior.session_s,
                "session_popularity_weight": self.prior.session_weight,
                "popularity_half_life_s": self.popularity_half_life_s,
                "valid": rounded(self.valid),
                "popularity_valid": rounded(self.popularity_valid),
                "recent_popularity_valid": rounded(self.recent_popularity_valid or {}),
                "trials": len(self.trials), "budget_cut": self.budget_cut}


def score(metrics: dict[str, float]) -> float:
    """The search's score of one metrics dict (`_metrics`): the geometric mean of recall@10 on
    the stored-history split and on the next-event one."""
    return float(np.sqrt(metrics[METRIC] * metrics[NEXT + METRIC]))


def _key(metrics: dict[str, float]) -> tuple[float, float]:
    return score(metrics), float(np.sqrt(metrics[TIE_BREAK] * metrics[NEXT + TIE_BREAK]))


@dataclass
class _Valid:
    """The validation slice, both ways (made with the first model: its catalogue)."""

    fit: Interactions
    valid: Interactions
    split: object = None
    next_events: object = None

    def ready(self, model: TrainedModel) -> _Valid:
        if self.split is None:
            self.split = build_eval_split(self.fit, self.valid, item_ids=model.item_ids)
            self.next_events = build_next_event_split(
                self.fit, self.valid, item_ids=model.item_ids,
                history_len=model.user_history.shape[1])
        return self


def _metrics(model: TrainedModel, valid: _Valid, *, queries: np.ndarray | None = None
             ) -> dict[str, float]:
    """Both protocols' metrics of ``model`` with its prior (``queries``: its next-event queries,
    when already computed); the next-event ones are keyed with the NEXT prefix."""
    split_metrics = ranking_metrics(model_scorer(model), valid.split)
    if queries is None:
        queries = next_event_queries(model, valid.next_events)
    next_metrics = next_event_metrics(
        valid.next_events, queries=queries, item_rows=model.item_rows,
        weights=model.prior_weights(valid.next_events.ages),
        half_life_s=model.popularity_half_life_s)
    return _both(split_metrics, next_metrics)


def _both(split_metrics: dict[str, float], next_metrics: dict[str, float]) -> dict[str, float]:
    """One metrics dict: the split's as they are, the next-event ones keyed with NEXT."""
    return {**split_metrics, **{NEXT + k: v for k, v in next_metrics.items()}}


def _popularity(model: TrainedModel, valid: _Valid) -> dict[str, float]:
    """Both protocols' metrics of ranking by ``model``'s prior counts alone."""
    split_metrics = ranking_metrics(popularity_scorer(model.prior_counts()), valid.split)
    next_metrics = next_event_metrics(valid.next_events, queries=None, item_rows=None,
                                      weights=0.0, half_life_s=model.popularity_half_life_s)
    return _both(split_metrics, next_metrics)


class _EarlyStopping:
    """train_base_model's on_epoch: scores each epoch on valid (both ways, no prior), keeps the
    best model, stops after PATIENCE epochs without a better one."""

    def __init__(self, valid: _Valid):
        self.valid = valid
        self.best: tuple[float, float] | None = None
        self.best_epoch = 0
        self.best_model: TrainedModel | None = None

    def __call__(self, epoch: int, model: TrainedModel) -> bool:
        key = _key(_metrics(model, self.valid.ready(model)))
        if self.best is None or key > self.best:
            self.best, self.best_epoch, self.best_model = key, epoch, model
        return epoch - self.best_epoch < PATIENCE


def half_lives_s(events: Interactions) -> list[float]:
    """HALF_LIFE_FRACTIONS in seconds of ``events``' time span (0 kept; none when it is 0)."""
    span = float(events.timestamps.max() - events.timestamps.min()) if len(events) else 0.0
    return [0.0] + [f * span for f in HALF_LIFE_FRACTIONS if f > 0 and span > 0]


def best_half_life(model: TrainedModel, valid: _Valid) -> tuple[float, dict[str, float]]:
    """(half-life in s, its metrics): the one whose popularity ranking, counted on the fit
    slice with ``model``'s catalogue, scores best on valid; ties go to the longer (0 first)."""
    best = None
    for half_life in half_lives_s(valid.fit):
        model.set_trend(valid.fit, half_life)
        metrics = _popularity(model, valid)
        if best is None or _key(metrics) > _key(best[1]):
            best = (half_life, metrics)
    model.set_trend(valid.fit, 0.0)
    return best


def _best_prior(model: TrainedModel, valid: _Valid) -> tuple[Prior, dict[str, float]]:
    """The prior (a weight of PRIOR_WEIGHTS, a session gate of SESSION_S with its own weight)
    that scores ``model`` best on valid. Each query's result depends on its own weight only, so
    every weight is scored once per query, both ways, and each gate combines them; ties go to
    the earlier (no gate, then the smaller weights)."""
    queries = next_event_queries(model, valid.next_events)  # the prior does not change them
    split_ages = model.history_ages()[np.searchsorted(model.user_ids, valid.split.user_ids)]
    split_results, next_results = {}, {}
    for weight in PRIOR_WEIGHTS:
        Prior(weight).apply(model)
        split_results[weight] = per_user_metrics(model_scorer(model), valid.split, ks=(10,))
        next_results[weight] = next_event_results(
            valid.next_events, queries=queries, item_rows=model.item_rows, weights=weight,
            half_life_s=model.popularity_half_life_s)
    users, events = float(len(valid.split.user_ids)), float(len(valid.next_events.targets))
    best = None
    for session_s in SESSION_S:
        in_split, in_next = split_ages < session_s, valid.next_events.ages < session_s
        for weight in PRIOR_WEIGHTS:
            for session_weight in PRIOR_WEIGHTS if session_s > 0 else (weight,):
                if session_s > 0 and session_weight == weight:
                    continue  # the same as no gate
                metrics = _both(
                    {**_gated(split_results, in_split, weight, session_weight), "users": users},
                    {**_gated(next_results, in_next, weight, session_weight), "events": events})
                if best is None or _key(metrics) > _key(best[1]):
                    best = (Prior(weight, session_s, session_weight) if session_s > 0
                            else Prior(weight), metrics)
    Prior().apply(model)
    return best


def _gated(results: dict[float, dict[str, np.ndarray]], in_session: np.ndarray, weight: float,
           session_weight: float) -> dict[str, float]:
    """Mean metrics when the queries ``in_session`` get ``session_weight``'s results and the
    others ``weight``'s."""
    return {name: float(np.where(in_session, results[session_weight][name], values).mean())
            if values.size else 0.0 for name, values in results[weight].items()}


def search(train: Interactions, *, items: Items | None = None, base: TrainConfig | None = None,
           budget_s: float = DEFAULT_SEARCH_BUDGET_S, grid: Sequence[TrainConfig] | None = None,
           say: Callable[[str], None] = log.info) -> SearchResult:
    """The settings to train the served model with, chosen on the training window's latest
    events. ``say`` gets one line per candidate (progress)."""
    base = base or TrainConfig()
    fit, valid = split_by_time(train, train_fraction=1.0 - VALID_FRACTION)
    started = time.monotonic()
    trials: list[Trial] = []
    grid = list(grid) if grid is not None else candidates(
        base, n_items=len(np.unique(fit.item_ids)))
    checks = _Valid(fit, valid)  # made with the first model: the same catalogue for every one
    half_life, recent = None, None  # the prior's half-life, chosen with the first candidate
    fits: dict = {}  # closed-form fits shared by candidates that differ in history weight only
    costs: dict[str, float] = {}  # seconds of the last candidate of each method that fitted anew
    cut = 0
    for n, config in enumerate(grid):
        shared = config.method == METHOD_EASE and closed_form_key(config) in fits
        expected = 0.0 if shared else costs.get(config.method, 0.0)
        if n and time.monotonic() - started + expected > budget_s:
            cut += 1
            continue
        candidate_started = time.monotonic()
        if config.method == METHOD_EASE:
            best_model = fit_closed_form(fit, items=items, configs=[config], cache=fits,
                                         cooccurrence=False)[0]
            best_epoch = config.epochs
            what = (f"closed form, rank {config.dim}, EASE l2 {config.ease_l2:g}, history weight "
                    f"{config.history_weight:g}")
        else:
            stopper = _EarlyStopping(checks)
            train_base_model(fit, items=items, config=replace(config, epochs=MAX_EPOCHS),
                             progress=False, on_epoch=stopper)
            best_epoch, best_model = stopper.best_epoch, stopper.best_model
            what = (f"{config.tower} tower trained, dim {config.dim}, lr {config.lr:g}, l2 "
                    f"{config.l2:g}, negatives {config.negatives} -> best epoch {best_epoch}")
        checks.ready(best_model)
        if not shared:
            costs[config.method] = time.monotonic() - candidate_started
        if half_life is None:
            half_life, recent = best_half_life(best_model, checks)
            say(f"search: popularity prior half-life {describe_half_life(half_life)} "
                f"(popularity alone: {_describe(recent)})")
        best_model.set_trend(fit, half_life)
        prior, metrics = _best_prior(best_model, checks)
        trials.append(Trial(replace(config, epochs=best_epoch), best_epoch, prior, metrics))
        say(f"search {n + 1}/{len(grid)}: {what}, {prior.describe()}: "
            f"{_describe(metrics)} ({time.monotonic() - started:.0f} s so far)")
    if cut:
        say(f"search: time budget of {budget_s:.0f} s; {cut} of {len(grid)} candidates left out "
            "(each would have run past it, by the time its kind took last)")
    winner = max(trials, key=lambda t: _key(t.valid))
    best_model.set_trend(fit, 0.0)
    popularity = _popularity(best_model, checks)
    return SearchResult(winner.config, winner.prior, winner.valid, popularity,
                        trials, budget_cut=cut, popularity_half_life_s=half_life,
                        recent_popularity_valid=recent)


def _describe(metrics: dict[str, float]) -> str:
    return (f"valid {METRIC} {metrics[METRIC]:.4f} (next event {metrics[NEXT + METRIC]:.4f}), "
            f"{TIE_BREAK} {metrics[TIE_BREAK]:.4f} (next event {metrics[NEXT + TIE_BREAK]:.4f}), "
            f"score {score(metrics):.4f}")


def describe_half_life(half_life_s: float) -> str:
    """'none' or the half-life in days (hours below a day)."""
    if half_life_s <= 0:
        return "none (all-time counts)"
    return describe_duration(half_life_s)


def describe_duration(seconds: float) -> str:
    """A duration in minutes below an hour, hours below a day, else days."""
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    if seconds < 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"
