"""bench.quality --protocol split (and --cuts): the model as `freshrec build` chooses it and every
peer fitted on the same earliest share of the log, scored on the rest (exporter.evaluate), with
the model against the best peer on each goal metric and a bootstrap over users.

Imported by bench.quality only when the split protocol runs: exporter.evaluate brings torch.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.peers import make_peers, peer_scorer
from bench.quality_cut import (
    TRAIN_FRACTION,
    describe_model,
    package_version,
    ratio_text,
    train_on_the_cut,
)
from bench.report import machine_header, print_table
from exporter.data import Interactions
from exporter.evaluate import (
    RECENT_POPULARITY,
    build_eval_split,
    evaluate,
    model_scorer,
    paired_ratio_interval,
    paired_users,
    per_user_metrics,
    popularity_scorer,
)
from exporter.search import describe_half_life

GOAL_KEYS = ("recall@10", "ndcg@10")  # the split's goal: the model at least every peer on both


@dataclass
class SplitRun:
    """One split protocol run: the model as `build` chooses it and every peer on one cut."""

    dataset: object
    source: str
    train: Interactions
    test: Interactions
    model: object
    chosen: object
    results: dict[str, dict[str, float]]  # per scorer (exporter.evaluate.evaluate)
    fit_s: dict[str, float]
    notes: list[str]
    peers: dict[str, object]  # the peers' score functions: all but the model's own two

    def best_peer(self, key: str) -> str:
        return max(self.peers, key=lambda name: self.results[name][key])


def split_at(data: Path | None, *, seed: int, search: bool = True,
             train_fraction: float = TRAIN_FRACTION) -> SplitRun:
    """The model and the peers fitted on the earliest ``train_fraction``, scored on the rest."""
    dataset, source, train, test, model, train_s, chosen = train_on_the_cut(
        data, seed=seed, search=search, train_fraction=train_fraction)
    extra, fit_s, notes = {}, {"model": train_s}, []
    for peer in make_peers(seed=seed):
        extra[peer.name], fit_s[peer.name] = peer_scorer(peer, train, model.item_ids)
        notes.append(peer.describe())
    results = evaluate(model, train, test, extra=extra)
    # popularity with the prior's half-life ("recent popularity") counts as a peer, so a win
    # is not the prior's alone
    peers = {"popularity": popularity_scorer(model.item_popularity), **extra}
    if RECENT_POPULARITY in results:
        peers[RECENT_POPULARITY] = popularity_scorer(model.item_trend)
    return SplitRun(dataset, source, train, test, model, chosen, results, fit_s, notes, peers)


def run_split(*, data: Path | None, seed: int, search: bool = True) -> None:
    started = time.perf_counter()
    run = split_at(data, seed=seed, search=search)
    dataset, model, train, test = run.dataset, run.model, run.train, run.test
    print(machine_header([
        f"data: {run.source}: {len(dataset.interactions)} events; train on the earliest "
        f"{len(train)} (80 %), evaluate on the latest {len(test)} (exporter.evaluate: users known "
        f"in training, their training items excluded, targets their new items; "
        f"{len(model.item_ids)} items)",
        describe_model(model, run.chosen) + f" ({run.fit_s['model']:.0f} s with the search)",
        f"peers: implicit {package_version('implicit')}; " + "; ".join(run.notes) + "; binary interactions",
        f"whole run {time.perf_counter() - started:.0f} s",
    ]))
    rows = [[name, m["recall@10"], m["ndcg@10"], m["recall@50"], m["ndcg@50"], int(m["users"]),
             run.fit_s.get(name, 0.0)] for name, m in run.results.items()]
    print_table(["scorer", "recall@10", "ndcg@10", "recall@50", "ndcg@50", "users", "fit s"], rows)
    best = run.best_peer("recall@10")
    ours = run.results["model"]
    split = build_eval_split(train, test, item_ids=model.item_ids)
    mine, theirs = (per_user_metrics(fn, split) for fn in (model_scorer(model), run.peers[best]))
    print(f"base model vs the best peer ({best}, by recall@10): " + ", ".join(
        f"{k} x{ratio_text(ours[k], run.results[best][k])} (95 % bootstrap over users "
        "{:.2f}-{:.2f}; ".format(*paired_ratio_interval(mine[k], theirs[k], seed=seed))
        + paired_users(mine[k], theirs[k]).describe() + ")"
        for k in GOAL_KEYS))


def run_cuts(*, data: Path | None, seed: int, cuts: list[float], search: bool = True) -> None:
    """The split protocol at several cuts of the same log: one line per cut, the model against
    the best peer on each goal metric (the best by that metric), how many cuts meet it, and the
    cuts pooled: every (cut, user) pair's metric summed, with a bootstrap over users (each user's
    pairs at every cut drawn together), so a log with few users per cut still gets one interval."""
    started = time.perf_counter()
    rows, met, ratios = [], 0, {k: [] for k in GOAL_KEYS}
    pooled = {k: ([], []) for k in GOAL_KEYS}  # per goal metric: the model's, the best peer's
    users = []  # the user of each pooled entry
    source = ""
    for cut in cuts:
        run = split_at(data, seed=seed, search=search, train_fraction=cut)
        source, ours = run.source, run.results["model"]
        split = build_eval_split(run.train, run.test, item_ids=run.model.item_ids)
        mine = per_user_metrics(model_scorer(run.model), split)
        users.append(split.user_ids)
        per_peer = {}  # a peer that is best by both metrics is scored once
        row = [f"{cut:g}", int(ours["users"])]
        cut_met = True
        for key in GOAL_KEYS:
            best = run.best_peer(key)
            theirs = run.results[best][key]
            ratios[key].append(ours[key] / theirs if theirs else float("inf"))
            cut_met &= ours[key] >= theirs
            row += [ours[key], f"{best} {theirs:.3g}", f"x{ratio_text(ours[key], theirs)}"]
            pooled[key][0].append(mine[key])
            if best not in per_peer:
                per_peer[best] = per_user_metrics(run.peers[best], split)
            pooled[key][1].append(per_peer[best][key])
        met += cut_met
        prior = run.chosen.prior.describe() if run.chosen else "no search"
        half_life = (describe_half_life(run.chosen.popularity_half_life_s) if run.chosen
                     else "none")
        rows.append(row + [f"{prior}, half-life {half_life}"])
        print(f"cut {cut:g} done ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr,
              flush=True)
    print(machine_header([
        f"data: {source}: the split protocol (`freshrec build`'s) at cuts {', '.join(map(str, cuts))}"
        " of the events by time: train on the earliest share, evaluate on the rest, peers as "
        "`--protocol split`'s, each goal metric against the best peer by that metric",
        f"whole run {time.perf_counter() - started:.0f} s",
    ]))
    print_table(["cut", "users", "model recall@10", "best peer", "vs it", "model ndcg@10",
                 "best peer", "vs it", "prior chosen"], rows)
    print(f"the model at least the best peer on both recall@10 and ndcg@10 at {met} of {len(cuts)} "
          "cuts; median ratio " + ", ".join(
              f"{k} x{float(np.median(ratios[k])):.2f}" for k in GOAL_KEYS))
    users = np.concatenate(users)
    parts = []
    for key in GOAL_KEYS:
        mine, theirs = (np.concatenate(values) for values in pooled[key])
        low, high = paired_ratio_interval(mine, theirs, groups=users, seed=seed)
        who = paired_users(mine, theirs)
        parts.append(f"{key} x{ratio_text(mine.sum(), theirs.sum())} (95 % bootstrap over users "
                     f"{low:.2f}-{high:.2f}; user-cuts ahead / behind / level {who.ahead} / "
                     f"{who.behind} / {who.level})")
    print(f"pooled over the {len(cuts)} cuts ({len(users)} user-cuts, {len(np.unique(users))} "
          "users), the model against each cut's best peer: " + ", ".join(parts))
