"""model_repository.tower: the numpy tower computes what the torch tower and its ONNX export
compute, builds write it into every retrieve version, and retrieve serves from it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporter.build import retrieve_tables
from exporter.onnx_export import export_user_tower
from exporter.towers import numpy_tower
from model_repository import versions
from model_repository.contract import HISTORY_EMB, QUERY, USER_EMB
from model_repository.serving import Query, Retriever
from model_repository.tower import TOWER_TABLES, NumpyTower, TowerShapeError
from tests.test_onnx_export import DIM, random_tower


def _inputs(batch, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, DIM)).astype(np.float32),
            rng.normal(size=(batch, DIM)).astype(np.float32))


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_numpy_tower_matches_torch_and_onnx(tmp_path, batch):
    tower = random_tower()
    user, history = _inputs(batch)
    with torch.no_grad():
        want = tower(torch.from_numpy(user), torch.from_numpy(history)).numpy()
    got = numpy_tower(tower)(user, history)
    assert got.dtype == np.float32 and got.shape == (batch, DIM)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    session = ort.InferenceSession(str(export_user_tower(tower, tmp_path / "m.onnx", dim=DIM)),
                                   providers=["CPUExecutionProvider"])
    (onnx_query,) = session.run([QUERY], {USER_EMB: user, HISTORY_EMB: history})
    np.testing.assert_allclose(got, onnx_query, rtol=1e-5, atol=1e-5)


def test_relu_matters_a_linear_stand_in_differs():
    """The check above can fail: dropping the ReLU changes the answer for this tower."""
    tower = numpy_tower(random_tower())
    user, history = _inputs(4)
    linear = user + history + (np.concatenate([user, history], 1) @ tower.w1.T + tower.b1) \
        @ tower.w2.T + tower.b2
    assert np.abs(tower(user, history) - linear).max() > 0.1


def test_tables_round_trip_and_missing_tables_mean_no_tower():
    tower = numpy_tower(random_tower())
    tables = tower.tables()
    assert tuple(tables) == TOWER_TABLES
    user, history = _inputs(3)
    np.testing.assert_array_equal(NumpyTower.from_tables(tables)(user, history), tower(user, history))
    del tables["tower_b2"]
    assert NumpyTower.from_tables(tables) is None


def test_tables_that_do_not_fit_together_are_an_error():
    tables = numpy_tower(random_tower()).tables()
    with pytest.raises(TowerShapeError, match=r"w1 \(48, 48\), b1 \(47,\)"):
        NumpyTower(tables["tower_w1"], tables["tower_b1"][:-1], tables["tower_w2"],
                   tables["tower_b2"])


def _version(tmp_path, tower_tables):
    rng = np.random.default_rng(0)
    tables = {
        "user_ids": np.arange(6, dtype=np.int64) + 100,
        "item_ids": np.arange(40, dtype=np.int64) + 500,
        "user_rows": rng.normal(size=(6, DIM)).astype(np.float32),
        "item_rows": rng.normal(size=(40, DIM)).astype(np.float32),
        "user_history": rng.integers(0, 40, size=(6, 3)).astype(np.int64),
        "item_popularity": np.ones(40, np.float32),
        **tower_tables,
    }
    return versions.write_version(tmp_path / "retrieve", 1, tables), tables


def test_retrieve_serves_from_the_version_tower_tables(tmp_path):
    tower = numpy_tower(random_tower())
    path, tables = _version(tmp_path, tower.tables())

    def remote_tower(user_emb, history_emb):
        raise AssertionError("a version with tower tables must not call the user_tower model")

    retriever = Retriever(path, remote_tower)
    assert retriever.tower_from_tables
    (answer,) = retriever.answer([Query(user_id=102, k=5, history=np.array([510]))])
    query = tower(tables["user_rows"][2][None], tables["item_rows"][10][None])[0]
    want = np.argsort(-(tables["item_rows"] @ query), kind="stable")[:5] + 500
    np.testing.assert_array_equal(answer.item_ids, want)


def test_a_version_without_tower_tables_needs_a_tower(tmp_path):
    path, _ = _version(tmp_path, {})
    with pytest.raises(ValueError, match="no tower tables and no tower was given"):
        Retriever(path)
    assert not Retriever(path, lambda u, h: u + h).tower_from_tables


def test_build_writes_the_trained_tower_into_retrieve():
    from bench.e2e import random_model

    model = random_model(n_items=20, n_users=5, dim=DIM)
    tables = retrieve_tables(model)
    for name, table in numpy_tower(model.tower).tables().items():
        np.testing.assert_array_equal(tables[name], table)


def test_warm_up_answers_through_the_scoring_path(tmp_path, monkeypatch):
    tower = numpy_tower(random_tower())
    path, _ = _version(tmp_path, tower.tables())
    retriever = Retriever(path)
    scored = []
    real = retriever._top_k
    monkeypatch.setattr(retriever, "_top_k", lambda *a: scored.append(1) or real(*a))
    retriever.warm_up()
    assert scored == [1]
