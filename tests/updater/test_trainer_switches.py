"""The trainer's ablation switches (TrainerConfig row_updates / count_updates, issue 33)."""

import numpy as np
import pytest

from tests.updater.test_trainer import _event, _numpy_tower, _tables
from updater.settings import TrainerConfig
from updater.trainer import SparseTrainer


@pytest.mark.parametrize("batched", [False, True], ids=["apply", "apply_many"])
def test_the_ablation_switches_turn_off_row_training_or_counting_and_nothing_else(batched):
    """bench.ablation's "counts and trend only" and "row updates only" rows (issue 33)."""
    events = [_event(n, 1000 + 10 * (n % 3), 500 + 7 * (n % 5)) for n in range(1, 12)]
    tables = {}
    for name, config in (("both", {}), ("counts", {"row_updates": False}),
                         ("rows", {"count_updates": False})):
        trainer = SparseTrainer(_tables(), _numpy_tower(), popularity_half_life_s=60.0,
                                config=TrainerConfig(negatives=4, fold_in_events=0, **config))
        if batched:
            trainer.apply_many(events)
        else:
            for event in events:
                trainer.apply(event)
        tables[name] = {k: np.array(v) for k, v in trainer.tables().items()}
    base = _tables()
    for name in ("user_rows", "item_rows"):
        np.testing.assert_array_equal(tables["counts"][name], base[name], err_msg=name)
        assert not np.array_equal(tables["rows"][name], base[name]), name
        np.testing.assert_array_equal(tables["rows"][name], tables["both"][name], err_msg=name)
    np.testing.assert_array_equal(tables["rows"]["item_popularity"], base["item_popularity"])
    assert not tables["rows"]["item_trend"].any()  # no trend counted from zero
    for name in ("item_popularity", "item_trend", "user_history"):
        np.testing.assert_array_equal(tables["counts"][name], tables["both"][name], err_msg=name)
    np.testing.assert_array_equal(tables["rows"]["user_history"], tables["both"]["user_history"])


def test_a_fold_in_without_row_updates_is_refused_by_name():
    with pytest.raises(ValueError, match="fold_in_events"):
        TrainerConfig(fold_in_events=10, row_updates=False)


@pytest.mark.parametrize("batched", [False, True], ids=["apply", "apply_many"])
def test_a_new_user_is_served_from_history_and_only_fitted_rows_step_by_default(batched):
    """TrainerConfig.user_steps (issue 33): by default a user without a fitted row (new to the
    version: a zero row) takes no steps, a fitted user does and the items do either way; "all"
    steps the new user too, "none" no user at all."""
    new_user, known_user = 7777, 1000
    events = [_event(n, user, 500 + 7 * (n % 5)) for n, user in
              enumerate([new_user, known_user] * 4, start=1)]
    rows = {}
    for steps in ("trained", "all", "none"):
        trainer = SparseTrainer(_tables(), _numpy_tower(),
                                config=TrainerConfig(negatives=4, user_steps=steps))
        if batched:
            trainer.apply_many(events)
        else:
            for event in events:
                trainer.apply(event)
        t = trainer.tables()
        index = {int(u): r for r, u in enumerate(t["user_ids"])}
        rows[steps] = {"new": np.array(t["user_rows"][index[new_user]]),
                       "known": np.array(t["user_rows"][index[known_user]]),
                       "items": np.array(t["item_rows"])}
    base = _tables()
    assert not rows["trained"]["new"].any() and not rows["none"]["new"].any()
    assert rows["all"]["new"].any()
    assert not np.array_equal(rows["trained"]["known"], base["user_rows"][0])
    np.testing.assert_array_equal(rows["none"]["known"], base["user_rows"][0])
    for steps in rows:
        assert not np.array_equal(rows[steps]["items"], base["item_rows"]), steps


def test_an_unknown_user_steps_setting_is_refused_by_name():
    with pytest.raises(ValueError, match="user_steps"):
        TrainerConfig(user_steps="some")
