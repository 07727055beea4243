"""The locustfile, run headless by `freshrec loadtest`'s code against a real server and updater.

Nothing here asserts a timing: only that calls were made, reported to locust per task, and that
none failed.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from clients import UpdaterClient
from clients.loadtest import (
    AGGREGATED,
    REQUEST_TYPE_FEEDBACK,
    REQUEST_TYPE_RECOMMEND,
    LoadMix,
    SkewedIds,
    add_loadtest_parser,
    duration_s,
    read_stats,
    run_locust,
)
from tests.fixtures.builds import SMALL


def test_skewed_ids_stay_in_range_and_are_skewed():
    ids = SkewedIds(100, exponent=1.0, seed=0)
    draws = ids.draw(np.random.default_rng(1), 20_000)
    assert draws.min() >= 1 and draws.max() <= 100
    counts = np.sort(np.bincount(draws, minlength=101)[1:])[::-1]
    # Zipf(1) over 100 ids: the top id takes ~19 %, the top 10 ~56 %; uniform would give 1 % / 10 %
    assert counts[0] / draws.size > 0.12
    assert counts[:10].sum() / draws.size > 0.4


@pytest.mark.parametrize("text, seconds", [("60s", 60), ("2m", 120), ("1h30m", 5400), ("45", 45)])
def test_duration_parses_locust_syntax(text, seconds):
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "ten", "5x"])
def test_duration_rejects_nonsense(text):
    with pytest.raises(ValueError, match="duration"):
        duration_s(text)


def test_mix_rejects_all_weights_zero():
    with pytest.raises(ValueError, match="at least one"):
        LoadMix(recommend_weight=0, feedback_weight=0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freshrec")
    add_loadtest_parser(parser.add_subparsers(dest="command"))
    return parser


def test_loadtest_parser_defaults():
    args = _parser().parse_args(["loadtest", "--users", "3", "--duration", "5s"])
    assert (args.users, args.duration, args.feedback_weight) == (3, "5s", 0)
    assert args.func.__name__ == "cmd_loadtest"


@pytest.mark.integration
def test_freshrec_loadtest_headless_recommend_and_feedback_without_failures(
        stack, tmp_path, capsys):
    with UpdaterClient(stack.updater.url) as up:
        offset_before = up.status()["log_offset"]
    args = _parser().parse_args([
        "loadtest", "--users", "4", "--duration", "4s", "--url", stack.grpc_url,
        "--updater", stack.updater.url, "--id-users", str(SMALL.synthetic_kwargs["n_users"]),
        "--id-items", str(SMALL.synthetic_kwargs["n_items"]), "--recommend-weight", "3",
        "--feedback-weight", "1", "--csv", str(tmp_path / "run")])
    code = args.func(args)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    by_name = {(r.request_type, r.name): r for r in read_stats(tmp_path / "run_stats.csv")}
    recommend = by_name[(REQUEST_TYPE_RECOMMEND, "recommend")]
    with_history = by_name[(REQUEST_TYPE_RECOMMEND, "recommend +history")]
    feedback = by_name[(REQUEST_TYPE_FEEDBACK, "feedback")]
    assert recommend.requests > 0 and with_history.requests > 0 and feedback.requests > 0
    assert by_name[("", AGGREGATED)].failures == 0
    assert "recommend +history" in printed.out and REQUEST_TYPE_FEEDBACK in printed.out
    # every feedback locust counted as a success is in the updater's durable log
    with UpdaterClient(stack.updater.url) as up:
        assert up.status()["log_offset"] - offset_before >= feedback.requests


@pytest.mark.integration
def test_locust_runner_reports_failed_calls(stack):
    """A model that does not exist: every call fails, and locust's stats must say so."""
    mix = LoadMix(n_users=10, n_items=10, model="no_such_model")
    run = run_locust(stack.grpc_url, users=1, duration="2s", mix=mix)
    aggregated = run.row(AGGREGATED)
    assert aggregated.requests > 0 and aggregated.failures == aggregated.requests
    assert run.exit_code != 0
