"""The CLI's options without a server: what `serve` accepts as a repository, loadtest's flags."""

import argparse

import pytest

from clients.loadtest import LoadMix, add_locust_arguments, mix_from_options
from freshrec.cli import UserError, build_parser, serving_repository
from model_repository import contract as c


def test_serve_takes_a_repository_or_the_build_folder_holding_one(tmp_path):
    (tmp_path / "out" / "repository" / c.RETRIEVE).mkdir(parents=True)
    repository = tmp_path / "out" / "repository"
    assert serving_repository(repository) == repository
    assert serving_repository(tmp_path / "out") == repository
    with pytest.raises(UserError, match=r"not a model repository .* pass the folder"):
        serving_repository(tmp_path)


def test_loadtest_and_the_locustfile_take_the_same_mix_flags():
    args = build_parser().parse_args(["loadtest", "--max-history", "7", "--zipf", "1.5", "--unpadded"])
    locust = argparse.ArgumentParser()
    add_locust_arguments(locust)
    options = locust.parse_args(["--max-history", "7", "--zipf", "1.5", "--unpadded"])
    assert mix_from_options(args) == mix_from_options(options)
    assert mix_from_options(args).max_history == 7 and not mix_from_options(args).pad_inputs



@pytest.mark.parametrize("mix", [
    LoadMix(),
    LoadMix(n_users=7, n_items=3, zipf=1.5, history_fraction=0.25, max_history=4, k=2,
            recommend_weight=1, feedback_weight=3, model="other", pad_inputs=False),
], ids=["defaults", "every-field-changed"])
def test_a_mix_passed_to_the_locustfile_as_flags_comes_back_equal(mix):
    """freshrec loadtest hands its mix to the locust subprocess as flags (LoadMix.locust_args)."""
    locust = argparse.ArgumentParser()
    add_locust_arguments(locust)
    assert mix_from_options(locust.parse_args(mix.locust_args())) == mix

def test_default_endpoints_are_loopback_and_defined_once():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.grpc_port, args.updater_port) == (
        c.DEFAULT_HOST, c.DEFAULT_GRPC_PORT, c.DEFAULT_UPDATER_PORT) == ("127.0.0.1", 8001, 50051)
    assert build_parser().parse_args(["recommend", "--user", "1"]).url == c.DEFAULT_TRITON_URL
    assert build_parser().parse_args(["status"]).updater == c.DEFAULT_UPDATER_URL


class _StopBuild(Exception):
    pass


@pytest.mark.parametrize("flags, tower, search", [
    ([], None, True),                                   # the defaults, searched
    (["--tower", "pooled"], "pooled", True),            # the tower is chosen, the search still runs
    (["--tower", "sequence"], "sequence", True),
    (["--tower", "pooled", "--epochs", "3"], "pooled", False),  # a setting turns the search off
    (["--tower", "sequence", "--no-search"], "sequence", False),
])
def test_build_takes_the_tower_and_keeps_searching_from_it(tmp_path, monkeypatch, flags, tower,
                                                           search):
    import exporter.build

    seen = {}

    def fake_build(out, **kwargs):
        seen.update(kwargs)
        raise _StopBuild

    monkeypatch.setattr(exporter.build, "build", fake_build)
    args = build_parser().parse_args(["build", "--synthetic", "--out", str(tmp_path), *flags])
    with pytest.raises(_StopBuild):
        args.func(args)
    assert seen["search"] is search
    assert (seen["config"] and seen["config"].tower) == tower


def test_build_refuses_an_unknown_tower(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build", "--synthetic", "--out", "x", "--tower", "bag"])
    assert "invalid choice: 'bag'" in capsys.readouterr().err


def test_build_takes_the_popularity_prior_by_hand(tmp_path, monkeypatch):
    import exporter.build

    seen = {}

    def fake_build(out, **kwargs):
        seen.update(kwargs)
        raise _StopBuild

    monkeypatch.setattr(exporter.build, "build", fake_build)
    args = build_parser().parse_args(["build", "--synthetic", "--out", str(tmp_path),
                                      "--popularity-weight", "0.5",
                                      "--popularity-half-life-days", "2",
                                      "--session-minutes", "30",
                                      "--session-popularity-weight", "0.1"])
    with pytest.raises(_StopBuild):
        args.func(args)
    assert seen["popularity_weight"] == 0.5 and seen["popularity_half_life_s"] == 2 * 86400.0
    assert seen["session_s"] == 1800.0 and seen["session_popularity_weight"] == 0.1
    assert seen["search"] is True  # the prior by hand does not turn the search off


@pytest.mark.parametrize("flag", ["--popularity-weight", "--popularity-half-life-days",
                                  "--session-minutes", "--session-popularity-weight"])
def test_a_negative_prior_by_hand_is_refused_naming_the_flag(tmp_path, flag):
    from freshrec.cli import UserError

    args = build_parser().parse_args(["build", "--synthetic", "--out", str(tmp_path), flag, "-1"])
    with pytest.raises(UserError, match=f"{flag} must be >= 0"):
        args.func(args)


def test_serve_hands_the_intake_settings_to_its_updater_and_a_bad_one_is_named():
    from updater.main import config_from_args, intake_flags
    from updater.settings import DEFAULT_MAX_NEW_USERS_PER_MIN, IntakePolicy

    default = build_parser().parse_args(["updater"])
    assert config_from_args(default).intake == IntakePolicy(
        grow_catalogue=False, max_new_users_per_min=DEFAULT_MAX_NEW_USERS_PER_MIN)
    serve = build_parser().parse_args(["serve", "--grow-catalogue-from-feedback",
                                       "--max-new-users-per-min", "5"])
    updater = build_parser().parse_args(["updater", *intake_flags(serve)])
    assert config_from_args(updater).intake == IntakePolicy(grow_catalogue=True,
                                                            max_new_users_per_min=5)
    with pytest.raises(ValueError, match="max_new_users_per_min"):
        config_from_args(build_parser().parse_args(["updater", "--max-new-users-per-min", "-1"]))
