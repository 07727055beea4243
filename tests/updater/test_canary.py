"""A pushed base as a canary (issue 28): a stable share of users, each arm learning its own users'
events, judged on them, promoted or rolled back.

Against this module's own tritonserver and copy of the updater build; each test pushes its own
canary and ends it, asserting relative to what it saw.
"""

from __future__ import annotations

import shutil
import uuid

import grpc
import numpy as np
import pytest

from clients import Client, UpdaterClient
from exporter.build import build
from exporter.train import METHOD_EASE, TrainConfig
from freshrec.child_process import wait_until
from freshrec.retrain import logged_feedback
from model_repository import contract as c
from model_repository import templates, versions
from model_repository.canary import CANARY_FILE, CanarySplit, read_split, write_split
from model_repository.impressions import wait_recording
from model_repository.serving import Query, Retriever
from tests.fixtures.builds import UPDATER
from updater.main import LOG_FILE

pytestmark = pytest.mark.integration
WAIT_S = 60.0
SAME_CODE = TrainConfig(method=METHOD_EASE, dim=16, seed=4)


def _new_ids(n):
    return [30_000_000 + uuid.uuid4().int % 1_000_000 for _ in range(n)]


def _clicks(pairs):
    prefix = uuid.uuid4().hex
    return [dict(event_id=f"{prefix}-{n}", user_id=int(u), item_id=int(i), kind="click")
            for n, (u, i) in enumerate(pairs)]


def _published(up, offset):
    return wait_until(lambda: (s := up.status())["last_published_offset"] >= offset and s,
                      timeout_s=WAIT_S, interval_s=0.05, what=f"offset {offset} published")


def _retrain(builds, repository, out):
    feedback, offset = logged_feedback(str(repository.parent / "updater" / LOG_FILE))
    return build(out, data=builds.get(UPDATER).ratings, progress=False, tensorrt=False,
                 text_encoder=False, config=SAME_CODE, search=False, feedback=feedback,
                 feedback_offset=offset).repository


def _tables(repository, version):
    manifest, tables = versions.load_tables(repository / c.RETRIEVE / str(version))
    return manifest, {name: np.array(t) for name, t in tables.items()}


def _history(tables, user_id):
    rows = np.flatnonzero(tables["user_ids"] == user_id)
    if not rows.size:
        return None
    history = tables["user_history"][int(rows[0])]
    return [int(tables["item_ids"][i]) for i in history[history >= 0]]


def test_a_canary_serves_a_stable_share_and_each_arm_learns_its_own_users(
        builds, repository, stack, start_updater, tmp_path):
    updater = start_updater()
    base = _retrain(builds, repository, tmp_path / "nightly")
    model_dir = repository / c.RETRIEVE
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        control_version = up.status()["published_version"]
        pushed = up.push(base, canary=0.3, force=True)
        split = read_split(model_dir)
        assert split is not None and split.share == 0.3 and split.first_version == pushed["version"]
        canary = up.status()["canary"]
        assert canary["version"] == pushed["version"] and canary["ended"] == ""
        users = _new_ids(80)
        ours = split.in_canary(users)
        wait_recording(repository / c.RETRIEVE, lambda: client.recommend(1, k=1))
        assert 0 < ours.sum() < len(users)
        for _ in range(2):  # stable: the same arm, every time
            for user, mine in zip(users, ours):
                answer = client.recommend(user, k=5)
                assert answer.arm == ("canary" if mine else "control"), user
                assert answer.version == (pushed["version"] if mine else control_version)
        # each arm learns its own users' events, and publishes its own lineage
        items = _tables(repository, control_version)[1]["item_ids"].tolist()
        theirs = int(np.asarray(users)[ours][0])
        mine = int(np.asarray(users)[~ours][0])
        last = up.feedback_batch(_clicks([(theirs, items[3]), (theirs, items[4]),
                                          (mine, items[7])])).last_offset
        status = _published(up, last)
        canary_version = status["canary"]["version"]
        assert canary_version > pushed["version"] and status["published_version"] > control_version
        canary_manifest, canary_tables = _tables(repository, canary_version)
        assert canary_manifest.meta["arm"] == "canary"
        assert _history(canary_tables, theirs) == [items[3], items[4]]
        assert _history(canary_tables, mine) is None
        _, control_tables = _tables(repository, status["published_version"])
        assert _history(control_tables, mine) == [items[7]]
        assert _history(control_tables, theirs) is None
        assert client.recommend(theirs, k=5).version == canary_version
        assert client.recommend(mine, k=5).version == status["published_version"]
        # the arms' counts: each arm's own users' events, on the answers they were shown, and
        # asked of each arm's own version
        for arm in ("canary", "control", "canary_asked", "control_asked"):
            assert status["canary"][arm]["events"] >= 1, arm
        # forgetting a user forgets them in both arms
        up.forget_user(theirs)
        status = up.status()
        for version in (status["canary"]["version"], status["published_version"]):
            assert _history(_tables(repository, version)[1], theirs) is None
        # a second canary waits for this one; a rollback of versions too
        with pytest.raises(grpc.RpcError) as again:
            up.push(base, canary=0.1, force=True)
        assert "a canary is running already" in again.value.details()
        with pytest.raises(grpc.RpcError) as rollback:
            up.rollback()
        assert rollback.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        ended = up.end_canary(promote=False)
        assert not (model_dir / CANARY_FILE).exists()
        assert client.recommend(theirs, k=5).arm == "control"
        assert client.recommend(theirs, k=5).version == ended["version"]
        assert up.status()["canary"]["ended"] == "rolled back"
        with pytest.raises(grpc.RpcError) as none:
            up.end_canary(promote=True)
        assert none.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_promote_puts_every_user_on_the_canary_lineage_with_the_control_users_events(
        builds, repository, stack, start_updater, tmp_path):
    updater = start_updater()
    base = _retrain(builds, repository, tmp_path / "nightly")
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        pushed = up.push(base, canary=0.5, force=True)
        split = read_split(repository / c.RETRIEVE)
        users = np.asarray(_new_ids(40))
        ours = split.in_canary(users)
        theirs, mine = int(users[ours][0]), int(users[~ours][0])
        items = _tables(repository, pushed["version"])[1]["item_ids"].tolist()
        _published(up, up.feedback_batch(_clicks([(theirs, items[1]), (mine, items[2]),
                                                  (mine, items[5])])).last_offset)
        promoted = up.end_canary(promote=True)
        manifest, tables = _tables(repository, promoted["version"])
        assert "arm" not in manifest.meta  # the control lineage now
        canary_meta = versions.read_manifest(
            repository / c.RETRIEVE / str(pushed["version"])).meta
        assert manifest.meta["user_tower_version"] == canary_meta["user_tower_version"]
        assert manifest.meta["train"] == canary_meta["train"]
        # the canary's own user, and the control user's events since it started, trained in
        assert _history(tables, theirs) == [items[1]]
        assert _history(tables, mine) == [items[2], items[5]]
        for user in (theirs, mine):
            answer = client.recommend(user, k=5)
            assert (answer.version, answer.arm) == (promoted["version"], "control")
        assert up.status()["canary"]["ended"] == "promoted"


def _worse(base, out):
    """``base`` with random item rows and no popularity prior: a base that ranks at random."""
    worse = shutil.copytree(base, out)
    version_dir = worse / c.RETRIEVE / "1"
    manifest, tables = versions.load_tables(version_dir)
    tables = {name: np.array(t) for name, t in tables.items()}
    rows = tables["item_rows"]
    tables["item_rows"] = np.random.default_rng(0).normal(size=rows.shape).astype(rows.dtype)
    meta = {**manifest.meta, "popularity_weight": 0.0, "session_popularity_weight": 0.0}
    shutil.rmtree(version_dir)
    versions.write_version(worse / c.RETRIEVE, 1, tables, meta=meta,
                           feedback_offset=manifest.feedback_offset,
                           files={"model.py": templates.template(c.RETRIEVE)})
    return worse


def _control_picks(repository, version, rounds):
    """(user, item) clicks on what the control version ranks for each of its users: round r
    takes each user's r-th item, so the control's answers hold them and a random base's do not
    (a world the control is made for: the test is of the rule, not of the bases)."""
    version_dir = repository / c.RETRIEVE / str(version)
    retriever = Retriever(version_dir)
    user_ids = np.array(versions.load_table(version_dir, retriever.manifest, "user_ids"))
    answers = retriever.answer([Query(user_id=int(u), k=rounds, exclude_seen=True)
                                for u in user_ids])
    return [(int(u), int(a.item_ids[r])) for r in range(rounds)
            for u, a in zip(user_ids, answers)]


def test_an_automatic_canary_of_a_worse_base_is_rolled_back_by_its_users_hit_rate(
        builds, repository, stack, start_updater, tmp_path):
    updater = start_updater()
    worse = _worse(_retrain(builds, repository, tmp_path / "nightly"), tmp_path / "worse")
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        control = up.status()["published_version"]
        pushed = up.push(worse, canary=0.5, auto=True, force=True)
        pairs = _control_picks(repository, control, rounds=4)
        wait_recording(repository / c.RETRIEVE, lambda: client.recommend(1, k=1))
        shown = {}
        for start in range(0, len(pairs), 60):
            batch = pairs[start:start + 60]
            for user, _ in batch:  # each user asks, is shown its arm's answer, then clicks
                answer = client.recommend(user, k=10)
                shown.setdefault(answer.arm, set()).add(user)
            status = _published(up, up.feedback_batch(_clicks(batch)).last_offset)
            if status["canary"]["ended"]:
                break
        canary = wait_until(lambda: (s := up.status()["canary"])["ended"] and s,
                            timeout_s=WAIT_S, what="the automatic decision")
        assert canary["ended"] == "rolled back", canary
        assert canary["decision"] == "roll back"
        assert canary["canary"]["hit_rate"] < canary["control"]["hit_rate"]
        assert canary["canary"]["high"] < canary["control"]["low"]  # apart beyond the noise
        assert min(canary["canary"]["events"], canary["control"]["events"]) >= 200
        # judged on what each arm showed: every user in one arm all along
        assert not shown["canary"] & shown["control"]
        exposure = up.status()["exposure"]
        assert exposure["impressions"] >= canary["canary"]["events"] + canary["control"]["events"]
        assert canary["canary_asked"]["events"] > 0  # the recomputed question, beside it
        assert not (repository / c.RETRIEVE / CANARY_FILE).exists()
        answer = client.recommend(pairs[0][0], k=5)
        assert answer.arm == "control" and answer.version != pushed["version"]


def test_an_updater_restart_resumes_a_running_canary(builds, repository, stack, start_updater,
                                                    tmp_path):
    """kill -9 mid-canary: the canary's users stay on its lineage throughout, the restarted
    updater goes on learning into it (an event logged before the kill included), and the
    canary can still be decided; one whose versions are all gone is rolled back."""
    updater = start_updater()
    base = _retrain(builds, repository, tmp_path / "nightly")
    with UpdaterClient(updater.url) as up:
        control = up.status()["published_version"]
        pushed = up.push(base, canary=0.5, auto=True, force=True)
        split = read_split(repository / c.RETRIEVE)
        assert split.auto and split.started_offset >= 0
        items = _tables(repository, control)[1]["item_ids"].tolist()
        theirs = next(u for u in _new_ids(50) if split.in_canary([u])[0])
        last = up.feedback_batch(_clicks([(theirs, items[3])])).last_offset
    with Client(stack.grpc_url) as client:
        updater.kill()
        updater.wait_exit()
        assert client.recommend(theirs, k=3).arm == "canary"  # retrieve never left the split
        restarted = start_updater()
        assert read_split(repository / c.RETRIEVE) == split
        with UpdaterClient(restarted.url) as up:
            status = _published(up, last)
            canary = status["canary"]
            assert canary["ended"] == "" and canary["first_version"] == pushed["version"]
            assert canary["share"] == 0.5 and canary["auto"]
            assert _history(_tables(repository, canary["version"])[1], theirs) == [items[3]]
            more = up.feedback_batch(_clicks([(theirs, items[4])])).last_offset
            canary = _published(up, more)["canary"]
            assert _history(_tables(repository, canary["version"])[1], theirs) == [items[3],
                                                                                  items[4]]
            answer = client.recommend(theirs, k=3)
            assert answer.arm == "canary" and answer.version == canary["version"]
            ended = up.end_canary(promote=False)
        assert client.recommend(theirs, k=3).version == ended["version"]
        # a canary none of whose versions remains is rolled back on the next start
        restarted.kill()
        restarted.wait_exit()
        stale = CanarySplit.new(0.5, first_version=10**6, started_at=0.0)
        write_split(repository / c.RETRIEVE, stale)
        again = start_updater()
        assert not (repository / c.RETRIEVE / CANARY_FILE).exists()
        with UpdaterClient(again.url) as up:
            assert up.status()["canary"] is None
