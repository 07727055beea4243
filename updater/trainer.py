"""Sparse fine-tuning of embedding rows from feedback, one event at a time, in log order.

Per event only the touched rows move: the user's row (by default only a row the build fitted,
``user_fitted``: `TrainerConfig.user_steps`), the event's item row and a few sampled negative
item rows. A user the build did not fit takes no steps; their row is made from their history at
the scale the deployment's own traffic chose (updater.new_user_rows; 0: served from their
history alone). The query is the version's frozen user tower applied to the user
row and the stored history (recency-pooled, or the last L rows for a sequence tower), exactly as
serving computes it; the loss is BPR of the event item against the negatives, signed by the event's
label (a skip wants the negatives above the item). Rows step with row-wise Adagrad (one
accumulator per row, the mean squared gradient, as FBGEMM's rowwise_adagrad), each row's step
clipped to ``max_step`` in L2 norm, so one event cannot throw a row far. A positive event
appends its item to the user's stored history (most recent last) and counts towards the item's
popularity; with a popularity half-life (the version's meta) also towards its trend count, by
its own timestamp (model_repository.scoring); `tables()` settles the trend counts to the newest
event's time, so each version's prior ranks by what is popular as of its last event.

In a closed-form version an item outside the fit (new, or titled without training events)
takes its row from what its users' histories co-occur with (updater.cooccurrence). Young rows
may fold in instead of stepping (``TrainerConfig.fold_in_events`` N > 0; off by default, it
cost replay recall on every log: updater/settings.py): an item with fewer than N positive
events takes the running mean of its users' queries, scaled to an established row's length
(`fold_in`). With ``fold_in_users`` (off: it hurt the ml-100k replay) a user with at most N
history items takes the scaled mean of those items' rows (`fold_in_user`).

Negatives hash (seed, event offset, draw) (updater.negatives): replaying the same events from the
same tables gives the same tables (crash recovery relies on it). Gradients are written out in
numpy (updater.tower_grads). Tables have headroom (capacity doubles; `tables()` hands out views
with the real row counts); tables it does not train are carried into every version unchanged.
"""

from __future__ import annotations

import logging

import numpy as np

from model_repository import retrieve_schema as schema
from model_repository.pooling import DEFAULT_RECENCY_DECAY
from model_repository.scoring import (
    MAX_TREND_EXPONENT,
    popularity_prior,
    session_weights,
    settle_trend,
    trend_weights,
)
from model_repository.sequence_tower import NumpySequenceTower
from model_repository.tower import NumpyTower
from updater.cooccurrence import CooccurrenceRows
from updater.events import Event, label
from updater.grown import Grown
from updater.negatives import draw_negatives, draw_negatives_many
from updater.new_user_rows import CHECKS_PER_BATCH, K, NewUserRowChoice, rows_from_histories
from updater.settings import TrainerConfig
from updater.tower_grads import tower_grad

log = logging.getLogger(__name__)

ADAGRAD_EPS = 1e-8
NEW_ITEM_STD = 0.05  # exporter.train.INIT_STD: a new item starts like an untrained one
FOLD_IN_SAMPLE = 256  # users whose queries set the fold-in scale
CHECK_CHUNK = 8  # new-user checks scored in one product (a few MB at 100,000 items)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


class SparseTrainer:
    """Trainer state: the retrieve tables of one version plus what changed since it."""

    def __init__(self, tables: dict[str, np.ndarray], tower: NumpyTower | NumpySequenceTower, *,
                 recency_decay: float = DEFAULT_RECENCY_DECAY, popularity_half_life_s: float = 0.0,
                 config: TrainerConfig | None = None, meta: schema.RetrieveMeta | None = None):
        """``tower``: the version's user tower, frozen (only rows train); ``recency_decay``:
        the pooled tower's (a sequence tower does not pool); ``popularity_half_life_s``: the
        version's (meta), > 0 to keep its trend counts; ``meta``: the version's, for its
        popularity prior when new users' rows are checked (None: scored without a prior)."""
        self._tower = tower_grad(tower, recency_decay)
        self.meta = meta
        self.decay = recency_decay
        self.half_life_s = float(popularity_half_life_s)
        self.item_tables = tuple(name for name in schema.ITEM_TABLES
                                 if name != schema.ITEM_TREND or self.half_life_s > 0)
        self.config = config or TrainerConfig()
        self.reset(tables)

    def reset(self, tables: dict[str, np.ndarray]) -> None:
        """Start over from a version's tables (adagrad accumulators and trend counts default to
        zero, newest-event times to -inf: none)."""
        n_items = len(tables[schema.ITEM_IDS])
        # a build's version marks no fitted rows: those it fitted are its non-zero ones
        fitted = np.any(np.asarray(tables[schema.USER_ROWS]) != 0, axis=1).astype(np.uint8)
        zeros = {schema.USER_ADAGRAD: np.zeros(len(tables[schema.USER_IDS]), np.float32),
                 schema.USER_LAST_AT: np.full(len(tables[schema.USER_IDS]), -np.inf),
                 schema.USER_FITTED: fitted,
                 schema.ITEM_ADAGRAD: np.zeros(n_items, np.float32),
                 schema.ITEM_TREND: np.zeros(n_items, np.float32)}
        # the optional per-user tables this version has (the closed form's co-occurrence sums)
        self.user_tables = (*schema.USER_TABLES,
                            *(name for name in schema.OPTIONAL_USER_TABLES if name in tables))
        self.t = {name: Grown(tables[name] if name in tables else zeros[name],
                               schema.EMPTY_ROW_FILL[name])
                  for name in (*self.user_tables, *self.item_tables)}
        history_len = tables[schema.USER_HISTORY].shape[1]
        trained = (*self.t, schema.NEW_USER_ROW_SCALE,
                   *((schema.TREND_AS_OF,) if self.half_life_s > 0 else ()))
        # not trained here, but part of the version: passed through unchanged (hard-linked)
        self.fixed = {name: np.asarray(t) for name, t in tables.items() if name not in trained}
        self.cooccurrence = CooccurrenceRows(self.fixed.get(schema.ITEM_COOCCURRENCE),
                                             fitted_too=self.config.cooccurrence_fitted)
        # the time the trend counts are as of, and the newest event time counted since
        self.trend_as_of = (float(tables[schema.TREND_AS_OF][0])
                            if schema.TREND_AS_OF in tables else 0.0)
        self.trend_latest = self.trend_as_of
        self.history_len = history_len
        self.user_index = {int(u): r for r, u in enumerate(self.t[schema.USER_IDS].live)}
        self.item_index = {int(i): r for r, i in enumerate(self.t[schema.ITEM_IDS].live)}
        self.fold_in_scale = self._fold_in_scale()
        self.user_fold_in_scale = self._user_fold_in_scale()
        served = (float(tables[schema.NEW_USER_ROW_SCALE][0])
                  if schema.NEW_USER_ROW_SCALE in tables else 0.0)
        self.new_user_rows = NewUserRowChoice.of(self.config.new_user_rows, scale=served)
        fitted_rows = self.t[schema.USER_ROWS].live[self.t[schema.USER_FITTED].live > 0]
        # r of updater.new_user_rows: how long a fitted row is
        self.fitted_row_norm = (float(np.median(np.linalg.norm(fitted_rows, axis=1)))
                                if len(fitted_rows) else 0.0)
        self.clear_changes()
        if self.config.row_updates and self.new_user_rows.scale != served:
            self.set_new_user_rows()  # a fixed mode other than what the version served

    def _history_mean(self, user_row: int) -> np.ndarray | None:
        history = self.t[schema.USER_HISTORY].data[user_row]
        history = history[history >= 0]
        return self.t[schema.ITEM_ROWS].data[history].mean(0) if history.size else None

    def _user_fold_in_scale(self) -> float:
        """rho_u of `fold_in_user`: over (up to) FOLD_IN_SAMPLE users with at least
        ``fold_in_events`` stored history items, the median norm of their rows over the median
        norm of their history's mean item row. 0 (off) when there are none."""
        n = self.config.fold_in_events
        if not n or not self.n_users or not self.config.fold_in_users:
            return 0.0
        counts = (self.t[schema.USER_HISTORY].live >= 0).sum(1)
        rows = np.flatnonzero(counts >= n)
        rows = rows[np.unique(np.linspace(0, len(rows) - 1, FOLD_IN_SAMPLE).astype(np.int64))] \
            if len(rows) else rows
        means = [self._history_mean(int(r)) for r in rows]
        user_norms = np.linalg.norm(self.t[schema.USER_ROWS].data[rows], axis=1)
        mean_norms = np.array([np.linalg.norm(m) for m in means])
        if not len(rows) or not (mean_norms > 0).any():
            return 0.0
        return float(np.median(user_norms) / np.median(mean_norms[mean_norms > 0]))

    def _fold_in_scale(self) -> float:
        """rho of `fold_in`: the median norm of the item rows with at least ``fold_in_events``
        events over the median norm of the queries of (up to) FOLD_IN_SAMPLE users spread over
        the table, so a folded-in row is as long as an established one. 1 when there are none."""
        counts = self.t[schema.ITEM_POPULARITY].live
        warm = self.t[schema.ITEM_ROWS].live[counts >= max(self.config.fold_in_events, 1)]
        if not len(warm) or not self.n_users or not self.config.fold_in_events:
            return 1.0
        rows = np.unique(np.linspace(0, self.n_users - 1, FOLD_IN_SAMPLE).astype(np.int64))
        queries = np.linalg.norm(np.stack([self.query(int(r))[0] for r in rows]), axis=1)
        if not (queries > 0).any():
            return 1.0
        return float(np.median(np.linalg.norm(warm, axis=1)) / np.median(queries[queries > 0]))

    def clear_changes(self) -> None:
        """Forget what changed: called once a version holding the current tables is published."""
        self.changed: dict[str, set[int]] = {name: set() for name in self.t}
        self.rewritten: set[str] = set()  # tables whose rows moved (a user forgotten)

    @property
    def n_users(self) -> int:
        return self.t[schema.USER_IDS].n

    @property
    def n_items(self) -> int:
        return self.t[schema.ITEM_IDS].n

    def tables(self) -> dict[str, np.ndarray]:
        """Every table of the version by name: the live trained ones (views: copy them if the
        trainer keeps running meanwhile) and the fixed ones it carries. The trend counts are
        settled to the newest event's time first."""
        trained = {name: table.live for name, table in self.t.items()}
        trained[schema.NEW_USER_ROW_SCALE] = np.array([self.new_user_rows.scale], np.float32)
        if self.half_life_s > 0:
            self.settle_trend()
            trained[schema.TREND_AS_OF] = np.array([self.trend_as_of], np.float64)
        return {**self.fixed, **trained}

    def settle_trend(self) -> None:
        """Decay every trend count to the newest event time counted (all rows change)."""
        if self.trend_latest > self.trend_as_of:
            settle_trend(self.t[schema.ITEM_TREND].live, as_of=self.trend_as_of,
                         to=self.trend_latest, half_life_s=self.half_life_s)
            self.trend_as_of = self.trend_latest
            self.rewritten.add(schema.ITEM_TREND)

    def _count_trend(self, item_row: int, timestamp: float) -> None:
        """One positive event at ``timestamp`` adds its trend weight to the item's count,
        relative to trend_as_of (settled first when the weight would grow past 2 ** 30)."""
        self.trend_latest = max(self.trend_latest, timestamp)
        if (timestamp - self.trend_as_of) / self.half_life_s > MAX_TREND_EXPONENT / 2:
            self.settle_trend()
        weight = trend_weights(np.array([timestamp]), as_of=self.trend_as_of,
                               half_life_s=self.half_life_s)[0]
        self.t[schema.ITEM_TREND].data[item_row] += np.float32(weight)
        self.changed[schema.ITEM_TREND].add(item_row)

    def changed_rows(self) -> dict[str, np.ndarray]:
        """Rows changed since the last clear_changes, for versions.write_version (tables whose
        rows moved are left out, so they are written in full)."""
        changed = {name: np.fromiter(sorted(rows), dtype=np.int64, count=len(rows))
                   for name, rows in self.changed.items() if name not in self.rewritten}
        return {**{name: np.zeros(0, np.int64) for name in self.fixed}, **changed}

    def has_changes(self) -> bool:
        return bool(self.rewritten) or any(self.changed.values())

    def _user_row(self, user_id: int) -> int:
        row = self.user_index.get(user_id)
        if row is None:
            dim = self.t[schema.USER_ROWS].data.shape[1]
            row = self.t[schema.USER_IDS].append(user_id)
            # a new user starts with a zero row: served from history alone, as trained for
            # (exporter.train's user_dropout)
            self.t[schema.USER_ROWS].append(np.zeros(dim, np.float32))
            self.t[schema.USER_HISTORY].append(np.full(self.history_len, -1, np.int64))
            self.t[schema.USER_ADAGRAD].append(0.0)
            self.t[schema.USER_LAST_AT].append(-np.inf)
            self.t[schema.USER_FITTED].append(0)
            if schema.USER_COOCCURRENCE in self.t:
                self.t[schema.USER_COOCCURRENCE].append(np.zeros(dim, np.float32))
            self.user_index[user_id] = row
            for name in self.user_tables:
                self.changed[name].add(row)
        return row

    def _item_row(self, item_id: int) -> int:
        row = self.item_index.get(item_id)
        if row is None:
            dim = self.t[schema.ITEM_ROWS].data.shape[1]
            init = np.random.default_rng([self.config.seed, item_id]).normal(0, NEW_ITEM_STD, dim)
            row = self._append_item(item_id, init.astype(np.float32))
        return row

    def _append_item(self, item_id: int, values: np.ndarray) -> int:
        """A new item's row in every item table: its id and embedding, the empty fill (no
        events, a fresh accumulator) in the others; all marked changed."""
        row = self.t[schema.ITEM_IDS].append(item_id)
        self.t[schema.ITEM_ROWS].append(values)
        for name in self.item_tables:
            if name not in (schema.ITEM_IDS, schema.ITEM_ROWS):
                self.t[name].append(schema.EMPTY_ROW_FILL[name])
            self.changed[name].add(row)
        self.item_index[item_id] = row
        return row

    def add_items(self, item_ids: np.ndarray, rows: np.ndarray) -> None:
        """Append new items (ids (N,), rows (N, d)) with no popularity and a fresh accumulator:
        from here on they train like any other item. Raises ValueError, adding nothing, when an
        id is known already or repeats."""
        item_ids = np.asarray(item_ids, np.int64)
        known = [int(i) for i in item_ids if int(i) in self.item_index]
        if known:
            raise ValueError(f"item ids exist already: {known[:10]}")
        if np.unique(item_ids).size != item_ids.size:
            raise ValueError("item ids repeat")
        for item_id, values in zip(item_ids.tolist(), np.asarray(rows, np.float32)):
            self._append_item(item_id, values)

    def drop_last_items(self, n: int) -> None:
        """Undo :meth:`add_items` of the last ``n`` items (their publish failed); nothing else may
        have touched them since."""
        keep = self.n_items - n
        for item_id in self.t[schema.ITEM_IDS].live[keep:].tolist():
            del self.item_index[int(item_id)]
        for name in self.item_tables:
            self.t[name].truncate(keep)
            self.changed[name] -= set(range(keep, keep + n))

    def query(self, user_row: int) -> tuple[np.ndarray, object]:
        """(query (d,), what `user_grad` needs) from the user's row and stored history, as
        serving computes the query; the row and history are read, not copied."""
        history = self.t[schema.USER_HISTORY].data[user_row]
        return self._tower.forward(self.t[schema.USER_ROWS].data[user_row],
                                   self.t[schema.ITEM_ROWS].data, history[history >= 0])

    def _adagrad_step(self, table: str, acc_table: str, rows: np.ndarray, grads: np.ndarray) -> None:
        """``rows`` distinct; ``grads`` (len(rows), d) float64."""
        self._adagrad_steps(((table, acc_table, rows),), grads)

    def _adagrad_steps(self, parts, grads: np.ndarray) -> None:
        """One row-wise Adagrad step for the rows of several tables in one pass (per event: the
        user row and the item rows; numpy's per-call cost is most of a step this small).
        ``parts``: (table, its accumulator table, distinct rows) each; ``grads`` (total rows,
        d) float64, the parts' rows in order. Row by row the same arithmetic as one table."""
        accs = [self.t[acc_table].data[rows] for _, acc_table, rows in parts]
        acc = accs[0] if len(accs) == 1 else np.concatenate(accs)
        accumulated = acc + np.einsum("ij,ij->i", grads, grads) / grads.shape[1]
        step = grads * (self.config.lr / (np.sqrt(accumulated) + ADAGRAD_EPS))[:, None]
        norms = np.sqrt(np.einsum("ij,ij->i", step, step))
        clip = np.minimum(1.0, self.config.max_step / np.maximum(norms, 1e-12))  # per-event clip
        moves = (step * clip[:, None]).astype(np.float32)
        start = 0
        for table, acc_table, rows in parts:
            end = start + len(rows)
            self.t[acc_table].data[rows] = accumulated[start:end]
            self.t[table].data[rows] -= moves[start:end]
            touched = rows.tolist()
            self.changed[table].update(touched)
            self.changed[acc_table].update(touched)
            start = end

    def apply(self, event: Event) -> None:
        """Train on one event and update the user's history and the item's popularity."""
        user_row = self._user_row(event.user_id)
        item_row = self._item_row(event.item_id)
        weight = label(event, skip_weight=self.config.skip_weight)
        if weight > 0 and self._checks_new_user(user_row, item_row):
            self._check_new_user_rows([self._check_of(event, user_row, item_row)])
        if self.config.row_updates and weight != 0 and self.n_items > 1:
            self._train_step(event, user_row, item_row, weight)
        if weight > 0 and self.t[schema.ITEM_POPULARITY].data[item_row] < self.config.fold_in_events:
            self.fold_in(user_row, item_row)
        if weight > 0:
            self._record_positive(event, user_row, item_row)

    def _record_positive(self, event: Event, user_row: int, item_row: int, *,
                         trend: bool = True) -> None:
        """A positive event joins the user's history and counts towards the item's popularity
        (``trend``: and its trend count; `apply_many` counts a batch's at once); an item outside
        the closed-form fit first takes what the history co-occurs with (updater.cooccurrence)."""
        history = self.t[schema.USER_HISTORY].data[user_row]
        sums = (self.t.get(schema.USER_COOCCURRENCE)
                if self.config.whole_history_cooccurrence else None)
        if not self.config.row_updates:
            pass
        elif sums is not None:  # the user's whole history, as EASE counts co-occurrences
            if self.cooccurrence.learn_whole(self.t[schema.ITEM_ROWS].data, item_row,
                                             sums.data[user_row], history):
                self.changed[schema.ITEM_ROWS].add(item_row)
            self.changed[schema.USER_COOCCURRENCE].add(user_row)
        elif self.cooccurrence.learn(self.t[schema.ITEM_ROWS].data, item_row, history):
            self.changed[schema.ITEM_ROWS].add(item_row)
        history[:-1] = history[1:].copy()
        history[-1] = item_row
        self.changed[schema.USER_HISTORY].add(user_row)
        last_at = self.t[schema.USER_LAST_AT].data
        last_at[user_row] = max(last_at[user_row], event.timestamp)
        self.changed[schema.USER_LAST_AT].add(user_row)
        if self.user_fold_in_scale and (history >= 0).sum() <= self.config.fold_in_events:
            self.fold_in_user(user_row)
        elif (self.config.row_updates and not self.t[schema.USER_FITTED].data[user_row]
              and self.new_user_rows.scale):
            self._set_new_user_rows(np.array([user_row]))
        if not self.config.count_updates:
            return
        self.t[schema.ITEM_POPULARITY].data[item_row] += 1.0
        self.changed[schema.ITEM_POPULARITY].add(item_row)
        if self.half_life_s > 0 and trend:
            self._count_trend(item_row, event.timestamp)

    def _count_trends(self, item_rows: list[int], timestamps: list[float]) -> None:
        """`_count_trend` for many positive events at once."""
        newest = max(timestamps)
        if (newest - self.trend_as_of) / self.half_life_s > MAX_TREND_EXPONENT / 2:
            self.trend_latest = max(self.trend_latest, newest)
            self.settle_trend()
        self.trend_latest = max(self.trend_latest, newest)
        weights = trend_weights(np.array(timestamps), as_of=self.trend_as_of, half_life_s=self.half_life_s)
        rows, inverse = np.unique(np.array(item_rows, np.int64), return_inverse=True)
        self.t[schema.ITEM_TREND].data[rows] += np.bincount(
            inverse, weights=weights.astype(np.float32)).astype(np.float32)
        self.changed[schema.ITEM_TREND].update(item_rows)

    def apply_many(self, events) -> None:
        """Train on events in log order as one minibatch (what the engine does with each batch it
        reads). Each event's gradients are computed, in one vectorised pass, from the rows as they
        were before the batch (with the user's history as of that event); then every row takes
        its steps in event order, each a row-wise Adagrad step with its own accumulator update
        and clip, as `apply` takes them. So a batch whose events share no row ends where `apply`
        one by one does (to float rounding), and one that shares rows differs only in that a
        later event's gradient does not see an earlier one's step (tests/updater/test_trainer.py).
        Histories, popularity and trend counts move event by event as in `apply`. With the
        item fold-in on, each event goes through `apply`."""
        events = list(events)
        if self.config.fold_in_events or len(events) < 2:
            for event in events:
                self.apply(event)
            return
        steps = []  # (user row, item row, weight, offset, items then, history then)
        trend_rows, trend_times = [], []
        checks = []  # new users' positive events, before each is learned
        for event in events:
            user_row = self._user_row(event.user_id)
            item_row = self._item_row(event.item_id)
            weight = label(event, skip_weight=self.config.skip_weight)
            if weight > 0 and self._checks_new_user(user_row, item_row):
                checks.append(self._check_of(event, user_row, item_row))
            if self.config.row_updates and weight != 0 and self.n_items > 1:
                history = self.t[schema.USER_HISTORY].data[user_row]
                steps.append((user_row, item_row, weight, event.offset, self.n_items,
                              history[history >= 0]))  # a copy (boolean indexing)
            if weight > 0:
                self._record_positive(event, user_row, item_row, trend=False)
                trend_rows.append(item_row)
                trend_times.append(event.timestamp)
        if checks:
            spaced = np.unique(np.linspace(0, len(checks) - 1, CHECKS_PER_BATCH).astype(np.int64))
            self._check_new_user_rows([checks[i] for i in spaced])
        if trend_rows and self.half_life_s > 0 and self.config.count_updates:
            self._count_trends(trend_rows, trend_times)
        if steps:
            self._train_steps(steps)

    def _train_steps(self, steps: list) -> None:
        """`_train_step` for many events at once (`apply_many`)."""
        event_items = np.array([step[1] for step in steps], np.int64)
        negatives = draw_negatives_many(self.config.seed, np.array([step[3] for step in steps]),
                                        self.config.negatives,
                                        np.array([step[4] for step in steps]), event_items)
        candidates = np.concatenate([event_items[:, None], negatives], axis=1)
        valid = candidates >= 0
        user_rows = np.array([step[0] for step in steps], np.int64)
        weights = np.array([step[2] for step in steps], np.float32)
        item_table = self.t[schema.ITEM_ROWS].data
        items = item_table[np.maximum(candidates, 0)]  # (T, 1 + n, d)
        queries, context = self._tower.forward_many(self.t[schema.USER_ROWS].data[user_rows],
                                                    item_table, [step[5] for step in steps])
        scores = np.einsum("tjd,td->tj", items, queries)
        sign = np.where(weights > 0, np.float32(1), np.float32(-1))
        margin = sign[:, None] * (scores[:, :1] - scores[:, 1:])
        counts = valid[:, 1:].sum(1).astype(np.float32)
        margin_grad = np.where(valid[:, 1:], -np.abs(weights)[:, None] * _sigmoid(-margin)
                               / counts[:, None], np.float32(0))
        score_grad = np.concatenate([(sign * margin_grad.sum(1))[:, None],
                                     -sign[:, None] * margin_grad], axis=1)
        item_grads = score_grad[..., None] * queries[:, None, :]
        user_grads = self._tower.user_grad_many(np.einsum("tjd,tj->td", items, score_grad), context)
        stepped = self._stepping_users(user_rows)
        if stepped.any():
            self._adagrad_in_order(schema.USER_ROWS, schema.USER_ADAGRAD, user_rows[stepped],
                                   user_grads[stepped])
        self._adagrad_in_order(schema.ITEM_ROWS, schema.ITEM_ADAGRAD, candidates[valid],
                               item_grads[valid].astype(np.float64))

    def _adagrad_in_order(self, table: str, acc_table: str, rows: np.ndarray, grads: np.ndarray
                          ) -> None:
        """Row-wise Adagrad steps taken in order, rows may repeat: the m-th step of a row sees
        its accumulator after the earlier m - 1 (a cumulative sum per row), and is clipped on
        its own, as `_adagrad_steps` takes one step after another. ``grads`` float64."""
        squares = np.einsum("ij,ij->i", grads, grads) / grads.shape[1]
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        first = np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]
        group = np.cumsum(first) - 1
        running = np.cumsum(squares[order])
        before_group = (running - squares[order])[first]
        accumulated = np.empty_like(running)
        accumulated[order] = (self.t[acc_table].data[sorted_rows].astype(np.float64)
                              + running - before_group[group])
        step = grads * (self.config.lr / (np.sqrt(accumulated) + ADAGRAD_EPS))[:, None]
        norms = np.sqrt(np.einsum("ij,ij->i", step, step))
        clip = np.minimum(1.0, self.config.max_step / np.maximum(norms, 1e-12))
        moves = (step * clip[:, None]).astype(np.float32)[order]
        distinct = sorted_rows[first]
        # each row's moves summed in step order (float32, as the steps would land one by one,
        # to rounding), then one subtraction per row: ufunc.at costs 10x more
        self.t[table].data[distinct] -= np.add.reduceat(moves, np.flatnonzero(first), axis=0)
        last = np.r_[first[1:], True]  # each row's final accumulator
        self.t[acc_table].data[sorted_rows[last]] = accumulated[order][last]
        touched = distinct.tolist()
        self.changed[table].update(touched)
        self.changed[acc_table].update(touched)

    def fold_in(self, user_row: int, item_row: int) -> None:
        """An item with n < fold_in_events positive events so far takes the running mean of its
        users' queries, scaled by rho: row <- row + (rho * query - row) / (n + 1), so after its
        first event it is rho * that user's query (whatever it started from: a random row, a
        projected title) and it tracks who takes it until the gradient steps take over."""
        count = float(self.t[schema.ITEM_POPULARITY].data[item_row])
        query, _ = self.query(user_row)
        row = self.t[schema.ITEM_ROWS].data[item_row]
        row += ((self.fold_in_scale * query - row) / (count + 1.0)).astype(np.float32)
        self.changed[schema.ITEM_ROWS].add(item_row)

    def fold_in_user(self, user_row: int) -> None:
        """A user with at most fold_in_events stored history items takes rho_u times the mean
        of their history's item rows as their row: a new user's row from what they took (for
        the closed form, exporter.closed_form, exactly its unit(x_u Q) direction)."""
        self.t[schema.USER_ROWS].data[user_row] = (
            self.user_fold_in_scale * self._history_mean(user_row)).astype(np.float32)
        self.changed[schema.USER_ROWS].add(user_row)

    def _train_step(self, event: Event, user_row: int, item_row: int, weight: float) -> None:
        negatives = draw_negatives(self.config.seed, event.offset, self.config.negatives,
                                   self.n_items, item_row)
        item_rows = np.concatenate([[item_row], negatives])
        items = self.t[schema.ITEM_ROWS].data[item_rows]  # a copy (fancy indexing)
        query, context = self.query(user_row)
        scores = items @ query
        sign = 1.0 if weight > 0 else -1.0
        margin = sign * (scores[0] - scores[1:])
        # loss = -|w| * mean(logsigmoid(margin)); d logsigmoid(x)/dx = sigmoid(-x)
        margin_grad = -abs(weight) * _sigmoid(-margin) / margin.size
        score_grad = np.concatenate([[sign * margin_grad.sum()], -sign * margin_grad])
        item_grads = score_grad[:, None] * query[None, :]
        user_grad = self._tower.user_grad(items.T @ score_grad, context)
        parts = ((schema.ITEM_ROWS, schema.ITEM_ADAGRAD, item_rows),)
        grads = item_grads
        if self._stepping_users(np.array([user_row]))[0]:
            parts = ((schema.USER_ROWS, schema.USER_ADAGRAD, np.array([user_row])), *parts)
            grads = np.concatenate([user_grad[None], item_grads])
        self._adagrad_steps(parts, grads.astype(np.float64, copy=False))

    def _stepping_users(self, user_rows: np.ndarray) -> np.ndarray:
        """Which of ``user_rows`` take gradient steps (TrainerConfig.user_steps): all, none, or
        "trained", those whose row the build fitted (``user_fitted``)."""
        if self.config.user_steps == "trained":
            return self.t[schema.USER_FITTED].data[user_rows] > 0
        return np.full(len(user_rows), self.config.user_steps == "all")

    def _checks_new_user(self, user_row: int, item_row: int) -> bool:
        """Whether a positive event is checked for the new-user row choice: the choice is
        open, the user is one the build did not fit, has a history, and the item is not in it
        (serving excludes what the user has: nothing to rank)."""
        if not (self.new_user_rows.deciding and self.config.row_updates and self.fitted_row_norm
                and not self.t[schema.USER_FITTED].data[user_row]):
            return False
        history = self.t[schema.USER_HISTORY].data[user_row]
        return bool((history >= 0).any()) and item_row not in history

    def _check_of(self, event: Event, user_row: int, item_row: int) -> tuple:
        history = self.t[schema.USER_HISTORY].data[user_row]
        age = event.timestamp - self.t[schema.USER_LAST_AT].data[user_row]
        return item_row, history[history >= 0].copy(), age

    def _check_new_user_rows(self, checks: list[tuple]) -> None:
        """Score each candidate new-user row on these events (item row, history rows before it,
        the history's age at it) as serving would, count who put the item in its top K, and
        give every new user the served candidate's row when the choice moves
        (updater.new_user_rows)."""
        choice = self.new_user_rows
        items = self.t[schema.ITEM_ROWS].live
        meta = self.meta
        prior = None
        if meta is not None and meta.has_prior:
            counts = schema.prior_counts({name: self.t[name].live for name in self.item_tables}
                                         | {schema.TREND_AS_OF: None}, meta)
            prior = popularity_prior(counts, 1.0)
        n = len(choice.candidates)
        for first in range(0, len(checks), CHECK_CHUNK):  # a few events' scores at a time
            chunk = checks[first:first + CHECK_CHUNK]
            histories = np.full((len(chunk), self.history_len), -1, np.int64)
            for row, (_, history, _) in enumerate(chunk):
                histories[row, -history.size:] = history
            units = rows_from_histories(items, histories, scale=1.0, length=self.fitted_row_norm)
            user_rows = (np.array(choice.candidates, np.float32)[None, :, None]
                         * units[:, None, :]).reshape(-1, units.shape[1])
            queries, _ = self._tower.forward_many(
                user_rows, items, [history for _, history, _ in chunk for _ in range(n)])
            scores = (queries @ items.T).reshape(len(chunk), n, -1)
            if prior is not None:
                weights = session_weights(np.array([age for _, _, age in chunk]),
                                          weight=meta.popularity_weight,
                                          session_weight=meta.session_popularity_weight,
                                          session_s=meta.session_s)
                scores += weights[:, None, None] * prior[None, None, :]
            for event_scores, (item_row, history, _) in zip(scores, chunk):
                event_scores[:, history] = -np.inf
                ahead = (event_scores > event_scores[:, [item_row]]).sum(1)
                if choice.observe(ahead < K):
                    self.set_new_user_rows()

    def set_new_user_rows(self) -> None:
        """Every user the build did not fit takes the served candidate's row from their
        stored history (zero at scale 0)."""
        rows = np.flatnonzero(self.t[schema.USER_FITTED].live == 0)
        if len(rows):
            self._set_new_user_rows(rows)

    def _set_new_user_rows(self, rows: np.ndarray) -> None:
        self.t[schema.USER_ROWS].data[rows] = rows_from_histories(
            self.t[schema.ITEM_ROWS].data, self.t[schema.USER_HISTORY].data[rows],
            scale=self.new_user_rows.scale, length=self.fitted_row_norm)
        self.changed[schema.USER_ROWS].update(rows.tolist())

    def forget_user(self, user_id: int) -> bool:
        """Remove a user's row, history and accumulator. Returns False if the user had no row."""
        row = self.user_index.pop(user_id, None)
        if row is None:
            return False
        for name in self.user_tables:
            self.t[name].delete(row)
            self.rewritten.add(name)
        self.user_index = {int(u): r for r, u in enumerate(self.t[schema.USER_IDS].live)}
        return True
