"""Each version's quality record (updater.quality): a real engine and publisher on a hand-written
repository, with a stand-in for Triton (no server: the publisher's probe is all it answers).

The record is checked against a recount done here, one event at a time with the serving code
(model_repository.serving.Retriever), from this test's own account of each user's history; a
version whose item rows were scrambled must score lower on the same events and be shown below
its parent; superseded versions carry their record in a manifest that still verifies, and
`freshrec status` (Admin.Status, through the client it prints) shows it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clients import UpdaterClient
from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.live_history import LiveRead, history_path
from model_repository.serving import Query, Retriever
from model_repository.tower import NumpyTower
from updater.engine import Engine
from updater.events import label, validate
from updater.feedback_log import FeedbackLog
from updater.publisher import Publisher
from updater.quality import K, QualityRecord
from updater.service import grpc_server
from updater.settings import PublishPolicy, QualityPolicy

DIM, HISTORY, CLUSTERS = 8, 5, 4
N_USERS, N_ITEMS = 40, 120  # 10 users and 30 items a cluster
T0 = 1_000_000_000.0
HOUR = 3600.0
CHUNK = 150  # events a version serves before the next publish
ALL = 10_000  # a bound no batch here reaches: every askable event is asked


def _item_ids(rows):
    return np.asarray(rows) * 7 + 500  # ids never equal their rows


def _user_ids(rows):
    return np.asarray(rows) * 3 + 1000


class StandInTriton:
    """The TritonControl calls Publisher makes, without a server: a probed version answers."""

    def __init__(self):
        self.answering = -1

    def load(self, model):
        pass

    def is_live(self):
        return True

    def probe(self, version, user_id, **_):
        self.answering = version

    def answering_version(self, user_id):
        return self.answering

    def serving_versions(self, models):
        return {model: self.answering for model in models}


def _world(seed=0):
    """(tables, meta): users and items in clusters, a user's row its cluster's centre, an item's
    its centre plus noise; a small popularity prior with a session gate of an hour, so the
    record's ages matter; the tower's MLP off (query = user row + pooled history)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    item_cluster = np.arange(N_ITEMS) % CLUSTERS
    user_cluster = np.arange(N_USERS) % CLUSTERS
    history = np.full((N_USERS, HISTORY), -1)
    for u in range(0, N_USERS, 2):  # half the users have a stored history of two items
        history[u, -2:] = rng.choice(np.flatnonzero(item_cluster == user_cluster[u]), 2, replace=False)
    hidden = 4
    tower = NumpyTower(np.zeros((hidden, 2 * DIM)), np.zeros(hidden), np.zeros((DIM, hidden)),
                       np.zeros(DIM)).tables()
    tables = schema.make_tables(
        user_ids=_user_ids(np.arange(N_USERS)), item_ids=_item_ids(np.arange(N_ITEMS)),
        user_rows=centres[user_cluster],
        item_rows=centres[item_cluster] + rng.normal(0, 0.35, (N_ITEMS, DIM)),
        user_history=history, item_popularity=rng.integers(0, 10, N_ITEMS), tower=tower,
        user_last_at=np.where(np.arange(N_USERS) % 4 == 0, T0 - 60, T0 - 2 * 86400.0))
    meta = schema.RetrieveMeta(dim=DIM, history_len=HISTORY, popularity_weight=0.3,
                               session_s=HOUR, session_popularity_weight=0.05)
    return tables, meta.to_dict()


def _stream(n, seed=1, first_id=0):
    """n events in time order: mostly clicks on the user's cluster, some on any item; skips and
    ratings (3 is neutral, 2 negative, 5 positive); a few users the model has no row for; gaps
    of hours now and then (out of session)."""
    rng = np.random.default_rng(seed)
    item_cluster = np.arange(N_ITEMS) % CLUSTERS
    events, t = [], T0
    for i in range(n):
        t += rng.exponential(30.0) + (3 * HOUR if rng.random() < 0.05 else 0.0)
        user = int(rng.integers(0, N_USERS + 4))  # N_USERS.. : new users, cluster by id
        cluster = user % CLUSTERS
        on_cluster = np.flatnonzero(item_cluster == cluster)
        item = int(rng.choice(on_cluster) if rng.random() < 0.8 else rng.integers(0, N_ITEMS))
        kind, value = _kind(rng)
        events.append(validate(f"e{first_id + i}", int(_user_ids(user)), int(_item_ids(item)), kind, value, t,
                               now=t))
    return events


def _kind(rng):
    draw = rng.random()
    if draw < 0.75:
        return "click", 0.0
    if draw < 0.82:
        return "skip", 0.0
    if draw < 0.9:
        return "rating", float(rng.choice([2.0, 3.0, 5.0]))
    return "purchase", 0.0


def _repository(tmp_path, tables, meta) -> Path:
    model_dir = tmp_path / "repository" / "retrieve"
    versions.write_version(model_dir, 1, tables, meta=meta)
    return model_dir


def _engine(model_dir: Path, state: Path, *, per_batch=ALL) -> Engine:
    """A recovered engine over ``model_dir`` (its newest version), publishing only when asked."""
    feedback_log = FeedbackLog(state / "log.sqlite", live_history=history_path(state))
    publisher = Publisher(model_dir.parent, StandInTriton(), keep_versions=10, shard_bytes=1 << 17)
    engine = Engine(feedback_log, publisher, policy=PublishPolicy(every_s=1e9, every_events=10**9),
                    quality=QualityPolicy(events_per_batch=per_batch))
    engine.recover()
    return engine


def _serve(engine: Engine, events, chunk=CHUNK) -> list[int]:
    """Each chunk logged, then trained and published (so a version serves a chunk); returns the
    versions published."""
    published = []
    for start in range(0, len(events), chunk):
        engine.log.append(events[start:start + chunk])
        done, version, _ = engine.publish_now()
        assert done
        published.append(version)
    return published


class _Before:
    """One user's history as the recount keeps it, handed to a Retriever as its live read."""

    def __init__(self, read: LiveRead):
        self.state = read

    def read(self, user_ids, *, clock=False):
        return self.state


def _recount(model_dir: Path, served: dict[int, list], tables) -> dict[int, tuple[int, int]]:
    """version -> (events asked, hits), asking each of its positive events alone, from this
    test's own account of histories: version 1's stored ones, then each positive event."""
    item_ids = tables[schema.ITEM_IDS]
    stored = tables[schema.USER_HISTORY]
    histories = {int(u): list(item_ids[row[row >= 0]]) for u, row in zip(tables[schema.USER_IDS], stored)}
    last_at = dict(zip(tables[schema.USER_IDS].tolist(), tables[schema.USER_LAST_AT].tolist()))
    clock = -np.inf
    counts = {}
    for version, events in served.items():
        reader = _Before(LiveRead({}, {}, -np.inf))
        retriever = Retriever(model_dir / str(version), live_history=reader)
        asked = hits = 0
        for e in events:
            if label(e) <= 0:
                continue
            history = histories.setdefault(e.user_id, [])
            if e.item_id not in history:
                reader.state = LiveRead({e.user_id: np.array(history, np.int64)},
                                        {e.user_id: last_at.get(e.user_id, -np.inf)}, clock)
                (answer,) = retriever.answer([Query(user_id=e.user_id, k=K, exclude_seen=True)])
                asked += 1
                hits += int(e.item_id in answer.item_ids.tolist())
            histories[e.user_id] = (history + [e.item_id])[-HISTORY:]
            last_at[e.user_id] = max(last_at.get(e.user_id, -np.inf), e.timestamp)
            clock = max(clock, e.timestamp)
        counts[version] = (asked, hits)
    return counts


def test_the_recorded_hit_rate_is_a_recount_of_the_versions_answers(tmp_path):
    tables, meta = _world()
    model_dir = _repository(tmp_path, tables, meta)
    engine = _engine(model_dir, tmp_path / "state")
    events = _stream(3 * CHUNK)
    published = _serve(engine, events)
    assert published == [2, 3, 4]
    served = {1 + i: events[i * CHUNK:(i + 1) * CHUNK] for i in range(3)}  # offsets 1.., in order
    counts = _recount(model_dir, served, tables)
    for version, (asked, hits) in counts.items():
        quality = versions.read_manifest(model_dir / str(version)).quality
        assert quality is not None, f"version {version} has no record"
        record = QualityRecord.from_dict(quality)
        assert (record.events, record.hits) == (asked, hits), f"version {version}"
        assert record.hit_rate == pytest.approx(hits / asked)
        assert (record.first_offset, record.last_offset) == ((version - 1) * CHUNK + 1, version * CHUNK)
        assert record.parent == (version - 1 if version > 1 else None)
    assert min(asked for asked, _ in counts.values()) > 50  # not a vacuous comparison
    assert all(hits for _, hits in counts.values())
    running, superseded = engine.quality_records()
    assert (running.version, running.events) == (4, 0)  # serving, nothing asked of it yet
    assert [r.version for r in superseded] == [1, 2, 3]
    assert versions.read_manifest(model_dir / "4").quality is None
    engine.log.close()


def test_at_most_the_bound_is_asked_per_batch(tmp_path):
    tables, meta = _world()
    engine = _engine(_repository(tmp_path, tables, meta), tmp_path / "state", per_batch=8)
    _serve(engine, _stream(2 * CHUNK))
    assert [r.version for r in engine.publisher.quality] == [1, 2]
    assert all(0 < r.events <= 8 for r in engine.publisher.quality)
    assert engine.quality.cpu_s > 0
    engine.log.close()


def _scrambled(tables, seed=3):
    bad = dict(tables)
    bad[schema.ITEM_ROWS] = tables[schema.ITEM_ROWS][np.random.default_rng(seed).permutation(N_ITEMS)]
    return bad


def test_a_version_with_scrambled_item_rows_records_less_and_shows_below_its_parent(tmp_path):
    tables, meta = _world()
    model_dir = _repository(tmp_path, tables, meta)
    events = _stream(2 * CHUNK)
    good = _engine(model_dir, tmp_path / "good")
    _serve(good, events, chunk=len(events))  # version 1 serves them all, 2 follows
    good.log.close()
    good_record = QualityRecord.from_dict(versions.read_manifest(model_dir / "1").quality)
    # the bad version: version 1's tables with the item rows shuffled, published from it
    versions.write_version(model_dir, 3, _scrambled(tables), parent=1, meta=meta)
    bad = _engine(model_dir, tmp_path / "bad")  # a new log with the same events: 3 serves them
    assert bad.publisher.current == 3
    _serve(bad, events, chunk=len(events))
    bad_record = QualityRecord.from_dict(versions.read_manifest(model_dir / "3").quality)
    assert bad_record.events == good_record.events > 100  # the same events asked of both
    assert bad_record.hit_rate < 0.5 * good_record.hit_rate, (bad_record, good_record)
    # its parent's rate beside it, read from version 1's manifest (another engine wrote it)
    assert bad_record.parent == 1 and bad_record.parent_hit_rate == pytest.approx(good_record.hit_rate)
    assert bad_record.below_parent and not good_record.below_parent
    bad.log.close()


def test_superseded_manifests_carry_their_record_verify_and_show_in_status(tmp_path):
    tables, meta = _world()
    model_dir = _repository(tmp_path, tables, meta)
    engine = _engine(model_dir, tmp_path / "state")
    _serve(engine, _stream(2 * CHUNK))
    stored, _ = engine.log.append(_stream(CHUNK, seed=2, first_id=2 * CHUNK))
    assert len(stored) == CHUNK
    engine._consume()  # version 3 serves these: its running record
    rolled, _ = engine.rollback(None)  # supersedes 3 as a publish does
    assert rolled == 4
    for version in (1, 2, 3):
        version_dir = model_dir / str(version)
        manifest = versions.verify_version(version_dir)  # the manifest is in no checksum list
        assert manifest.quality["events"] > 0 and manifest.quality["k"] == K
        assert not list(version_dir.glob(".tmp-*"))  # the rewrite left no temporary behind
        # an old manifest, without the field, still reads
        raw = json.loads((version_dir / versions.MANIFEST).read_text())
        del raw["quality"]
        old = versions.Manifest.from_json(json.dumps(raw), where="old")
        assert old.quality is None and old.tables == manifest.tables
    assert versions.read_manifest(model_dir / "4").quality is None  # serving: no record yet
    server, port = grpc_server("127.0.0.1:0", engine.log, engine, StandInTriton())
    try:
        with UpdaterClient(f"127.0.0.1:{port}") as client:
            status = client.status()  # what `freshrec status` prints
    finally:
        server.stop(grace=0).wait()
        engine.log.close()
    assert [r["version"] for r in status["recent_quality"]] == [1, 2, 3]
    three = versions.read_manifest(model_dir / "3").quality
    shown = status["recent_quality"][-1]
    assert (shown["events"], shown["hits"], shown["parent"]) == (three["events"], three["hits"], 2)
    assert shown["parent_hit_rate"] == pytest.approx(status["recent_quality"][1]["hit_rate"])
    assert status["serving_quality"]["version"] == 4 and status["serving_quality"]["events"] == 0
    assert status["quality_cpu_s"] > 0
    # the new-user row choice (updater.new_user_rows), as the serving version carries it
    shown = status["new_user_rows"]
    assert shown["mode"] == "auto" and shown["candidates"] == [0.0, 0.5, 1.0]
    _, served = versions.load_tables(model_dir / "4")
    assert shown["scale"] == served[schema.NEW_USER_ROW_SCALE][0]
    evidence = engine.trainer.new_user_rows  # what status shows is the trainer's own evidence
    assert (shown["checked"], shown["switches"]) == (evidence.checked, evidence.switches)
    assert shown["hits"] == pytest.approx(evidence.hits.tolist(), abs=0.01)
