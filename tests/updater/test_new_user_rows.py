"""A new user's row chosen per deployment (updater.new_user_rows, issue 33).

Two small worlds of clustered items and users new to the version tell the choice apart: in one
each user keeps a home cluster and wanders off it now and then (the mean of their history
knows where they belong, their last few items do not); in the other each user moves cluster
every session (their last few items know where they are, the mean of their history points at
sessions gone). The trainer, set to choose from its own traffic, must give new users a row in
the first and keep their rows zero in the second; a fixed scale gives the row the module
describes, and such users neither step nor count as fitted after a restart."""

from __future__ import annotations

import numpy as np
import pytest

from model_repository import retrieve_schema as schema
from model_repository.tower import NumpyTower
from tests.updater.test_trainer import _event, _numpy_tower, _tables
from updater.new_user_rows import MIN_DISCORDANT, NewUserRowChoice, Z, rows_from_histories
from updater.settings import TrainerConfig
from updater.trainer import SparseTrainer

DIM, HISTORY, CLUSTERS, DECAY = 8, 20, 4, 0.5
N_USERS, N_ITEMS, NEW_USERS = 40, 200, 40


def _world(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    item_cluster = np.arange(N_ITEMS) % CLUSTERS
    tower = NumpyTower(np.zeros((4, 2 * DIM)), np.zeros(4), np.zeros((DIM, 4)), np.zeros(DIM))
    tables = schema.make_tables(
        user_ids=np.arange(N_USERS) + 1000, item_ids=np.arange(N_ITEMS) + 500,
        user_rows=centres[np.arange(N_USERS) % CLUSTERS],
        item_rows=centres[item_cluster] + rng.normal(0, 0.5, (N_ITEMS, DIM)),
        user_history=np.full((N_USERS, HISTORY), -1), item_popularity=np.ones(N_ITEMS))
    return tables, tower, item_cluster


def _stream(item_cluster, *, sessions: bool, seed=1, per_user=40):
    """New users' clicks, interleaved: a home cluster with 35 % of clicks anywhere, or (sessions)
    a new cluster every 8 clicks."""
    rng = np.random.default_rng(seed)
    plans = []
    for u in range(NEW_USERS):
        home = u % CLUSTERS
        clusters = []
        for n in range(per_user):
            if sessions:
                clusters.append((home + n // 8) % CLUSTERS)
            else:
                clusters.append(home if rng.random() < 0.65 else int(rng.integers(CLUSTERS)))
        items = [int(rng.choice(np.flatnonzero(item_cluster == c))) for c in clusters]
        plans.append([(5000 + u, 500 + i) for i in items])
    order = [pair for step in zip(*plans) for pair in step]  # users take turns
    return [_event(n, user, item) for n, (user, item) in enumerate(order, start=1)]


def _learned(sessions: bool, mode="auto"):
    tables, tower, item_cluster = _world()
    trainer = SparseTrainer(tables, tower, recency_decay=DECAY,
                            config=TrainerConfig(negatives=4, new_user_rows=mode))
    events = _stream(item_cluster, sessions=sessions)
    for start in range(0, len(events), 100):
        trainer.apply_many(events[start:start + 100])
    return trainer


def test_new_users_get_a_row_where_their_history_mean_knows_them_better():
    trainer = _learned(sessions=False)
    choice = trainer.new_user_rows
    assert choice.checked >= 200
    assert choice.scale > 0, choice.status()
    t = trainer.tables()
    new = t[schema.USER_FITTED] == 0
    assert new.sum() == NEW_USERS
    assert t[schema.NEW_USER_ROW_SCALE][0] == choice.scale
    want = rows_from_histories(t[schema.ITEM_ROWS], t[schema.USER_HISTORY][new], scale=choice.scale,
                               length=1.0)  # the fitted rows here are unit
    # each new user's row was set at their last positive event, before the steps that followed
    cos = np.einsum("ud,ud->u", t[schema.USER_ROWS][new], want) / (
        np.linalg.norm(t[schema.USER_ROWS][new], axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() > 0.95
    np.testing.assert_allclose(np.linalg.norm(t[schema.USER_ROWS][new], axis=1), choice.scale,
                               rtol=1e-5)


def test_new_users_keep_no_row_where_their_sessions_move_on():
    trainer = _learned(sessions=True)
    assert trainer.new_user_rows.checked >= 200
    assert trainer.new_user_rows.scale == 0, trainer.new_user_rows.status()
    t = trainer.tables()
    assert not t[schema.USER_ROWS][t[schema.USER_FITTED] == 0].any()


def test_the_choice_moves_only_when_a_candidate_wins_a_sign_test():
    choice = NewUserRowChoice.of("auto", scale=0.0)
    assert (choice.scale, choice.candidates) == (0.0, (0.0, 0.5, 1.0))
    tie = np.array([True, False, False]), np.array([False, False, True])
    for _ in range(200):  # as many losses as wins: never moves
        for hit in tie:
            assert not choice.observe(hit)
    assert choice.scale == 0.0
    for _ in range(200):  # everyone hits: no evidence either way
        assert not choice.observe(np.array([True, True, True]))
    wins = 0
    while not choice.observe(np.array([False, False, True])):  # 1.0 hits, 0 misses
        wins += 1
        assert choice.hits[2] - choice.hits[0] <= Z * np.sqrt(choice.discordant[2, 0])
    # it moved at the first margin of wins over Z * sqrt(the pairs where exactly one hit)
    assert choice.scale == 1.0 and choice.switches == 1 and wins < 100
    assert choice.hits[2] - choice.hits[0] > Z * np.sqrt(choice.discordant[2, 0]) >= 0
    assert choice.discordant[2, 0] >= MIN_DISCORDANT
    # a fixed mode never checks; an auto trainer resumes at the version's scale
    assert not NewUserRowChoice.of("0.5", scale=0.0).deciding
    assert NewUserRowChoice.of("auto", scale=0.5).scale == 0.5


@pytest.mark.parametrize("batched", [False, True], ids=["apply", "apply_many"])
def test_a_new_users_row_is_their_history_mean_and_never_steps(batched):
    new_user = 7777
    base = _tables()
    trainer = SparseTrainer(base, _numpy_tower(), config=TrainerConfig(negatives=4, new_user_rows="1"))
    events = [_event(n, new_user, 500 + 7 * n) for n in range(1, 5)]
    if batched:
        trainer.apply_many(events)
    else:
        for event in events:
            trainer.apply(event)
    t = {k: np.array(v) for k, v in trainer.tables().items()}
    row = trainer.user_index[new_user]
    assert t[schema.USER_FITTED][row] == 0 and t[schema.USER_FITTED][:row].all()
    length = np.median(np.linalg.norm(base[schema.USER_ROWS], axis=1))
    assert np.linalg.norm(t[schema.USER_ROWS][row]) == pytest.approx(length, rel=1e-5)
    # restarted from the published tables it is still not fitted: a skip moves no user row
    again = SparseTrainer(t, _numpy_tower(), config=TrainerConfig(negatives=4, new_user_rows="1"))
    again.apply(_event(9, new_user, 500 + 7 * 9, kind="skip"))
    np.testing.assert_array_equal(again.tables()[schema.USER_ROWS][row], t[schema.USER_ROWS][row])
    # set to "0", every such row goes back to zero at once (history alone)
    off = SparseTrainer(t, _numpy_tower(), config=TrainerConfig(negatives=4, new_user_rows="0"))
    assert not off.tables()[schema.USER_ROWS][row].any()
    assert row in off.changed_rows()[schema.USER_ROWS]


def test_a_build_version_has_its_nonzero_rows_as_the_fitted_ones():
    base = _tables()
    base[schema.USER_ROWS][3] = 0.0
    fitted = SparseTrainer(base, _numpy_tower()).tables()[schema.USER_FITTED]
    assert fitted.dtype == np.uint8
    assert fitted.tolist() == [0 if r == 3 else 1 for r in range(len(base[schema.USER_IDS]))]
