"""bench.trainer_replay's variants name TrainerConfig fields, and nothing else."""

import pytest

from bench.trainer_replay import config_of
from updater.settings import TrainerConfig


def test_variants_set_trainer_config_fields_by_name_and_type():
    assert config_of("off") is None
    assert config_of("shipped") == TrainerConfig()
    assert config_of("user_steps=all,lr=0.01,negatives=4,row_updates=False") == TrainerConfig(
        user_steps="all", lr=0.01, negatives=4, row_updates=False)


@pytest.mark.parametrize("variant", ["speed=3", "lr", "user_steps=some"])
def test_a_bad_variant_is_refused_naming_the_field(variant):
    with pytest.raises(ValueError, match=variant.split("=")[0]):
        config_of(variant)
