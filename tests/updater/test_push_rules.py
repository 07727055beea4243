"""A push's rules without servers: how a pushed base is judged and what its verification names."""

import shutil

import pytest

from exporter.build import build
from exporter.train import METHOD_EASE, TrainConfig
from model_repository import contract as c
from model_repository import versions
from updater.engine import judge_push
from updater.publisher import read_pushed_base


def _report(recall, users=None):
    report = {"model": {"recall@10": recall}}
    return {"test": report if users is None else {**report, "users": users}}


def test_a_base_scoring_below_the_serving_one_by_more_than_the_noise_is_worse():
    # 650 users each: the margin is 2 sqrt((0.17 * 0.83 + 0.12 * 0.88) / 650) = 0.0390
    judged = judge_push(_report(0.17, 650), _report(0.12, 650))
    assert judged.worse and "0.1200 (650 users)" in judged.reason
    assert "below it by more than the noise (0.0390)" in judged.reason
    # the demo's nightly retrain: 0.1657 against 0.1676 on slices of 652 and 644 users
    assert not judge_push(_report(0.1676, 644), _report(0.1657, 652)).worse
    assert not judge_push(_report(0.25, 650), _report(0.30, 650)).worse
    # reports without their users: no noise allowed for
    assert judge_push(_report(0.25), _report(0.2499)).worse
    assert not judge_push(_report(0.25), _report(0.25)).worse


def test_a_base_without_a_report_needs_force_and_an_old_serving_base_lets_any_through():
    assert judge_push(_report(0.25), None).worse
    assert judge_push(_report(0.25), {"settings": {}}).worse
    judged = judge_push({"settings": {}}, _report(0.1))
    assert not judged.worse and "serving base kept no recall@10" in judged.reason


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    return build(out, synthetic=True, progress=False, tensorrt=False, text_encoder=False,
                 synthetic_kwargs=dict(n_users=60, n_items=40, n_events=1000, seed=3),
                 config=TrainConfig(method=METHOD_EASE, dim=8, seed=1), search=False).repository


def test_a_whole_build_verifies(built):
    pushed = read_pushed_base(built)
    assert pushed.meta.dim == 8 and set(pushed.side) == {c.USER_TOWER}
    assert pushed.tables["item_rows"].shape[1] == 8


def test_what_a_pushed_base_lacks_is_named(built, tmp_path):
    no_tower = shutil.copytree(built, tmp_path / "no_tower")
    shutil.rmtree(no_tower / c.USER_TOWER / "1")
    with pytest.raises(versions.VersionError, match="no user_tower/1"):
        read_pushed_base(no_tower)
    flipped = shutil.copytree(built, tmp_path / "flipped")
    onnx = flipped / c.USER_TOWER / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    with pytest.raises(versions.VersionError, match="model.onnx: checksum mismatch"):
        read_pushed_base(flipped)
    text_named = shutil.copytree(built, tmp_path / "text_named")
    version_dir = text_named / c.RETRIEVE / "1"
    manifest = versions.read_manifest(version_dir)
    manifest.meta["text_encoder_version"] = 1
    (version_dir / versions.MANIFEST).write_text(manifest.to_json())
    with pytest.raises(versions.VersionError, match="names text_encoder version 1, but there is no"):
        read_pushed_base(text_named)
