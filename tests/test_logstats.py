"""bench.logstats on logs small enough to work out by hand."""

from __future__ import annotations

import math

import pytest

from bench.logstats import log_stats, main
from exporter.data import Interactions

# (timestamp s, user, item), in time order; with 10 events the earliest and latest 20 % are the
# first two and the last two rows
HAND_LOG = [
    (0, 1, 1),
    (50, 2, 2),
    (60, 1, 2),
    (120, 1, 3),
    (4000, 2, 1),
    (4100, 2, 4),
    (100_000, 1, 4),
    (100_100, 3, 5),
    (200_000, 2, 2),
    (200_050, 2, 6),
]


def interactions(rows) -> Interactions:
    times, users, items = zip(*rows)
    return Interactions.from_arrays(users, items, [1.0] * len(rows), times)


def test_statistics_of_a_log_worked_out_by_hand():
    stats = log_stats(interactions(HAND_LOG))
    assert (stats.events, stats.users, stats.items) == (10, 3, 6)
    assert stats.span_days == pytest.approx(200_050 / 86_400)
    # events per user: 1 (user 3), 4 (user 1), 5 (user 2); numpy's linear p90 is 4 + 0.8
    assert (stats.events_per_user_p50, stats.events_per_user_max) == (4, 5)
    assert stats.events_per_user_p90 == pytest.approx(4.8)
    # gaps: user 1 60, 60, 99880; user 2 3950, 100, 195900, 50: 4 of 7 under 30 min
    assert stats.within_30min == pytest.approx(4 / 7)
    # sessions: user 1 [0 60 120] [100000]; user 2 [50] [4000 4100] [200000 200050]; user 3
    # [100100]: lengths 3 1 1 2 2 1, and per event 3 3 3 1 1 2 2 2 2 1
    assert stats.session_events_p50 == 1.5
    assert stats.event_session_events_p50 == 2
    # between one user's sessions: 99880, 3950, 195900 s
    assert stats.session_gap_h_p50 == pytest.approx(99_880 / 3600)
    # top 1 % of 6 items is 1 item: item 2, 3 of 10 events
    assert stats.top1pct_item_share == pytest.approx(0.3)
    # only item 6 first appears in the last two events
    assert stats.items_new_in_latest_20pct == pytest.approx(1 / 6)
    # earliest two events: items 1, 2; latest two: 2, 6
    assert stats.top100_overlap_first_last == 0.5
    # the test period is user 2's two events: the second follows the first; both have training
    assert stats.test_events_user_active_in_test == 0.5
    assert stats.test_events_user_in_train == 1.0


def test_users_new_in_the_test_period_are_counted_apart():
    rows = [*HAND_LOG[:-1], (200_050, 4, 6)]  # the last event is a new user's
    stats = log_stats(interactions(rows))
    assert stats.users == 4
    assert stats.test_events_user_active_in_test == 0.0
    assert stats.test_events_user_in_train == 0.5


def test_a_single_event_has_no_gaps():
    stats = log_stats(interactions([(10, 1, 1)]))
    assert stats.events == stats.session_events_p50 == 1
    assert math.isnan(stats.within_30min) and math.isnan(stats.session_gap_h_p50)


def test_empty_log_is_an_error():
    with pytest.raises(ValueError, match="at least one event"):
        log_stats(Interactions.from_arrays([], [], [], []))


def test_cli_prints_one_column_per_log(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        lines = [f"{u}\t{i}\t4\t{t}" for t, u, i in HAND_LOG]
        (tmp_path / name / "u.data").write_text("\n".join(lines) + "\n")
    assert main(["--data", str(tmp_path / "a"), "--data", str(tmp_path / "b" / "u.data")]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert [cell.strip() for cell in table[0].split("|")[2:4]] == ["a", "b/u.data"]
    assert all(line.count("|") == 4 for line in table)
