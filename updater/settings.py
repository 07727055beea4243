"""The updater's settings: typed, checked, and free of heavy imports (the CLI reads the defaults)."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass

from updater.events import LABEL_WEIGHTS

# One BLAS thread: the updater's numpy work is per-event vectors, too small to split, and
# OpenBLAS's idle workers spin in sched_yield between calls. Measured on the 2-core VM, single-
# event Feedback.Send calls: 3.2 ms of updater CPU per call with the default (70 % of it that
# spinning), 1.4 ms with one thread. The serving side's python models get the same (processes.py).
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread(env: MutableMapping[str, str] = os.environ) -> None:
    """Set the BLAS thread counts of ``env`` to 1 where they are unset; for the current process
    it works only before numpy is first imported."""
    for name in BLAS_THREAD_VARS:
        env.setdefault(name, "1")


# Publishing: at most every T seconds while events arrive, or after M events, whichever first.
# A data-only publish switches inside the running retrieve (no Triton load), so the wait for the
# next publish is most of the freshness: bench.freshness (2026-12-01, 2 cores) with T = 0.25 s
# gave p50 51-81 ms, p95 240-262 ms (wait up to 250 ms, write 12-15 ms, switch 9-14 ms); the
# goal is p95 < 200 ms, and a publish costs the updater ~30 ms of one core.
DEFAULT_PUBLISH_EVERY_S = 0.1
DEFAULT_PUBLISH_EVERY_EVENTS = 1000
DEFAULT_KEEP_VERSIONS = 5
# Shards of 128 KiB whatever the row width (1024 rows of 32 x fp32, 32768 ids): a changed row
# rewrites its shard, the rest is hard-linked. Fixed rows per shard made the 4-byte-wide tables
# (adagrad) 32x more shards than needed, and per-shard link + manifest work then grew with the
# table: 1e6 rows, 100 changed: 822 ms with 1024 rows per shard (bench/freshness.py, (b)).
DEFAULT_SHARD_KIB = 128
# Training
# bench.quality's prequential replay (2026-12-01, windows of 1,000, closed-form base model, item
# fold-in on; recall@10 of freshrec online): synthetic lr 0.0005 / 0.002 / 0.005 / 0.01 ->
# 0.176 / 0.183 / 0.189 / 0.185 (ALS retrained per window: 0.169); ml-100k 0.002 / 0.005 ->
# 0.193 / 0.194 (recall@50 0.446 / 0.458). (The trained base model of 2026-11 liked 0.002.)
# Re-measured with the prior's half-life and session gate (same protocol): ml-100k 0.002 / 0.005
# / 0.01 -> 0.194 / 0.196 / 0.191, synthetic 0.198 / 0.202 / 0.209: the real log's best stays.
DEFAULT_LR = 0.005
DEFAULT_NEGATIVES = 8
DEFAULT_MAX_STEP = 0.25
# an item with fewer positive events than this folds its users' queries into its row (a running
# mean, SparseTrainer.fold_in) instead of only stepping; 0 turns it off, the default. With 10:
# replay recall@10 synthetic 0.179 -> 0.183, ml-100k 0.194 -> 0.193 (the base model of
# 2026-11-30, before the prior's half-life). With the half-life and session gate
# (docs/results/quality-online.md, "Against the goals": every 4th window of 1,000 scored, one
# base model per log) it costs recall everywhere: off / 10 -> ml-latest-small 2018 (a fifth of
# its items new after the cut) 0.0906 / 0.0799, synthetic 0.2022 / 0.1984, MovieTweetings
# 0.2010 / 0.1991, ml-100k 0.1858 / 0.1854. Likely why (not measured): the trend prior already
# lifts a new item its users take, and a row set to one user's query pulls it towards everyone
# like them.
DEFAULT_FOLD_IN_EVENTS = 0
# and, when turned on (it needs fold_in_events > 0: the history length it applies to), a user
# with at most that many history items takes the scaled mean of their items' rows
# (SparseTrainer.fold_in_user). Off: replay recall@10 at lr 0.005 (closed-form
# base) synthetic 0.189 -> 0.192 with it, but ml-100k 0.194 -> 0.147, where 85 % of replayed
# events are new users acting in long bursts: the row from their first items outweighs the
# recent history they move on with
DEFAULT_FOLD_IN_USERS = False
# Whose rows the gradient steps move (issue 33): "trained", a user the version has a non-zero row
# for (the build fitted them; a new user's row stays zero, served from their history as the build
# trains for: exporter.train's user_dropout), "all" (before 2026-12-07) or "none". The trainer
# replayed in process (windows of 1,000, each version answered by retrieve's scoring code with
# the last 50 items as history; recall@10 against publishing off, 95 % paired bootstrap over
# users; AMD EPYC VM, 2026-12-07; each base set by hand to what bench.quality's search had chosen;
# python -m bench.trainer_replay gives the same numbers on the synthetic log), all / trained /
# none: ml-latest-small 2018 (88 of its 116 replayed users new, in long bursts) x0.981 / x1.023
# (0.999-1.047) / x1.023; synthetic x1.048 / x1.039 (1.022-1.056) / x1.028; ml-100k x1.024 /
# x1.025 / x1.025; MovieTweetings x1.406 / x1.408 / x1.409; ml-latest-small 2016 x1.040 /
# x1.040 / x1.037. A new user's row stepped from a zero start outweighs the recent history they
# move on with (the fold-in of users below, the same story). Real stack: docs/results/
# quality-online.md, "New users served from their history".
# In a closed-form version, every item's row takes the co-occurrence map's rows of the user's
# history at each positive event (updater.cooccurrence), fitted items too: to first order what
# refitting EASE with the event does to the item's column (Dynamic EASE on the changed item only).
# Before 2026-12-07 only items outside the fit did. In process (python -m bench.trainer_replay
# off shipped cooccurrence_fitted=True, recall@10 against publishing off, AMD EPYC VM,
# 2026-12-07), items outside the fit only / every item: synthetic x1.054 / x1.059; ml-latest-small
# 2018 x1.023 / x1.026; ml-latest-small 2016 x1.040 / x1.072 (1.050-1.094); MovieTweetings
# x1.408 / x1.647 (1.598-1.698). ml-100k's base is a trained tower (no map): no change.
DEFAULT_COOCCURRENCE_FITTED = True
# The co-occurrences an event adds are those with the user's whole history (the version's
# user_cooccurrence, x_u M, kept per user), as EASE counts them; before 2026-12-08 the stored
# history stood in for it, the last H = 20 items, while ml-latest-small's users have taken about
# 150 each, and items new after the cut got rows a sixth of a fitted item's norm. Fitted items
# keep the stored history (whole histories for them cost recall: 2016 x1.048 against x1.072).
# In process (python -m bench.trainer_replay off shipped whole_history_cooccurrence=False, AMD
# EPYC VM, 2026-12-08), stored / whole, against publishing off: ml-latest-small 2016 x1.072 /
# x1.095 (1.062-1.129), 2018 x1.026 / x1.029, synthetic x1.059 / x1.061, MovieTweetings x1.647 /
# x1.656 (docs/results/quality-online.md, "Whole histories for items outside the fit").
DEFAULT_WHOLE_HISTORY_COOCCURRENCE = True
USER_STEPS = ("trained", "all", "none")
DEFAULT_USER_STEPS = "trained"
# The row a user the build did not fit gets (updater.new_user_rows): "auto" chooses its scale
# from the deployment's own traffic, "0" keeps it zero (history alone), "0.5" / "1" fix it.
# In process (python -m bench.trainer_replay off shipped new_user_rows=0 new_user_rows=1, each
# log's base as the search chose it; recall@10 against publishing off, 95 % paired bootstrap
# over users; AMD EPYC VM, 2026-12-07), a=0 / auto / a=1: synthetic x1.039 / x1.054 (moved to
# 1) / x1.064; ml-latest-small 2018 x1.023 / x1.023 (stayed at 0) / x0.952; ml-100k x1.004 /
# x1.004 / x0.982; ml-latest-small 2016 x1.040 / x1.040 / x1.012; MovieTweetings x1.408 /
# x1.408 / x1.442 (new users' own events: 0.2105 at 0, 0.2050 at 1; docs/architecture.md).
NEW_USER_ROWS = ("auto", "0", "0.5", "1")
DEFAULT_NEW_USER_ROWS = "auto"
# how hard a skip (an item shown and not taken) pushes the item away from the user, against a
# click's 1 (updater.events.label). bench.quality --shown-skips 10 (the answer's top 10 the user
# did not take sent as skips before each asked event), replay recall@10, windows of 1,000:
# ml-100k no skips 0.196, weight 0.1 0.184, 0.5 0.142; synthetic 0.202 / 0.179 / 0.128. On these
# logs an item shown and not taken now is often taken later, so a skip weighs little; an app
# whose skips are explicit dismissals may raise it (--skip-weight).
DEFAULT_SKIP_WEIGHT = LABEL_WEIGHTS["skip"]
# items shown and not taken as skips: every weight tried cost recall on the public logs, where
# an item shown and not taken now is often taken later (docs/results/quality-online.md), so off
DEFAULT_IMPRESSION_SKIPS = 0
# What feedback may enter (updater.admission). Growing the catalogue from feedback is off: an event
# naming an unknown item is NOT_FOUND (`freshrec items add` adds items; the flag lets feedback).
DEFAULT_GROW_CATALOGUE = False
# New user rows a minute. Made-up user ids, one per event, would otherwise grow the user tables at
# the intake's pace: 294 us an event with 8 apps writing to Redis (README, bench.intake, AMD EPYC
# VM, 2026-12-03), ~3,400 events/s, ~200,000 rows a minute; 1,000 a minute (1.4 million sign-ups
# a day) holds that to 1/200, about 0.4 MB of rows a minute at d = 64, 20 history items.
DEFAULT_MAX_NEW_USERS_PER_MIN = 1000
# Each version's quality record (updater.quality): at most this many positive events of each
# batch the engine reads are asked of the serving version (evenly spaced over the batch), in one
# Retriever.answer call (a round more per repeat of a user). Cost, bench.quality_record (AMD EPYC
# VM, 2 cores, 2026-12-07; d = 64, batches of 256 clicks, each a new version as at the 0.1 s
# cadence): 13 ms a batch at 5,000 items (52 ms per 1,000 events, against training's 56), 56 ms
# at 100,000 (218 ms per 1,000 events); most of it is loading each version's Retriever (7 and 30
# ms), the rest the questions (16 / 32 / 64 asked: 12 / 13 / 16 ms a batch at 5,000 items).
DEFAULT_QUALITY_EVENTS_PER_BATCH = 32
# a positive event counts for the answers its user was shown in the 30 minutes before it: a
# session's length on the public logs' apps, and what a canary is judged on (updater.exposure)
DEFAULT_ATTRIBUTION_WINDOW_S = 1800.0


def require(settings, *rules: tuple[str, bool, str]) -> None:
    """Raise ValueError naming the first field of ``settings`` whose rule fails: each rule is
    (field, whether its value is valid, what it must be), e.g. ("lr", lr > 0, "> 0")."""
    for name, valid, must in rules:
        if not valid:
            raise ValueError(f"{type(settings).__name__}.{name} must be {must}, "
                             f"got {getattr(settings, name)!r}")


@dataclass(frozen=True)
class IntakePolicy:
    grow_catalogue: bool = DEFAULT_GROW_CATALOGUE
    max_new_users_per_min: int = DEFAULT_MAX_NEW_USERS_PER_MIN

    def __post_init__(self):
        require(self, ("max_new_users_per_min", self.max_new_users_per_min >= 0, ">= 0"))


@dataclass(frozen=True)
class QualityPolicy:
    """How much of each batch the quality record measures (updater.quality); 0 turns it off;
    and the window of the exposure attribution (updater.exposure)."""

    events_per_batch: int = DEFAULT_QUALITY_EVENTS_PER_BATCH
    # how long after an answer was shown a positive event is attributed to it (updater.exposure)
    attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S

    def __post_init__(self):
        require(self, ("events_per_batch", self.events_per_batch >= 0, ">= 0"),
                ("attribution_window_s", self.attribution_window_s > 0, "> 0"))


@dataclass(frozen=True)
class PublishPolicy:
    """When the updater publishes (T seconds or M events, whichever first) and what it keeps."""

    every_s: float = DEFAULT_PUBLISH_EVERY_S
    every_events: int = DEFAULT_PUBLISH_EVERY_EVENTS
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    shard_kib: int = DEFAULT_SHARD_KIB

    def __post_init__(self):
        require(self, ("every_s", self.every_s >= 0, ">= 0"),
                ("every_events", self.every_events >= 1, ">= 1"),
                ("keep_versions", self.keep_versions >= 2, ">= 2 (rollback needs one)"),
                ("shard_kib", self.shard_kib >= 1, ">= 1"))


@dataclass(frozen=True)
class TrainerConfig:
    """How an event trains the rows it touches (updater.trainer.SparseTrainer): row-wise
    Adagrad's learning rate and per-event clip, sampled negatives, the optional fold-ins, a
    skip's weight, and what an event may change at all."""

    lr: float = DEFAULT_LR
    negatives: int = DEFAULT_NEGATIVES
    max_step: float = DEFAULT_MAX_STEP
    fold_in_events: int = DEFAULT_FOLD_IN_EVENTS
    fold_in_users: bool = DEFAULT_FOLD_IN_USERS
    skip_weight: float = DEFAULT_SKIP_WEIGHT
    # what an event teaches, for bench.ablation's rows (issue 33): the rows (user, item,
    # negatives, fold-ins) and the counts (all-time popularity and the trend); the user's history
    # moves either way, as the live history does
    row_updates: bool = True
    count_updates: bool = True
    user_steps: str = DEFAULT_USER_STEPS
    new_user_rows: str = DEFAULT_NEW_USER_ROWS
    # a closed form's fitted items learn from co-occurrences too, not only those outside the fit
    # (updater.cooccurrence; DEFAULT_COOCCURRENCE_FITTED)
    cooccurrence_fitted: bool = DEFAULT_COOCCURRENCE_FITTED
    # ... with the user's whole history (the version's user_cooccurrence), not the stored last H
    whole_history_cooccurrence: bool = DEFAULT_WHOLE_HISTORY_COOCCURRENCE
    # a positive event also trains the newest answer its user was shown (updater.exposure) as
    # skips: its top N items but the one taken (DEFAULT_IMPRESSION_SKIPS)
    impression_skips: int = DEFAULT_IMPRESSION_SKIPS
    seed: int = 0

    def __post_init__(self):
        require(self, ("lr", self.lr > 0, "> 0"), ("negatives", self.negatives >= 1, ">= 1"),
                ("max_step", self.max_step > 0, "> 0"),
                ("skip_weight", 0 <= self.skip_weight < float("inf"), ">= 0"),
                ("fold_in_events", self.fold_in_events >= 0, ">= 0"),
                ("impression_skips", self.impression_skips >= 0, ">= 0"),
                ("user_steps", self.user_steps in USER_STEPS, f"one of {', '.join(USER_STEPS)}"),
                ("new_user_rows", self.new_user_rows in NEW_USER_ROWS,
                 f"one of {', '.join(NEW_USER_ROWS)}"),
                ("fold_in_events", not (self.fold_in_events and not self.row_updates),
                 "0 without row_updates (a fold-in sets rows)"))
        if self.fold_in_users and not self.fold_in_events:
            raise ValueError("TrainerConfig.fold_in_users needs fold_in_events > 0 (the history "
                             "length it applies to), got fold_in_events 0")
