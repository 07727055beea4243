"""exporter.closed_form: EASE's weights, their symmetric low-rank factors, and the model they give
through the pooled tower, as serving scores it."""

import numpy as np
import pytest
import torch

from exporter import closed_form
from exporter.data import split_by_time
from exporter.evaluate import evaluate
from exporter.search import candidates
from exporter.synthetic import generate_synthetic
from exporter.train import METHOD_EASE, TrainConfig, fit_closed_form, train_base_model
from tests.fixtures.serving_pool import pool_numpy

SMALL = dict(n_users=300, n_items=120, n_events=12000, n_categories=6, seed=5)


@pytest.fixture(scope="module")
def small_split():
    return split_by_time(generate_synthetic(**SMALL, progress=False).interactions)


def _random_matrix(seed=0, users=60, items=25):
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(rng.random((users, items)) < 0.2)
    return closed_form.binary_matrix(rows, cols, (users, items))


def test_ease_weights_solve_the_ridge_regression_with_a_zero_diagonal():
    matrix = _random_matrix()
    l2 = 7.0
    weights = closed_form.ease_weights(matrix, l2)
    gram = (matrix.T @ matrix).toarray()
    assert np.all(np.diag(weights) == 0)
    # stationarity of ||X - XB||^2 + l2 ||B||^2 under diag(B) = 0: (G + l2 I) B - G is diagonal
    residual = (gram + l2 * np.eye(len(gram))) @ weights - gram
    off = residual - np.diag(np.diag(residual))
    np.testing.assert_allclose(off, 0.0, atol=1e-9)


def test_the_factors_are_the_symmetric_part_s_best_positive_low_rank_approximation():
    weights = closed_form.ease_weights(_random_matrix(seed=1), 5.0)
    q = closed_form.top_eigen_factors(weights, 6)
    values, vectors = np.linalg.eigh((weights + weights.T) / 2)
    top = np.argsort(-values)[:6]
    want = (vectors[:, top] * values[top]) @ vectors[:, top].T
    np.testing.assert_allclose(q @ q.T, want, atol=1e-9)


def test_the_partial_eigensolver_agrees_with_the_full_one(monkeypatch):
    weights = closed_form.ease_weights(_random_matrix(seed=2, users=200, items=80), 3.0)
    full = closed_form.top_eigen_factors(weights, 5)
    monkeypatch.setattr(closed_form, "FULL_EIGH_ITEMS", 10)
    partial = closed_form.top_eigen_factors(weights, 5)
    np.testing.assert_allclose(partial, full, atol=1e-6)  # signs fixed the same way


def test_the_served_query_scores_the_whole_and_the_recent_history(small_split):
    train, _ = small_split
    config = TrainConfig(method=METHOD_EASE, dim=16, ease_l2=50.0, history_weight=0.5)
    model = train_base_model(train, config=config, progress=False)
    # the tower's MLP is off: query = u + recency-pooled item rows, exactly
    pooled = pool_numpy(model.item_rows, model.user_history, config.recency_decay)
    np.testing.assert_allclose(model.user_queries(), model.user_rows + pooled, atol=1e-5)
    # the user rows are unit (or zero) and the whole history's direction in the factor space
    norms = np.linalg.norm(model.user_rows, axis=1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, atol=1e-5)
    # an exported model is an ordinary pooled one
    assert model.tower.kind == "pooled"
    with torch.no_grad():
        assert all(float(p.abs().sum()) == 0 for p in model.tower.mix[-1].parameters())


def test_the_fit_is_deterministic_and_shared_across_history_weights(small_split):
    train, _ = small_split
    configs = [TrainConfig(method=METHOD_EASE, dim=8, history_weight=w) for w in (0.25, 1.0)]
    cache: dict = {}
    one = fit_closed_form(train, configs=configs, cache=cache)
    two = fit_closed_form(train, configs=configs)
    assert len(cache) == 1
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.item_rows, b.item_rows)
        np.testing.assert_array_equal(a.user_rows, b.user_rows)
    # the history weight only rescales the item rows
    ratio = one[1].item_rows[np.abs(one[0].item_rows) > 1e-6] / one[0].item_rows[
        np.abs(one[0].item_rows) > 1e-6]
    np.testing.assert_allclose(ratio, 4.0, rtol=1e-5)


def test_it_beats_popularity_on_the_generator(small_split):
    train, test = small_split
    model = train_base_model(train, config=TrainConfig(method=METHOD_EASE, dim=16),
                             progress=False)
    results = evaluate(model, train, test)
    assert results["model"]["recall@10"] > results["popularity"]["recall@10"]
    assert results["model"]["ndcg@10"] > results["popularity"]["ndcg@10"]


def test_bad_settings_and_catalogues_are_refused(monkeypatch, small_split):
    with pytest.raises(ValueError, match="method 'ease' fits the pooled tower only"):
        TrainConfig(method=METHOD_EASE, tower="sequence")
    with pytest.raises(ValueError, match="TrainConfig.method must be one of"):
        TrainConfig(method="magic")
    with pytest.raises(ValueError, match="TrainConfig.ease_l2 must be > 0"):
        TrainConfig(method=METHOD_EASE, ease_l2=0.0)
    monkeypatch.setattr(closed_form, "MAX_ITEMS", 10)
    with pytest.raises(ValueError, match="at most 10 items with events"):
        train_base_model(small_split[0], config=TrainConfig(method=METHOD_EASE, dim=4),
                         progress=False)


def test_the_search_offers_the_closed_form_only_where_it_fits():
    base = TrainConfig()
    assert any(c.method == METHOD_EASE for c in candidates(base, n_items=1000))
    assert not any(c.method == METHOD_EASE
                   for c in candidates(base, n_items=closed_form.MAX_ITEMS + 1))
    assert not any(c.method == METHOD_EASE for c in candidates(TrainConfig(tower="sequence")))


def test_the_cooccurrence_map_gives_an_unseen_item_the_coordinates_of_its_exact_ease_column():
    """exporter.closed_form.cooccurrence_map (issue 33): an item outside the fit, once its
    co-occurrences are summed through the map, has the least-squares coordinates in Q's span of
    the column EASE itself gives it when refitted with it (the other items' columns held)."""
    rng = np.random.default_rng(4)
    users, items, l2 = 120, 30, 6.0
    dense = (rng.random((users, items + 1)) < 0.25).astype(np.float64)
    fitted = closed_form.binary_matrix(*np.nonzero(dense[:, :items]), (users, items))
    weights, p_diagonal = closed_form.ease_weights_and_diagonal(fitted, l2)
    np.testing.assert_array_equal(weights, closed_form.ease_weights(fitted, l2))
    q = closed_form.top_eigen_factors(weights, 8)
    cooc = closed_form.cooccurrence_map(weights, p_diagonal, q)
    counts = dense[:, :items].T @ dense[:, items]  # the new item's co-occurrence counts c_j
    # EASE refitted on all 31 items: the new item's column, restricted to the fitted items
    full = closed_form.ease_weights(closed_form.binary_matrix(*np.nonzero(dense), dense.shape), l2)
    want, *_ = np.linalg.lstsq(q, full[:items, items], rcond=None)
    np.testing.assert_allclose(counts @ cooc, want, rtol=1e-8, atol=1e-10)


def test_the_served_fit_keeps_the_cooccurrence_map_and_the_search_s_candidates_do_not(small_split):
    train, _ = small_split
    config = TrainConfig(method=METHOD_EASE, dim=8, ease_l2=50.0, history_weight=0.5)
    (served,) = fit_closed_form(train, configs=[config])
    (candidate,) = fit_closed_form(train, configs=[config], cooccurrence=False)
    assert served.item_cooccurrence.shape == served.item_rows.shape
    assert candidate.item_cooccurrence is None
    np.testing.assert_array_equal(candidate.item_rows, served.item_rows)
