"""Base-model training: user and item embedding tables plus a small user tower.

Two methods (``TrainConfig.method``): "softmax" trains everything below by gradient descent;
"ease" fits the pooled tower's rows in closed form (exporter.closed_form: low-rank symmetric
EASE, the tower's MLP zero), which `build`'s search also tries.

An item's score is ``query @ item_row``; the query comes from the user's row and recent history
through one of two towers (``TrainConfig.tower``; exporter.towers):

    "sequence"  query = u + SeqEncoder(last history_len item rows)     (exporter.sequence_tower)
    "pooled"    query = UserTower(u, pool(history)) = u + h + MLP([u, h])

Histories are read exactly as serving reads them (:mod:`model_repository.pooling`,
:mod:`model_repository.sequence_tower`), so a model trained here scores the same way behind
Triton. Training predicts each event from the user's row and the ``history_len`` items before it,
with a softmax over the whole catalogue, or a sampled softmax with the logQ correction when the
catalogue is larger than ``negatives`` (`_batch_loss`).
"""

from __future__ import annotations

import copy
import logging
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from exporter import DEFAULT_TOWER, closed_form
from exporter.data import Interactions, Items
from exporter.sequence_tower import SequenceTower
from exporter.towers import Tower, UserTower, tower_query
from model_repository import retrieve_schema as schema
from model_repository.pooling import DEFAULT_HISTORY_LEN, DEFAULT_RECENCY_DECAY
from model_repository.scoring import (
    floored_trend,
    history_ages,
    history_clock,
    session_weights,
    trend_counts,
    trend_min_mass,
)

log = logging.getLogger(__name__)

DEFAULT_DIM = 32
# Measured on the default synthetic set (80/20 time split, 2 cores): lr 0.01 x 10 epochs overfits
# (recall@10 0.198, 0.174 at 20 epochs); lr 0.003-0.005 for 5-10 epochs all reach 0.22-0.23,
# batch 1024 is as good as 512 and faster; l2 in [0, 1e-3] and user_dropout in [0.25, 0.5]
# change recall@10 by < 0.005, user_dropout 0 costs 0.02.
DEFAULT_EPOCHS = 6
DEFAULT_LR = 0.005
DEFAULT_BATCH_SIZE = 1024
DEFAULT_NEGATIVES = 2048
DEFAULT_USER_DROPOUT = 0.25
DEFAULT_L2 = 1e-5
DEFAULT_SEED = 0
INIT_STD = 0.05
DEFAULT_SEQ_BLOCKS = 2
DEFAULT_SEQ_DROPOUT = 0.2
METHOD_SOFTMAX, METHOD_EASE = "softmax", "ease"
METHODS = (METHOD_SOFTMAX, METHOD_EASE)
DEFAULT_METHOD = METHOD_SOFTMAX
# the closed form's ridge and the weight of the recent history against the whole one
# (exporter.closed_form); ml-100k's validation slice chose among 50-500 and 0.25-1
DEFAULT_EASE_L2 = 200.0
DEFAULT_HISTORY_WEIGHT = 0.5
# added to every item's count in the negatives' proposal, so that no catalogue item has q = 0
FREQUENCY_SMOOTHING = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    tower: the user tower's kind, "sequence" or "pooled" (see the module docstring).
    negatives: negatives sampled per batch (by item frequency, logQ-corrected: `_Negatives`); a
    catalogue no larger than this gets an exact softmax over all items instead.
    user_dropout: probability of zeroing a user's row for one example, so users without a row
    (new users) are served well from their history alone.
    l2: penalty on the embedding rows a batch touches, per row. seq_blocks, seq_dropout: the
    sequence tower's attention blocks and its dropout rate in training (unused by "pooled").
    """

    dim: int = DEFAULT_DIM
    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH_SIZE
    negatives: int = DEFAULT_NEGATIVES
    history_len: int = DEFAULT_HISTORY_LEN
    recency_decay: float = DEFAULT_RECENCY_DECAY
    user_dropout: float = DEFAULT_USER_DROPOUT
    l2: float = DEFAULT_L2
    seed: int = DEFAULT_SEED
    tower: str = DEFAULT_TOWER
    seq_blocks: int = DEFAULT_SEQ_BLOCKS
    seq_dropout: float = DEFAULT_SEQ_DROPOUT
    method: str = DEFAULT_METHOD
    ease_l2: float = DEFAULT_EASE_L2
    history_weight: float = DEFAULT_HISTORY_WEIGHT

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"TrainConfig.method must be one of {', '.join(METHODS)}, "
                             f"got {self.method!r}")
        if self.method == METHOD_EASE and self.tower != schema.TOWER_POOLED:
            raise ValueError(f"TrainConfig.method {METHOD_EASE!r} fits the pooled tower only, "
                             f"got tower {self.tower!r}")
        for name in ("ease_l2", "history_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.tower not in schema.TOWER_KINDS:
            raise ValueError(f"TrainConfig.tower must be one of {', '.join(schema.TOWER_KINDS)}, "
                             f"got {self.tower!r}")
        positive = ("dim", "epochs", "batch_size", "negatives", "history_len", "seq_blocks")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0 < self.recency_decay <= 1:
            raise ValueError(f"TrainConfig.recency_decay must be in (0, 1], "
                             f"got {self.recency_decay!r}")
        if not 0 <= self.user_dropout < 1:
            raise ValueError(f"TrainConfig.user_dropout must be in [0, 1), "
                             f"got {self.user_dropout!r}")
        if not self.l2 >= 0:
            raise ValueError(f"TrainConfig.l2 must be >= 0, got {self.l2!r}")
        if not 0 <= self.seq_dropout < 1:
            raise ValueError(f"TrainConfig.seq_dropout must be in [0, 1), "
                             f"got {self.seq_dropout!r}")


def make_tower(config: TrainConfig) -> Tower:
    """A fresh tower of ``config.tower``'s kind (draws torch's global RNG: seed it first)."""
    if config.tower == schema.TOWER_SEQUENCE:
        return SequenceTower(config.dim, length=config.history_len, blocks=config.seq_blocks,
                             dropout=config.seq_dropout)
    return UserTower(config.dim)


@dataclass
class TrainedModel:
    """A trained base model, in table-row order.

    user_ids (U,) / item_ids (I,): int64 external ids of each row; user_rows (U, d) and
    item_rows (I, d): float32; user_history (U, history_len): int64 item rows of each user's last
    training events, most recent last, -1 padded on the left; item_popularity (I,): float32
    training-window event counts; tower: eval mode, of ``config.tower``'s kind;
    popularity_weight: the weight of the popularity prior in the score, chosen on a validation
    slice (exporter.search), 0 for none; popularity_half_life_s: the prior's decay (0: it counts
    item_popularity), with item_trend (I,) float32 the training events' counts decayed to
    trend_as_of (`set_trend`); user_last_at (U,) float64: each user's newest training event time;
    session_s / session_popularity_weight: the prior's session gate (model_repository.scoring).
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    user_rows: np.ndarray
    item_rows: np.ndarray
    user_history: np.ndarray
    item_popularity: np.ndarray
    tower: Tower
    config: TrainConfig
    popularity_weight: float = 0.0  # the score's popularity prior (model_repository.scoring)
    popularity_half_life_s: float = 0.0
    item_trend: np.ndarray | None = None
    trend_as_of: float = 0.0
    trend_min_mass: float = 0.0  # scoring.floored_trend's, set with the trend (`set_trend`)
    user_last_at: np.ndarray | None = None
    session_s: float = 0.0
    session_popularity_weight: float = 0.0
    # the closed form's (I, d) co-occurrence map (exporter.closed_form.cooccurrence_map): how the
    # updater learns rows for items the fit did not see; None for a trained tower
    item_cooccurrence: np.ndarray | None = None
    # with it, each user's sum of the map's rows over their whole training history, x_u M
    user_cooccurrence: np.ndarray | None = None

    def prior_weights(self, ages_s: np.ndarray) -> np.ndarray:
        """(B,) float32: the prior's weight for queries whose histories are ``ages_s`` old."""
        return session_weights(ages_s, weight=self.popularity_weight,
                               session_weight=self.session_popularity_weight,
                               session_s=self.session_s)

    def history_ages(self) -> np.ndarray:
        """(U,) float64: the age of each user's stored history when the model is served, on its
        clock (the newest training event, as serving's: model_repository.scoring.history_clock)."""
        if self.user_last_at is None:
            return np.full(len(self.user_ids), np.inf)
        return history_ages(self.user_last_at, history_clock(self.user_last_at))

    def prior_counts(self) -> np.ndarray:
        """(I,) float32: what the prior counts, as serving's schema.prior_counts picks it."""
        if self.popularity_half_life_s > 0:
            return floored_trend(self.item_trend, self.item_popularity,
                                 min_mass=self.trend_min_mass)
        return self.item_popularity

    def set_trend(self, events: Interactions, half_life_s: float) -> None:
        """Count ``events`` (the training window) with the popularity half-life ``half_life_s``
        as of their last timestamp (model_repository.scoring.trend_counts); 0 turns it off.
        Events of items outside the catalogue are ignored. The trend's minimum mass is set from
        the counts as of that cut (scoring.trend_min_mass)."""
        self.popularity_half_life_s = float(half_life_s)
        if half_life_s <= 0:
            self.item_trend, self.trend_as_of, self.trend_min_mass = None, 0.0, 0.0
            return
        known = np.isin(events.item_ids, self.item_ids)
        self.trend_as_of = float(events.timestamps.max()) if len(events) else 0.0
        self.item_trend = trend_counts(
            np.searchsorted(self.item_ids, events.item_ids[known]), events.timestamps[known],
            len(self.item_ids), as_of=self.trend_as_of, half_life_s=half_life_s)
        self.trend_min_mass = trend_min_mass(self.item_trend)

    def user_queries(self, user_index: np.ndarray | None = None, *,
                     use_user_rows: bool = True) -> np.ndarray:
        """Queries (B, d) float32 for user rows ``user_index`` (all users when None), from each
        user's row and stored history, as serving computes them. ``use_user_rows=False`` feeds
        zero rows instead: how a user unknown to the tables but with this history is served."""
        index = np.arange(len(self.user_ids)) if user_index is None else np.asarray(user_index)
        with torch.no_grad():
            user_emb = torch.from_numpy(self.user_rows[index])
            if not use_user_rows:
                user_emb = torch.zeros_like(user_emb)
            query = tower_query(self.tower, user_emb, torch.from_numpy(self.item_rows),
                                torch.from_numpy(self.user_history[index]),
                                decay=self.config.recency_decay)
        return query.numpy()


@dataclass(frozen=True)
class _Sequences:
    """Training events grouped by user (time order kept inside each user).

    items: (N,) item rows; users: (N,) user rows; starts: (N,) position of the first event of
    the same user, so the history of event p is items[max(start, p - H):p].
    """

    items: np.ndarray
    users: np.ndarray
    starts: np.ndarray

    @classmethod
    def build(cls, user_rows: np.ndarray, item_rows: np.ndarray) -> _Sequences:
        order = np.argsort(user_rows, kind="stable")  # input is time-sorted; stable keeps it
        users = user_rows[order]
        return cls(items=item_rows[order], users=users,
                   starts=np.searchsorted(users, users, side="left"))

    def histories(self, positions: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """(B, length) item rows before each position (exclusive), -1 padded on the left."""
        back = positions[:, None] - np.arange(length, 0, -1)[None, :]
        valid = back >= starts[:, None]
        return np.where(valid, self.items[np.clip(back, 0, None)], -1)

    def last_histories(self, n_users: int, length: int) -> np.ndarray:
        """(n_users, length): each user's last ``length`` items; all -1 for users without events."""
        ends = np.searchsorted(self.users, np.arange(n_users), side="right")
        starts = np.searchsorted(self.users, np.arange(n_users), side="left")
        return self.histories(ends, starts, length)


def last_event_times(user_ids: np.ndarray, events: Interactions) -> np.ndarray:
    """(U,) float64: the newest of ``events``' timestamps per user of ``user_ids`` (sorted
    unique, holding every user of ``events``)."""
    out = np.full(len(user_ids), -np.inf)
    np.maximum.at(out, np.searchsorted(user_ids, events.user_ids),
                  events.timestamps.astype(np.float64))
    return out


def _catalogue(train: Interactions, items: Items | None) -> np.ndarray:
    known = train.item_ids if items is None else np.concatenate([items.ids, train.item_ids])
    return np.unique(known)


def _indexed(train: Interactions, items: Items | None
             ) -> tuple[np.ndarray, np.ndarray, _Sequences]:
    """(user ids, catalogue item ids, the events as row sequences per user)."""
    user_ids = np.unique(train.user_ids)
    item_ids = _catalogue(train, items)
    seqs = _Sequences.build(np.searchsorted(user_ids, train.user_ids),
                            np.searchsorted(item_ids, train.item_ids))
    return user_ids, item_ids, seqs


def _linear_tower(dim: int, seed: int) -> UserTower:
    """A pooled tower whose MLP outputs zeros (query = u + h), seeded like make_tower."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = UserTower(dim)
    with torch.no_grad():
        tower.mix[-1].weight.zero_()
        tower.mix[-1].bias.zero_()
    return tower.eval()


def closed_form_key(config: TrainConfig) -> tuple:
    """What a closed-form fit depends on: configs with equal keys share one (fit_closed_form)."""
    return config.ease_l2, config.dim, config.history_len, config.recency_decay


def fit_closed_form(train: Interactions, *, items: Items | None = None,
                    configs: list[TrainConfig], cache: dict | None = None,
                    cooccurrence: bool = True) -> list[TrainedModel]:
    """One closed-form model (exporter.closed_form) per config (method "ease"), in order; the
    EASE fit is shared by configs that differ only in their history weight, also across calls
    on the same ``train`` that pass the same ``cache`` dict. ``cooccurrence``: keep the map of
    items outside the fit (exporter.closed_form.fit_factors; the search's candidates skip it)."""
    if len(train) == 0:
        raise ValueError("train has no interactions")
    user_ids, item_ids, seqs = _indexed(train, items)
    popularity = np.bincount(seqs.items, minlength=len(item_ids)).astype(np.float32)
    fits: dict[tuple, tuple[closed_form.Factors, np.ndarray]] = {} if cache is None else cache
    models = []
    for config in configs:
        if config.method != METHOD_EASE:
            raise ValueError(f"fit_closed_form takes method {METHOD_EASE!r} configs, "
                             f"got {config.method!r}")
        key = closed_form_key(config)
        if key not in fits:
            history = seqs.last_histories(len(user_ids), config.history_len).astype(np.int64)
            fits[key] = (closed_form.fit_factors(
                seqs.users, seqs.items, (len(user_ids), len(item_ids)), l2=config.ease_l2,
                dim=config.dim, history=history, decay=config.recency_decay,
                cooccurrence=cooccurrence), history)
        factors, history = fits[key]
        user_rows, item_rows, cooc = closed_form.served_rows(factors, config.history_weight)
        user_cooc = None
        if cooc is not None:  # x_u M over each user's whole history (updater.cooccurrence)
            matrix = closed_form.binary_matrix(seqs.users, seqs.items,
                                               (len(user_ids), len(item_ids)))
            user_cooc = np.asarray(matrix @ cooc, dtype=np.float32)
        models.append(TrainedModel(
            user_ids=user_ids.astype(np.int64), item_ids=item_ids.astype(np.int64),
            user_rows=user_rows, item_rows=item_rows, user_history=history,
            item_popularity=popularity.copy(), item_cooccurrence=cooc,
            user_cooccurrence=user_cooc,
            tower=_linear_tower(config.dim, config.seed), config=config,
            user_last_at=last_event_times(user_ids, train)))
    return models


class _Negatives:
    """Sampled negatives for the sampled softmax, drawn in proportion to the training window's
    item frequency, and their logQ correction.

    With n draws from q, each sampled logit s_i is corrected to s_i - log(n q(i)) (log of its
    expected count), so the sampled softmax estimates the full one (Bengio & Senecal 2008; Yi et
    al. 2019, "sampling-bias-corrected"); the positive is always in the softmax, uncorrected,
    and a draw equal to the target is masked (an accidental hit). Frequency, not uniform: the
    full softmax's normaliser is dominated by popular items, which uniform draws rarely hit, so
    the frequency proposal's estimate is the closer one. Measured with the same seed and epochs
    (sampled softmax on; recall@10 on the 80/20 time split): MovieTweetings (11k items, 2048
    negatives) pooled 0.070 -> 0.080, sequence 0.093 -> 0.099; synthetic with 256 negatives
    pooled 0.206 -> 0.213 (the full softmax: 0.221).
    """

    def __init__(self, counts: np.ndarray, n: int):
        probs = np.asarray(counts, dtype=np.float64) + FREQUENCY_SMOOTHING
        self.n = n
        self.probs = torch.from_numpy(probs / probs.sum())
        self.log_expected = torch.log(n * self.probs).float()

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) item rows drawn with replacement, and the log(n q(i)) to subtract from their
        logits."""
        drawn = torch.multinomial(self.probs, self.n, replacement=True, generator=generator)
        return drawn, self.log_expected[drawn]


def _batch_loss(user_table: nn.Embedding, item_table: nn.Embedding, tower: Tower,
                users: torch.Tensor, targets: torch.Tensor, history: torch.Tensor,
                config: TrainConfig, generator: torch.Generator, sampler: _Negatives
                ) -> torch.Tensor:
    """Softmax cross-entropy of each target item against the catalogue (or sampled negatives)."""
    user_emb = user_table(users)
    if config.user_dropout > 0:
        keep = torch.rand(users.shape[0], 1, generator=generator) >= config.user_dropout
        user_emb = user_emb * keep
    query = tower_query(tower, user_emb, item_table.weight, history, decay=config.recency_decay)
    n_items = item_table.num_embeddings
    if config.negatives >= n_items:
        logits = query @ item_table.weight.T
        loss = nn.functional.cross_entropy(logits, targets)
        touched_items = item_table.weight
    else:
        negatives, log_expected = sampler.sample(generator)
        target_rows = item_table(targets)
        positive = (query * target_rows).sum(1, keepdim=True)
        negative = query @ item_table(negatives).T - log_expected  # the logQ correction
        negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
        logits = torch.cat([positive, negative], dim=1)
        loss = nn.functional.cross_entropy(logits, torch.zeros_like(targets))
        touched_items = target_rows
    if config.l2 > 0:
        loss = loss + config.l2 * (user_emb.square().sum(1).mean()
                                   + touched_items.square().sum(1).mean())
    return loss


def train_base_model(train: Interactions, *, items: Items | None = None,
                     config: TrainConfig = TrainConfig(), progress: bool = True,
                     on_epoch: Callable[[int, TrainedModel], bool] | None = None) -> TrainedModel:
    """Train user rows, item rows and the user tower on time-sorted training interactions.

    Each event is one example: (its user, its item, the user's previous ``history_len`` items).
    The catalogue is every item of ``items`` plus every item seen in ``train``; users are those
    seen in ``train``. Deterministic for ``config.seed`` (torch's global RNG is left untouched).
    ``on_epoch(epoch, model)``, if given, sees a copy of the model after each epoch (1-based)
    and returns False to stop training there (early stopping, exporter.search).
    """
    if len(train) == 0:
        raise ValueError("train has no interactions")
    if config.method == METHOD_EASE:
        return fit_closed_form(train, items=items, configs=[config])[0]
    started = time.perf_counter()
    user_ids, item_ids, seqs = _indexed(train, items)
    n_events, history_len = len(seqs.items), config.history_len

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        user_table = nn.Embedding(len(user_ids), config.dim)
        item_table = nn.Embedding(len(item_ids), config.dim)
        nn.init.normal_(user_table.weight, std=INIT_STD)
        nn.init.normal_(item_table.weight, std=INIT_STD)
        tower = make_tower(config)
    params = [*user_table.parameters(), *item_table.parameters(), *tower.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    sampler = _Negatives(np.bincount(seqs.items, minlength=len(item_ids)), config.negatives)

    def _snapshot() -> TrainedModel:
        """The model as trained so far, its tables and tower copied (training goes on)."""
        frozen = copy.deepcopy(tower)  # not a new tower: its init would draw global RNG
        return TrainedModel(
            user_ids=user_ids.astype(np.int64),
            item_ids=item_ids.astype(np.int64),
            user_rows=user_table.weight.detach().numpy().astype(np.float32, copy=True),
            item_rows=item_table.weight.detach().numpy().astype(np.float32, copy=True),
            user_history=seqs.last_histories(len(user_ids), history_len).astype(np.int64),
            item_popularity=np.bincount(seqs.items, minlength=len(item_ids)).astype(np.float32),
            tower=frozen.eval(),
            config=config,
            user_last_at=last_event_times(user_ids, train),
        )

    n_batches = -(-n_events // config.batch_size)
    bar = tqdm(total=config.epochs * n_batches, desc="train", unit="batch", disable=not progress)
    # the sequence tower's dropout draws torch's global RNG (nn.Dropout takes no generator):
    # seeded here and restored after, so training stays deterministic and the caller's RNG intact
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for epoch in range(config.epochs):
            order = torch.randperm(n_events, generator=generator).numpy()
            total = 0.0
            for b in range(n_batches):
                positions = order[b * config.batch_size:(b + 1) * config.batch_size]
                history = seqs.histories(positions, seqs.starts[positions], history_len)
                loss = _batch_loss(user_table, item_table, tower,
                                   torch.from_numpy(seqs.users[positions]),
                                   torch.from_numpy(seqs.items[positions]),
                                   torch.from_numpy(history), config, generator, sampler)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
                bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / n_batches:.4f}")
            log.debug("epoch %d: mean loss %.4f", epoch + 1, total / n_batches)
            if on_epoch is not None and not on_epoch(epoch + 1, _snapshot()):
                break
    bar.close()
    log.info("trained %d users x %d items on %d events in %.1f s", len(user_ids), len(item_ids),
             n_events, time.perf_counter() - started)
    return _snapshot()


__all__ = [
    "TrainConfig", "TrainedModel", "closed_form_key", "fit_closed_form", "last_event_times",
    "make_tower", "train_base_model",
]
