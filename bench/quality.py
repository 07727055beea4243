"""Online-learning quality: a prequential replay of the latest events, with peers in the same run.

    python -m bench.quality                      # synthetic data (the generator's defaults)
    python -m bench.quality --data PATH          # u.data, ratings.dat or ratings.csv
    python -m bench.quality --quick              # 20 % of the replay, fewer windows

Train the base model on the earliest 80 % of events by time (exporter.train, as `freshrec build`
does), serve it with the real tritonserver, then walk the remaining events in time order in
windows (bench.replay: each event is first asked, excluding what its user has already seen, then
the window is learned). Rows, all on the same questions:
- popularity: counts of every event so far, recounted after each window;
- static base model: Triton `recommend` on the base model, nothing learned;
- freshrec online: the same server, the window's events sent as feedback through the updater
  sidecar (a real `python -m updater` process) and published (Admin Publish) before the next;
- ALS (implicit), retrained from scratch on all events so far before each scored window: the
  expensive, fair upper reference.
"update s" is what learning cost: for freshrec the wall time from the first feedback of a
window until Triton serves a version holding it, for ALS the fits; "ask s" is the time spent
answering the questions (over gRPC for the served rows, in-process numpy for the others).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.replay import (
    DEFAULT_WINDOW_EVENTS,
    PopularityRecommender,
    ReplayResult,
    ServedRecommender,
    replay,
)
from bench.report import machine_header, print_table
from exporter.data import Interactions

log = logging.getLogger(__name__)

# ALS settings picked for the peer, not for us: on the synthetic set's first 4 windows recall@10
# was 0.11 / 0.15 / 0.18 / 0.20 / 0.17 with 128 / 64 / 32 / 16 / 8 factors; regularization
# 0.05-2 and alpha 1-4 moved it by < 0.02 (alpha 40: 0.13)
ALS_FACTORS = 16
ALS_REGULARIZATION = 0.05
ALS_ITERATIONS = 15
ALS_ALPHA = 1.0


class ALSRecommender:
    """implicit's ALS on binary user x item interactions, refitted from scratch on everything
    learned so far before answering, whenever something new was learned. Users without a row
    (first seen after the last fit) get the popularity ranking, as freshrec serves them."""

    def __init__(self, train: Interactions, *, factors: int = ALS_FACTORS,
                 regularization: float = ALS_REGULARIZATION, iterations: int = ALS_ITERATIONS,
                 alpha: float = ALS_ALPHA, seed: int = 0):
        self.parts = [train]
        self.settings = dict(factors=factors, regularization=regularization, iterations=iterations,
                             alpha=alpha, random_state=seed)
        self.popularity = PopularityRecommender(train)
        self.stale = True
        self.fits = 0
        self.fit_s = 0.0

    def learn(self, events: Interactions) -> None:
        self.parts.append(events)
        self.popularity.learn(events)
        self.stale = True

    def _fit(self) -> None:
        import scipy.sparse as sp
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        started = time.perf_counter()
        users = np.concatenate([p.user_ids for p in self.parts])
        items = np.concatenate([p.item_ids for p in self.parts])
        self.user_ids, user_rows = np.unique(users, return_inverse=True)
        self.item_ids, item_rows = np.unique(items, return_inverse=True)
        matrix = sp.csr_matrix((np.ones(len(users), np.float32), (user_rows, item_rows)),
                               shape=(len(self.user_ids), len(self.item_ids)))
        matrix.data[:] = 1.0  # repeats count once: binary interactions, as the metrics see them
        # implicit asks for a single-threaded BLAS (its own threads do the work); it checks in
        # the constructor
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(**self.settings)
            model.fit(matrix, show_progress=False)
        self.user_factors = np.asarray(model.user_factors)
        self.item_factors = np.asarray(model.item_factors)
        self.stale = False
        self.fits += 1
        self.fit_s += time.perf_counter() - started

    def recommend(self, user_ids, excludes, k):
        if self.stale:
            self._fit()
        rows = np.searchsorted(self.user_ids, user_ids).clip(max=len(self.user_ids) - 1)
        known = self.user_ids[rows] == user_ids
        answers = []
        k_eff = min(k, len(self.item_ids))
        for row, is_known, exclude in zip(rows, known, excludes):
            if not is_known:
                answers.append(self.popularity.recommend(None, [exclude], k)[0])
                continue
            scores = self.item_factors @ self.user_factors[row]
            columns = np.searchsorted(self.item_ids, exclude).clip(max=len(self.item_ids) - 1)
            scores[columns[self.item_ids[columns] == exclude]] = -np.inf
            top = np.argpartition(-scores, k_eff - 1)[:k_eff]
            top = top[np.argsort(-scores[top], kind="stable")]
            answers.append(self.item_ids[top[np.isfinite(scores[top])]])
        return answers


def load_events(data: Path | None, *, seed: int):
    from exporter.data import read_dataset
    from exporter.synthetic import generate_synthetic

    if data is None:
        return generate_synthetic(seed=seed), f"synthetic (exporter.synthetic defaults, seed {seed})"
    return read_dataset(data), str(data)


def _row(name: str, result: ReplayResult, update_s: float, ask_s: float) -> list:
    m = result.metrics
    return [name, m["recall@10"], m["recall@50"], m["ndcg@10"], result.scored, update_s, ask_s]


def run_bench(*, data: Path | None, window_events: int, replay_fraction: float, score_every: int,
              seed: int, updater_args: tuple[str, ...] = ()) -> None:
    from exporter.build import write_repository
    from exporter.data import split_by_time
    from exporter.train import TrainConfig, train_base_model
    from freshrec.stack import serving_stack
    from model_repository import contract as c

    started = time.perf_counter()
    dataset, source = load_events(data, seed=seed)
    train, test = split_by_time(dataset.interactions)
    test = test.take(slice(0, max(1, int(round(len(test) * replay_fraction)))))
    n_windows = -(-len(test) // window_events)
    scored = list(range(0, n_windows, score_every))
    fitting = time.perf_counter()
    model = train_base_model(train, items=dataset.items, config=TrainConfig(seed=seed), progress=False)
    train_s = time.perf_counter() - fitting
    rows = []
    with tempfile.TemporaryDirectory(prefix="freshrec-quality-") as scratch:
        repository = write_repository(model, Path(scratch) / "repository", tensorrt=False).repository
        with serving_stack(repository, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
                           log_dir=Path(scratch)) as stack:
            popularity = PopularityRecommender(train)
            result = replay(train, test, popularity, window_events=window_events, scored_windows=scored)
            rows.append(_row("popularity (recounted per window)", result, result.learn_s,
                             result.recommend_s))
            # static first: the updater below changes what the server answers
            static = ServedRecommender(stack.grpc_url)
            try:
                result = replay(train, test, static, window_events=window_events, scored_windows=scored)
            finally:
                static.close()
            rows.append(_row("static base model (Triton)", result, 0.0, result.recommend_s))
            static_metrics = result.metrics
            updater = stack.start_updater(args=updater_args)
            online = ServedRecommender(stack.grpc_url, updater_url=updater.url)
            try:
                result = replay(train, test, online, window_events=window_events, scored_windows=scored)
            finally:
                online.close()
                stack.stop_updaters()
            rows.append(_row("freshrec online (Triton + updater)", result, result.learn_s,
                             result.recommend_s))
            online_result = result
    als = ALSRecommender(train, seed=seed)
    result = replay(train, test, als, window_events=window_events, scored_windows=scored)
    rows.append(_row(f"ALS retrained per window ({als.fits} fits)", result, als.fit_s,
                     result.recommend_s - als.fit_s))
    als_result = result
    print(machine_header([
        f"data: {source}: {len(dataset.interactions)} events; base model trained on the earliest "
        f"{len(train)} (80 %) in {train_s:.1f} s (exporter.train defaults, d = {model.config.dim})",
        f"replay: {len(test)} events after the cut in {n_windows} windows of {window_events}, "
        f"{len(scored)} windows scored (every {score_every}), all learned; each event asked "
        "before its window is learned, the user's seen items excluded; K = 50",
        f"ALS: implicit {_implicit_version()}, factors {ALS_FACTORS}, regularization "
        f"{ALS_REGULARIZATION}, {ALS_ITERATIONS} iterations, binary interactions",
        f"updater: {' '.join(updater_args) or 'default settings'}; feedback kind click for every event",
        f"whole run {time.perf_counter() - started:.0f} s",
    ]))
    print_table(["recommender", "recall@10", "recall@50", "ndcg@10", "events", "update s", "ask s"],
                rows)
    online_m, als_m = online_result.metrics, als_result.metrics
    update_ratio = online_result.learn_s / als.fit_s if als.fit_s else float("nan")
    print(f"freshrec online vs static: recall@10 x{_ratio(online_m, static_metrics, 'recall@10')}, "
          f"ndcg@10 x{_ratio(online_m, static_metrics, 'ndcg@10')}; vs retrained ALS: recall@10 "
          f"x{_ratio(online_m, als_m, 'recall@10')}, ndcg@10 x{_ratio(online_m, als_m, 'ndcg@10')}, "
          f"update time x{update_ratio:.2f} of ALS's")


def _ratio(ours: dict, theirs: dict, key: str) -> str:
    return f"{ours[key] / theirs[key]:.2f}" if theirs[key] else "n/a"


def _implicit_version() -> str:
    from importlib.metadata import version

    return version("implicit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="ratings file (default: the synthetic generator)")
    parser.add_argument("--window-events", type=int, default=DEFAULT_WINDOW_EVENTS,
                        help=f"events per replay window (default {DEFAULT_WINDOW_EVENTS})")
    parser.add_argument("--replay-fraction", type=float, default=1.0,
                        help="replay only this leading share of the events after the cut")
    parser.add_argument("--score-every", type=int, default=1,
                        help="score every n-th window only (all are learned; ALS fits n x less)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--updater-args", default="",
                        help="extra flags for the updater process, e.g. \"--lr 0.002\"")
    parser.add_argument("--quick", action="store_true", help="replay 20 %% of the events")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.replay_fraction = min(args.replay_fraction, 0.2)
    if args.window_events < 1 or args.score_every < 1 or not 0 < args.replay_fraction <= 1:
        parser.error("--window-events and --score-every must be >= 1, --replay-fraction in (0, 1]")
    run_bench(data=args.data, window_events=args.window_events, replay_fraction=args.replay_fraction,
              score_every=args.score_every, seed=args.seed,
              updater_args=tuple(shlex.split(args.updater_args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
