"""Ops push a retrained base (issue 28): `freshrec build --feedback-log` then Admin.Push.

Against this module's own tritonserver and copy of the updater build: each test retrains from
the build's data plus the feedback log as it finds it, pushes, and asserts relative to what it
saw (its own users and events, the versions it saw published), so each passes alone.
"""

from __future__ import annotations

import json
import uuid

import grpc
import numpy as np
import pytest

from clients import Client, UpdaterClient
from exporter.build import build
from exporter.train import METHOD_EASE, TrainConfig
from freshrec.child_process import wait_until
from freshrec.cli import main as cli_main
from freshrec.retrain import logged_feedback
from model_repository import contract as c
from model_repository import versions
from tests.fixtures.builds import UPDATER
from tests.updater.load import recommend_load
from updater import faults
from updater.main import LOG_FILE

pytestmark = pytest.mark.integration
WAIT_S = 60.0
SAME_SIZE = TrainConfig(method=METHOD_EASE, dim=16, seed=4)  # UPDATER's size: switched in process
# the quality gate has its own test; elsewhere a retrain may score a hair below the base an
# earlier test pushed (each slice is a few hundred users), so those push past it
FORCE = True


def _new_id():
    return 20_000_000 + uuid.uuid4().int % 1_000_000


def _clicks(user_id, item_ids):
    prefix = uuid.uuid4().hex
    return [dict(event_id=f"{prefix}-{n}", user_id=user_id, item_id=i, kind="click")
            for n, i in enumerate(item_ids)]


def _tables(repository, version=None):
    model_dir = repository / c.RETRIEVE
    version = versions.latest_version(model_dir) if version is None else version
    manifest, tables = versions.load_tables(model_dir / str(version))
    return manifest, {name: np.array(t) for name, t in tables.items()}


def _history(tables, user_id):
    row = int(np.flatnonzero(tables["user_ids"] == user_id)[0])
    history = tables["user_history"][row]
    return [int(tables["item_ids"][i]) for i in history[history >= 0]]


def _published(up, offset):
    return wait_until(lambda: (s := up.status())["last_published_offset"] >= offset and s,
                      timeout_s=WAIT_S, interval_s=0.05, what=f"offset {offset} published")


def _retrain(builds, repository, out, config, **kwargs):
    """`freshrec build --data <the build's data> --feedback-log <this updater's log>`."""
    feedback, offset = logged_feedback(str(repository.parent / "updater" / LOG_FILE))
    return build(out, data=builds.get(UPDATER).ratings, progress=False, tensorrt=False,
                 text_encoder=False, config=config, search=False, feedback=feedback,
                 feedback_offset=offset, **kwargs)


def test_a_push_serves_the_retrained_base_with_the_events_since_under_load(
        builds, repository, stack, start_updater, tmp_path):
    updater = start_updater()
    _, before = _tables(repository)
    items = before["item_ids"].tolist()
    users = before["user_ids"][:8].tolist()
    early, late = _new_id(), _new_id()
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        _published(up, up.feedback_batch(_clicks(early, items[:4])).last_offset)
        retrained = _retrain(builds, repository, tmp_path / "nightly", SAME_SIZE)
        base_offset = versions.read_manifest(retrained.repository / c.RETRIEVE / "1").feedback_offset
        last = up.feedback_batch(_clicks(late, items[20:23])).last_offset  # after the build's cut
        assert last > base_offset
        with recommend_load(stack.grpc_url, [*users, early, late]) as load:
            pushed = up.push(retrained.repository, force=FORCE)
            wait_until(lambda: pushed["version"] in load.seen, timeout_s=WAIT_S,
                       what="an answer from the pushed version")
        assert load.failures == []
        assert pushed["feedback_offset"] >= last and pushed["replayed"] >= 3
        assert "recall@10" in pushed["judged"]
        status = up.status()
        assert status["published_version"] == pushed["version"]
        record = [r for r in status["recent_publishes"] if r["version"] == pushed["version"]][0]
        assert record["kind"] == "push"
        assert record["swap_s"] > 0 and record["load_s"] == 0  # switched inside retrieve
        assert client.recommend(late, k=5).version == pushed["version"]
    manifest, tables = _tables(repository, pushed["version"])
    assert manifest.feedback_offset == pushed["feedback_offset"]
    assert manifest.meta["train"]["refit_events"] > 0  # the retrained base's own record
    # its user tower is a new user_tower version, loaded beside the one older versions name
    assert manifest.meta["user_tower_version"] > 1
    assert manifest.meta["user_tower_version"] in versions.list_versions(repository / c.USER_TOWER)
    # the early user came in through the retrain (a fitted row), the late one through the replay
    row = int(np.flatnonzero(tables["user_ids"] == early)[0])
    assert np.abs(tables["user_rows"][row]).sum() > 0
    assert _history(tables, late) == items[20:23]


def test_rollback_across_a_push_returns_to_the_old_base_with_its_updates(
        builds, repository, stack, start_updater, tmp_path):
    updater = start_updater()
    items = _tables(repository)[1]["item_ids"].tolist()
    user = _new_id()
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        old = _published(up, up.feedback_batch(_clicks(user, items[5:8])).last_offset)
        old_version = old["published_version"]
        old_meta = versions.read_manifest(repository / c.RETRIEVE / str(old_version)).meta
        pushed = up.push(_retrain(builds, repository, tmp_path / "nightly", SAME_SIZE).repository,
                         force=FORCE)
        assert pushed["version"] > old_version
        back = up.rollback(to=old_version)
        assert client.recommend(user, k=5).version == back["version"]
        manifest, tables = _tables(repository, back["version"])
        # the old base, its tower and its online updates
        assert manifest.meta["user_tower_version"] == old_meta["user_tower_version"]
        assert manifest.meta.get("train") == old_meta.get("train")
        assert _history(tables, user) == items[5:8]
        # and it learns on from there: the next publish is the old base's lineage
        other = _new_id()
        again = _published(up, up.feedback_batch(_clicks(other, items[9:11])).last_offset)
        manifest, tables = _tables(repository, again["published_version"])
        assert manifest.meta["user_tower_version"] == old_meta["user_tower_version"]
        assert tables["user_rows"].shape[1] == 16 and _history(tables, other) == items[9:11]
        assert client.recommend(other, k=5).version == again["published_version"]


def test_a_push_is_refused_for_worse_quality_unless_forced_and_for_a_bad_checksum(
        builds, repository, stack, start_updater, tmp_path):
    updater = start_updater()
    retrained = _retrain(builds, repository, tmp_path / "nightly", SAME_SIZE)
    version_dir = retrained.repository / c.RETRIEVE / "1"
    manifest = versions.read_manifest(version_dir)
    serving_recall = versions.read_manifest(
        repository / c.RETRIEVE / str(versions.latest_version(repository / c.RETRIEVE))
    ).meta["train"]["test"]["model"]["recall@10"]
    # the build's report says it is worse (the manifest is not checksummed: its record is the
    # build's word, and here the word is that it lost)
    manifest.meta["train"]["test"]["model"]["recall@10"] = 0.0
    assert serving_recall > 0.1
    (version_dir / versions.MANIFEST).write_text(manifest.to_json())
    with UpdaterClient(updater.url) as up:
        serving = up.status()["published_version"]
        with pytest.raises(grpc.RpcError) as refused:
            up.push(retrained.repository)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "below it by more than the noise" in refused.value.details()
        assert "--force" in refused.value.details()
        assert up.status()["published_version"] == serving
        # a flipped byte in a shard: named, and nothing served
        broken = tmp_path / "broken"
        import shutil
        shutil.copytree(retrained.repository, broken)
        shard = sorted((broken / c.RETRIEVE / "1" / versions.TABLES_DIR).glob("item_rows.*"))[0]
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))
        with pytest.raises(grpc.RpcError) as bad:
            up.push(broken, force=True)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "checksum mismatch" in bad.value.details() and shard.name in bad.value.details()
        assert up.status()["published_version"] == serving
        # forced, the worse one goes in
        forced = up.push(retrained.repository, force=True)
        assert forced["version"] > serving and "below it by more than" in forced["judged"]


def test_a_crash_mid_push_leaves_the_old_base_serving(builds, repository, stack, start_updater,
                                                     tmp_path):
    updater = start_updater(extra_env={faults.CRASH_ENV: faults.MID_PUSH})
    # a closed form's tower is the same file at one size (a push reuses a tower version with
    # the same checksums): another size, so the crash leaves a new tower version behind
    retrained = _retrain(builds, repository, tmp_path / "nightly",
                         TrainConfig(method=METHOD_EASE, dim=12, seed=4))
    model_dir = repository / c.RETRIEVE
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        serving = up.status()["published_version"]
        towers = versions.list_versions(repository / c.USER_TOWER)
        with pytest.raises(grpc.RpcError):
            up.push(retrained.repository, force=FORCE)
        assert updater.wait_exit() == -9
        assert client.recommend(_new_id(), k=3).version == serving
    assert versions.latest_version(model_dir) == serving
    # the pushed tower was written (and loaded) before the crash: named by no retrieve version
    stray = [v for v in versions.list_versions(repository / c.USER_TOWER) if v not in towers]
    assert stray
    restarted = start_updater()
    user = _new_id()
    items = _tables(repository)[1]["item_ids"].tolist()
    with UpdaterClient(restarted.url) as up, Client(stack.grpc_url) as client:
        status = _published(up, up.feedback_batch(_clicks(user, items[:2])).last_offset)
        meta = versions.read_manifest(model_dir / str(status["published_version"])).meta
        assert meta["user_tower_version"] in towers  # the old base, learning on
        assert client.recommend(user, k=3).version == status["published_version"]
    # the stray tower went with the next publish's garbage collection
    assert not set(stray) & set(versions.list_versions(repository / c.USER_TOWER))


def test_a_base_of_another_tower_and_size_is_loaded_under_load_from_the_cli(
        builds, repository, stack, start_updater, tmp_path, capsys):
    updater = start_updater()
    users = _tables(repository)[1]["user_ids"][:8].tolist()
    out = tmp_path / "sequence"
    _retrain(builds, repository, out,
             TrainConfig(dim=8, epochs=1, history_len=5, tower="sequence", seed=2))
    with recommend_load(stack.grpc_url, users) as load:
        assert cli_main(["push", str(out), "--updater", updater.url, "--force"]) == 0
        pushed = json.loads(capsys.readouterr().out)
        wait_until(lambda: pushed["version"] in load.seen, timeout_s=WAIT_S,
                   what="an answer from the pushed version")
    assert load.failures == []
    with UpdaterClient(updater.url) as up:
        record = [r for r in up.status()["recent_publishes"] if r["version"] == pushed["version"]][0]
    assert record["kind"] == "push" and record["load_s"] > 0  # another size: Triton loads it
    manifest, tables = _tables(repository, pushed["version"])
    assert manifest.meta["tower"] == "sequence" and tables["item_rows"].shape[1] == 8
    # a relative path is the CLI's to resolve; the RPC wants the updater's own absolute view
    with UpdaterClient(updater.url) as up, pytest.raises(grpc.RpcError) as relative:
        up.push("nightly/repository")
    assert relative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "path: must be absolute" in relative.value.details()
