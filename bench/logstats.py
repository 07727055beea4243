"""How a rating log is shaped in time: the synthetic generator's next to real logs, in one table.

    python -m bench.logstats                          # the synthetic log (generator defaults)
    python -m bench.logstats --data DIR [--data DIR]  # real logs (u.data, ratings.dat, ratings.csv)
    python -m bench.logstats --synthetic --data DIR   # both, side by side

Online learning only pays where users come back while the model is live, so these are the
statistics that decide whether a quality result on one log carries over to another (issue 14):
how active users are, how bursty (events minutes apart, in sessions), how concentrated and how
stable popularity is, how many items appear late, and how much of the test period (the latest
20 % of events, as `freshrec build` and bench.quality split) a live history can see. Bench logs
for development live outside the repository (bench/DATASETS.md).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from bench.report import machine_header, print_table
from exporter.data import Interactions, read_dataset
from exporter.synthetic import generate_synthetic

SESSION_GAP_S = 30 * 60  # a gap shorter than this continues a session (the usual web-log cut)
TEST_FRACTION = 0.2  # the latest 20 % of events: the test period of build and bench.quality
TOP_ITEM_FRACTION = 0.01  # popularity concentration: share of events on the top 1 % of items
DRIFT_TOP_K = 100  # popularity drift: overlap of the top-100 items, earliest vs latest 20 %


@dataclass(frozen=True)
class LogStats:
    """The statistics of one log (ROW_LABELS names each in the table)."""

    events: int
    users: int
    items: int
    span_days: float
    events_per_user_p50: float
    events_per_user_p90: float
    events_per_user_max: int
    within_30min: float
    session_events_p50: float
    event_session_events_p50: float
    session_gap_h_p50: float
    top1pct_item_share: float
    items_new_in_latest_20pct: float
    top100_overlap_first_last: float
    test_events_user_active_in_test: float
    test_events_user_in_train: float


ROW_LABELS = {
    "events": "events",
    "users": "users",
    "items": "items (with an event)",
    "span_days": "span, days",
    "events_per_user_p50": "events per user p50",
    "events_per_user_p90": "events per user p90",
    "events_per_user_max": "events per user max",
    "within_30min": "events < 30 min after the user's previous",
    "session_events_p50": "session length p50, events",
    "event_session_events_p50": "length of an event's session p50, events",
    "session_gap_h_p50": "gap between a user's sessions p50, h",
    "top1pct_item_share": "events on the top 1 % of items",
    "items_new_in_latest_20pct": "items first seen in the latest 20 %",
    "top100_overlap_first_last": "top-100 overlap, earliest vs latest 20 %",
    "test_events_user_active_in_test": "test events whose user already acted in test",
    "test_events_user_in_train": "test events whose user has training events",
}


def _top_items(item_ids: np.ndarray, k: int) -> set[int]:
    """The k most frequent item ids (ties broken by the smaller id, so the result is stable)."""
    ids, counts = np.unique(item_ids, return_counts=True)
    order = np.lexsort((ids, -counts))[:k]
    return set(ids[order].tolist())


def _overlap(a: set[int], b: set[int]) -> float:
    """|a & b| over the smaller set's size (DRIFT_TOP_K on any real log; less on a tiny one)."""
    return len(a & b) / min(len(a), len(b)) if a and b else math.nan


def log_stats(inter: Interactions) -> LogStats:
    """Shape statistics of a time-sorted log (``Interactions`` are sorted on construction).

    Per-user quantities follow each user's events in time order; events sharing a second count
    as 0 s apart. A session is a run of one user's events with every gap under SESSION_GAP_S;
    "within_30min" is the share of events, among those with an earlier event by the same user,
    that come less than SESSION_GAP_S after it. Period boundaries are event counts (earliest /
    latest TEST_FRACTION of events), as in ``exporter.data.split_by_time``.
    """
    n = len(inter)
    if n == 0:
        raise ValueError("log_stats needs at least one event")
    by_user = np.argsort(inter.user_ids, kind="stable")  # time order within each user
    users = inter.user_ids[by_user]
    times = inter.timestamps[by_user]
    same_user = users[1:] == users[:-1]
    gaps = np.diff(times)[same_user]
    session_start = np.ones(n, dtype=bool)
    session_start[1:] = ~same_user | (np.diff(times) >= SESSION_GAP_S)
    session_lengths = np.diff(np.append(np.flatnonzero(session_start), n))
    between = np.diff(times)[same_user & (np.diff(times) >= SESSION_GAP_S)]
    _, per_user = np.unique(users, return_counts=True)

    cut = int(round(n * (1.0 - TEST_FRACTION)))
    head = int(round(n * TEST_FRACTION))
    latest = inter.item_ids[cut:]
    _, first_index, item_counts = np.unique(inter.item_ids, return_index=True,
                                            return_counts=True)
    n_items = len(first_index)
    top_k = max(1, math.ceil(TOP_ITEM_FRACTION * n_items))
    test_users = inter.user_ids[cut:]

    return LogStats(
        events=n,
        users=len(per_user),
        items=n_items,
        span_days=float(inter.timestamps[-1] - inter.timestamps[0]) / 86_400,
        events_per_user_p50=float(np.median(per_user)),
        events_per_user_p90=float(np.quantile(per_user, 0.9)),
        events_per_user_max=int(per_user.max()),
        within_30min=float((gaps < SESSION_GAP_S).mean()) if gaps.size else math.nan,
        session_events_p50=float(np.median(session_lengths)),
        event_session_events_p50=float(np.median(np.repeat(session_lengths, session_lengths))),
        session_gap_h_p50=float(np.median(between)) / 3600 if between.size else math.nan,
        top1pct_item_share=float(np.sort(item_counts)[::-1][:top_k].sum() / n),
        items_new_in_latest_20pct=float((first_index >= cut).mean()),
        top100_overlap_first_last=_overlap(_top_items(inter.item_ids[:head], DRIFT_TOP_K),
                                           _top_items(latest, DRIFT_TOP_K)),
        test_events_user_active_in_test=(1.0 - len(np.unique(test_users)) / len(test_users)
                                         if len(test_users) else math.nan),
        test_events_user_in_train=(float(np.isin(test_users, inter.user_ids[:cut]).mean())
                                   if len(test_users) else math.nan),
    )


def print_stats_table(columns: dict[str, LogStats]) -> None:
    """One row per statistic, one column per log."""
    names = [f.name for f in fields(LogStats)]
    rows = [[ROW_LABELS[name], *(getattr(s, name) for s in columns.values())] for name in names]
    print_table(["statistic", *columns], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logstats",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", default=[],
                        help="a ratings file or a folder holding one (repeat for several logs)")
    parser.add_argument("--synthetic", action="store_true",
                        help="include the synthetic log (the default when no --data is given)")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic generator's seed")
    args = parser.parse_args(argv)

    columns: dict[str, LogStats] = {}
    if args.synthetic or not args.data:
        columns[f"synthetic (seed {args.seed})"] = log_stats(
            generate_synthetic(seed=args.seed).interactions)
    for path in args.data:
        name = path.name if path.is_dir() else f"{path.parent.name}/{path.name}"
        columns[name] = log_stats(read_dataset(path).interactions)
    print(machine_header([
        f"sessions: runs of one user's events with gaps < {SESSION_GAP_S // 60} min; periods: the "
        f"earliest / latest {TEST_FRACTION:.0%} of events by time (the test period of build)",
    ]))
    print_stats_table(columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
