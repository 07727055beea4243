"""Choosing the build's settings on a validation slice, within a time budget.

    training window (earliest 80 % of events)  =  fit (its earliest 90 %)  +  valid (its latest 10 %)

Each candidate setting (embedding size, learning rate, L2, negatives: `candidates`) trains on
*fit* for up to `MAX_EPOCHS` epochs, scored on *valid* after each epoch with the protocol
`build` reports (exporter.evaluate: recall@10 on items new to the user, training items
excluded); training stops after `PATIENCE` epochs without a better score (early stopping). At
the best epoch the weight of the popularity prior (model_repository.scoring) is chosen from
`PRIOR_WEIGHTS`; its largest value makes the ranking popularity's with the model as tie-breaker,
so the chosen model does not lose to popularity on validation by more than that tie-breaking.
The winner (most recall@10 on valid, then NDCG@10) is then trained on the whole training window
for its best epoch count; `build` serves that.

The budget is checked between candidates: the first always runs, later ones only while the
budget lasts, in the order `candidates` lists them (the defaults first). Under a seed the
search is deterministic whenever the budget lets every candidate run; a cut is reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from exporter import DEFAULT_SEARCH_BUDGET_S
from exporter.data import Interactions, Items, split_by_time
from exporter.evaluate import build_eval_split, model_scorer, popularity_scorer, ranking_metrics
from exporter.train import DEFAULT_DIM, TrainConfig, TrainedModel, train_base_model

log = logging.getLogger(__name__)

VALID_FRACTION = 0.1    # of the training window, its latest events
MAX_EPOCHS = 12
PATIENCE = 2
PRIOR_WEIGHTS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 100.0)
METRIC, TIE_BREAK = "recall@10", "ndcg@10"


def candidates(base: TrainConfig) -> list[TrainConfig]:
    """The settings tried, defaults first: embedding size, learning rate, L2 and negatives."""
    grid = [base, replace(base, dim=2 * DEFAULT_DIM), replace(base, lr=base.lr / 2),
            replace(base, l2=base.l2 * 10 if base.l2 > 0 else 1e-4),
            replace(base, negatives=max(1, base.negatives // 4))]
    unique: list[TrainConfig] = []
    for config in grid:
        if config not in unique:
            unique.append(config)
    return unique


@dataclass(frozen=True)
class Trial:
    config: TrainConfig
    best_epoch: int
    popularity_weight: float
    valid: dict[str, float]


@dataclass(frozen=True)
class SearchResult:
    config: TrainConfig          # the winner, with epochs set to its best epoch count
    popularity_weight: float
    valid: dict[str, float]      # the winner's validation metrics
    popularity_valid: dict[str, float]
    trials: list[Trial] = field(default_factory=list)
    budget_cut: int = 0          # candidates left out by the budget

    @property
    def loses_to_popularity(self) -> bool:
        return self.valid[METRIC] < self.popularity_valid[METRIC]

    def record(self) -> dict:
        """What the manifest keeps: the settings chosen and how they scored."""
        keep = ("tower", "dim", "epochs", "lr", "l2", "negatives", "batch_size", "seed")
        return {"settings": {k: v for k, v in asdict(self.config).items() if k in keep},
                "popularity_weight": self.popularity_weight,
                "valid": {k: round(v, 5) for k, v in self.valid.items() if k != "users"},
                "popularity_valid": {k: round(v, 5) for k, v in self.popularity_valid.items()
                                     if k != "users"},
                "trials": len(self.trials), "budget_cut": self.budget_cut}


def _key(metrics: dict[str, float]) -> tuple[float, float]:
    return metrics[METRIC], metrics[TIE_BREAK]


class _EarlyStopping:
    """train_base_model's on_epoch: scores each epoch on valid, keeps the best model, stops
    after PATIENCE epochs without a better one."""

    def __init__(self, fit: Interactions, valid: Interactions, split):
        self.fit, self.valid, self.split = fit, valid, split
        self.best: tuple[float, float] | None = None
        self.best_epoch = 0
        self.best_model: TrainedModel | None = None

    def __call__(self, epoch: int, model: TrainedModel) -> bool:
        if self.split is None:
            self.split = build_eval_split(self.fit, self.valid, item_ids=model.item_ids)
        key = _key(ranking_metrics(model_scorer(model), self.split))
        if self.best is None or key > self.best:
            self.best, self.best_epoch, self.best_model = key, epoch, model
        return epoch - self.best_epoch < PATIENCE


def _best_prior(model: TrainedModel, split) -> tuple[float, dict[str, float]]:
    best = None
    for weight in PRIOR_WEIGHTS:
        model.popularity_weight = weight
        metrics = ranking_metrics(model_scorer(model), split)
        if best is None or _key(metrics) > _key(best[1]):
            best = (weight, metrics)
    model.popularity_weight = 0.0
    return best


def search(train: Interactions, *, items: Items | None = None, base: TrainConfig | None = None,
           budget_s: float = DEFAULT_SEARCH_BUDGET_S, grid: Sequence[TrainConfig] | None = None,
           say: Callable[[str], None] = log.info) -> SearchResult:
    """The settings to train the served model with, chosen on the training window's latest
    events. ``say`` gets one line per candidate (progress)."""
    base = base or TrainConfig()
    fit, valid = split_by_time(train, train_fraction=1.0 - VALID_FRACTION)
    started = time.monotonic()
    trials: list[Trial] = []
    grid = list(grid) if grid is not None else candidates(base)
    split = None  # the validation split: the same catalogue for every candidate
    for n, config in enumerate(grid):
        if n and time.monotonic() - started > budget_s:
            say(f"search: time budget of {budget_s:.0f} s spent; {len(grid) - n} of {len(grid)} "
                "candidates left out")
            break
        stopper = _EarlyStopping(fit, valid, split)
        train_base_model(fit, items=items, config=replace(config, epochs=MAX_EPOCHS),
                         progress=False, on_epoch=stopper)
        split, best_epoch, best_model = stopper.split, stopper.best_epoch, stopper.best_model
        weight, metrics = _best_prior(best_model, split)
        trials.append(Trial(replace(config, epochs=best_epoch), best_epoch, weight, metrics))
        say(f"search {n + 1}/{len(grid)}: dim {config.dim}, lr {config.lr:g}, l2 {config.l2:g}, "
            f"negatives {config.negatives} -> best epoch {best_epoch}, popularity weight "
            f"{weight:g}: valid {METRIC} {metrics[METRIC]:.4f}, {TIE_BREAK} "
            f"{metrics[TIE_BREAK]:.4f} ({time.monotonic() - started:.0f} s so far)")
    winner = max(trials, key=lambda t: _key(t.valid))
    popularity = ranking_metrics(popularity_scorer(best_model.item_popularity), split)
    return SearchResult(winner.config, winner.popularity_weight, winner.valid, popularity,
                        trials, budget_cut=len(grid) - len(trials))
