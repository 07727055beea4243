"""exporter.search and the popularity prior: settings chosen on a validation slice, top-K exact."""

import json

import numpy as np
import pytest

from exporter import search as search_module
from exporter.build import BuildError, build
from exporter.synthetic import generate_synthetic
from exporter.train import TrainConfig
from model_repository import contract as c
from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.scoring import popularity_prior, queries_with_prior, rows_with_prior
from model_repository.serving import Query, Retriever

TINY = dict(n_users=150, n_items=80, n_events=4000, n_categories=4, seed=7)
GRID = (TrainConfig(dim=8, epochs=1, seed=3), TrainConfig(dim=8, epochs=1, lr=0.002, seed=3))


@pytest.fixture(scope="module")
def tiny_train():
    from exporter.data import split_by_time

    return split_by_time(generate_synthetic(**TINY, progress=False).interactions)[0]


def test_the_search_is_deterministic_under_a_seed(tiny_train, monkeypatch):
    monkeypatch.setattr(search_module, "MAX_EPOCHS", 3)
    one = search_module.search(tiny_train, grid=GRID)
    two = search_module.search(tiny_train, grid=GRID)
    assert one.record() == two.record()
    assert len(one.trials) == 2 and one.budget_cut == 0
    assert 1 <= one.config.epochs <= 3 and one.prior.weight in search_module.PRIOR_WEIGHTS
    # the score: the geometric mean of the stored-history split's and the next-event recall@10
    best = max(one.trials, key=lambda t: search_module._key(t.valid))
    assert one.valid == best.valid
    for trial in one.trials:
        assert search_module.score(trial.valid) == pytest.approx(
            np.sqrt(trial.valid["recall@10"] * trial.valid["next recall@10"]))
        assert trial.valid["next events"] > 0


def test_the_budget_always_runs_the_first_candidate_and_reports_the_cut(tiny_train, monkeypatch):
    monkeypatch.setattr(search_module, "MAX_EPOCHS", 2)
    said = []
    result = search_module.search(tiny_train, grid=GRID, budget_s=0.0, say=said.append)
    assert len(result.trials) == 1 and result.budget_cut == 1
    assert any("1 of 2 candidates left out" in line for line in said)


def test_build_records_the_chosen_settings_and_serves_the_prior(tmp_path, monkeypatch):
    monkeypatch.setattr(search_module, "candidates", lambda base, **_: list(GRID))
    monkeypatch.setattr(search_module, "MAX_EPOCHS", 2)
    result = build(tmp_path, synthetic=True, synthetic_kwargs=TINY, progress=False,
                   tensorrt=False, text_encoder=False)
    manifest = versions.read_manifest(result.repository / c.RETRIEVE / "1")
    meta = schema.RetrieveMeta.from_manifest(manifest)
    prior = result.search.prior
    assert (meta.popularity_weight, meta.session_s) == (prior.weight, prior.session_s)
    assert meta.session_popularity_weight == (prior.session_weight if prior.session_s else 0.0)
    assert meta.train["session_s"] == prior.session_s
    assert meta.train["settings"]["epochs"] == result.search.config.epochs
    assert json.loads(manifest.to_json())["meta"]["train"]["trials"] == 2


def test_the_prior_column_keeps_top_k_exact(tmp_path):
    rng = np.random.default_rng(4)
    n_items, dim, weight = 500, 6, 0.7
    popularity = rng.integers(0, 50, n_items).astype(np.float32)
    tables = schema.make_tables(
        user_ids=[11, 12, 13], item_ids=np.arange(n_items) + 9000,
        user_rows=rng.normal(size=(3, dim)), item_rows=rng.normal(size=(n_items, dim)),
        user_history=np.full((3, 2), -1), item_popularity=popularity)
    meta = schema.RetrieveMeta(dim=dim, history_len=2, popularity_weight=weight)
    path = versions.write_version(tmp_path / "retrieve", 1, tables, meta=meta.to_dict())
    retriever = Retriever(path, lambda u, h: u + h)
    for user_row, user_id in enumerate((11, 12, 13)):
        (got,) = retriever.answer([Query(user_id=user_id, k=20)])
        counts = np.where(popularity > 0, popularity, np.median(popularity[popularity > 0]))
        scores = tables["item_rows"] @ tables["user_rows"][user_row] + np.float32(weight) * np.log1p(
            counts.astype(np.float64)).astype(np.float32)
        want = sorted(range(n_items), key=lambda r: (-scores[r], r))[:20]
        np.testing.assert_array_equal(got.item_ids, tables["item_ids"][want])
        np.testing.assert_allclose(got.scores, scores[want], rtol=1e-5, atol=1e-5)


def test_prior_helpers_fold_the_bias_into_one_inner_product():
    rows, queries = np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((2, 2), np.float32)
    prior = popularity_prior(np.array([0.0, 1.0, 3.0]), 2.0)  # no events: the median's (2)
    np.testing.assert_allclose(prior, 2.0 * np.log1p([2.0, 1.0, 3.0]), rtol=1e-6)
    folded = queries_with_prior(queries) @ rows_with_prior(rows, prior).T
    np.testing.assert_allclose(folded, queries @ rows.T + prior, rtol=1e-6)


def test_the_search_weighs_the_closed_form_against_training_and_shares_its_fits(tiny_train,
                                                                                monkeypatch):
    from exporter import closed_form
    from exporter.train import METHOD_EASE

    monkeypatch.setattr(search_module, "MAX_EPOCHS", 2)
    fits = []
    real = closed_form.fit_factors
    monkeypatch.setattr(closed_form, "fit_factors", lambda *a, **k: fits.append(1) or real(*a, **k))
    ease = TrainConfig(method=METHOD_EASE, dim=8, seed=3)
    grid = (ease, TrainConfig(method=METHOD_EASE, dim=8, history_weight=1.0, seed=3), GRID[0])
    one = search_module.search(tiny_train, grid=grid)
    assert len(fits) == 1 and len(one.trials) == 3  # the two closed forms share one fit
    assert one.record() == search_module.search(tiny_train, grid=grid).record()
    assert one.record()["settings"]["method"] in ("ease", "softmax")
    if one.config.method == METHOD_EASE:
        assert "lr" not in one.record()["settings"]


def test_the_prior_by_hand_is_served_recorded_and_checked(tmp_path):
    result = build(tmp_path, synthetic=True, synthetic_kwargs=TINY, progress=False,
                   tensorrt=False, text_encoder=False, config=GRID[0], search=False,
                   popularity_weight=0.4, popularity_half_life_s=3 * 86400.0,
                   session_s=1800.0, session_popularity_weight=0.05)
    manifest = versions.read_manifest(result.repository / c.RETRIEVE / "1")
    meta = schema.RetrieveMeta.from_manifest(manifest)
    assert (meta.popularity_weight, meta.popularity_half_life_s) == (0.4, 3 * 86400.0)
    assert (meta.session_s, meta.session_popularity_weight) == (1800.0, 0.05)
    assert meta.train["by_hand"] == {"popularity_weight": 0.4,
                                     "popularity_half_life_s": 3 * 86400.0,
                                     "session_s": 1800.0, "session_popularity_weight": 0.05}
    assert set(meta.train) == {"by_hand", "test"}  # what it did, and how the build scored
    assert set(schema.TREND_TABLES) <= set(manifest.tables)
    # every user's newest training event, for the gate's ages
    last_at = versions.load_table(result.repository / c.RETRIEVE / "1", manifest,
                                  schema.USER_LAST_AT)
    assert np.isfinite(last_at).all() and len(last_at) == manifest.tables[schema.USER_IDS].shape[0]
    with pytest.raises(BuildError, match="popularity_weight must be >= 0"):
        build(tmp_path / "bad", synthetic=True, synthetic_kwargs=TINY, progress=False,
              tensorrt=False, text_encoder=False, config=GRID[0], search=False,
              popularity_weight=-1.0)
