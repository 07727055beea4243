"""The popularity prior's half-life: trend counts, their choice on valid, serving and the updater.

The trend counts are one definition (model_repository.scoring.trend_counts) met three ways: the
build counts the training window in one pass, the updater adds event after event and settles at
each publish, serving ranks by them; each is checked against that definition.
"""

import numpy as np
import pytest

from exporter import search as search_module
from exporter.data import Interactions
from exporter.train import TrainConfig, fit_closed_form
from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.scoring import (
    MAX_TREND_EXPONENT,
    TREND_MIN_MASS_SHARE,
    floored_trend,
    popularity_prior,
    settle_trend,
    trend_counts,
    trend_weights,
)
from model_repository.serving import Query, Retriever
from tests.updater.test_trainer import _numpy_tower, _tables
from updater.events import validate
from updater.trainer import SparseTrainer

DAY = 86400.0
T0 = 1_000_000_000.0  # 2001: a historical log's times are accepted as they happened


def test_an_event_counts_one_at_the_reference_time_and_half_a_half_life_before():
    weights = trend_weights(np.array([T0, T0 - DAY, T0 - 3 * DAY, T0 + DAY]), as_of=T0,
                            half_life_s=DAY)
    np.testing.assert_allclose(weights, [1.0, 0.5, 0.125, 2.0])
    ancient = trend_weights(np.array([0.0]), as_of=T0, half_life_s=1.0)
    assert ancient[0] == 2.0 ** -MAX_TREND_EXPONENT > 0  # clipped: never 0, never cold
    with pytest.raises(ValueError, match="half_life_s"):
        trend_weights(np.array([T0]), as_of=T0, half_life_s=0.0)


def test_counts_settled_later_equal_counts_made_then():
    rng = np.random.default_rng(0)
    rows, times = rng.integers(0, 30, 500), T0 + rng.uniform(0, 20 * DAY, 500)
    at = trend_counts(rows, times, 30, as_of=T0 + 20 * DAY, half_life_s=2 * DAY)
    settled = at.copy()
    settle_trend(settled, as_of=T0 + 20 * DAY, to=T0 + 27 * DAY, half_life_s=2 * DAY)
    np.testing.assert_allclose(
        settled, trend_counts(rows, times, 30, as_of=T0 + 27 * DAY, half_life_s=2 * DAY),
        rtol=1e-5)
    long_gone = at.copy()
    settle_trend(long_gone, as_of=T0, to=T0 + 10_000 * DAY, half_life_s=DAY)
    assert ((long_gone > 0) == (at > 0)).all()  # an item with events keeps a count above 0


def _drifting_log(n_users=120, n_items=40, days=60, seed=1) -> Interactions:
    """Users take items 0-19 in the first half of the log and 20-39 in the second half."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(T0, T0 + days * DAY, 6000))
    late = times > T0 + days * DAY / 2
    hot = np.where(late, 20, 0) + np.minimum(rng.zipf(1.6, times.size) - 1, 19)
    return Interactions.from_arrays(rng.integers(0, n_users, times.size), hot,
                                    np.ones(times.size, np.float32), times.astype(np.int64))


def test_the_search_chooses_a_half_life_where_interest_drifts():
    drifting = _drifting_log()
    grid = [TrainConfig(method="ease", dim=8, ease_l2=10.0, history_weight=1.0)]
    chosen = search_module.search(drifting, grid=grid)
    assert chosen.popularity_half_life_s > 0
    assert chosen.recent_popularity_valid["recall@10"] > chosen.popularity_valid["recall@10"]
    assert chosen.record()["popularity_half_life_s"] == chosen.popularity_half_life_s
    again = search_module.search(drifting, grid=grid)
    assert again.record() == chosen.record()  # deterministic


def test_the_model_counts_its_trend_as_of_its_last_event():
    log = _drifting_log()
    (model,) = fit_closed_form(log, items=None, configs=[
        TrainConfig(method="ease", dim=8, ease_l2=10.0, history_weight=1.0)])
    model.set_trend(log, 5 * DAY)
    rows = np.searchsorted(model.item_ids, log.item_ids)
    np.testing.assert_allclose(model.item_trend, trend_counts(
        rows, log.timestamps, len(model.item_ids), as_of=float(log.timestamps.max()),
        half_life_s=5 * DAY), rtol=1e-6)
    assert model.prior_counts() is model.item_trend  # at the cut the floor adds nothing
    assert model.trend_min_mass == pytest.approx(
        TREND_MIN_MASS_SHARE * float(model.item_trend.sum()), rel=1e-6)
    model.set_trend(log, 0.0)
    assert model.prior_counts() is model.item_popularity and model.item_trend is None


def test_serving_ranks_the_prior_and_the_fallback_by_the_trend(tmp_path):
    rng = np.random.default_rng(3)
    n_items, dim, weight = 60, 4, 0.5
    all_time = rng.integers(1, 50, n_items).astype(np.float32)
    trend = rng.uniform(0.01, 9.0, n_items).astype(np.float32)
    tables = schema.make_tables(
        user_ids=[1, 2], item_ids=np.arange(n_items) + 100, user_rows=rng.normal(size=(2, dim)),
        item_rows=rng.normal(size=(n_items, dim)), user_history=np.full((2, 3), -1),
        item_popularity=all_time, trend=(trend, T0))
    meta = schema.RetrieveMeta(dim=dim, history_len=3, popularity_weight=weight,
                               popularity_half_life_s=DAY)
    retriever = Retriever(versions.write_version(tmp_path / "retrieve", 1, tables,
                                                 meta=meta.to_dict()), lambda u, h: u + h)
    (known, stranger) = retriever.answer([Query(user_id=1, k=10), Query(user_id=999, k=10)])
    scores = tables["item_rows"] @ tables["user_rows"][0] + popularity_prior(trend, weight)
    np.testing.assert_array_equal(known.item_ids, 100 + np.argsort(-scores, kind="stable")[:10])
    np.testing.assert_array_equal(stranger.item_ids, 100 + np.argsort(-trend, kind="stable")[:10])


def test_after_a_gap_the_all_time_counts_carry_the_minimum_mass_and_new_events_add_to_them():
    all_time = np.array([500.0, 300.0, 100.0, 60.0, 40.0])  # sums to 1,000
    trend = np.array([40.0, 30.0, 20.0, 7.0, 3.0], np.float32)  # sums to 100
    assert floored_trend(trend, all_time, min_mass=100.0) is trend  # enough mass: the trend
    np.testing.assert_array_equal(floored_trend(trend, all_time, min_mass=0.0), trend)
    # a year later the trend has decayed to nothing: all-time popularity carries the mass
    gone = np.full(5, 2.0 ** -MAX_TREND_EXPONENT, np.float32)
    np.testing.assert_allclose(floored_trend(gone, all_time, min_mass=50.0),
                               0.05 * all_time, rtol=1e-5)
    # ... and 5 fresh events on the least popular item lift it without taking the top
    clicked = gone.copy()
    clicked[4] += 5.0
    counts = floored_trend(clicked, all_time, min_mass=50.0)
    np.testing.assert_allclose(counts, [22.5, 13.5, 4.5, 2.7, 6.8], rtol=1e-5)  # shortfall 45
    assert np.argmax(counts) == 0 and counts[4] > counts[2]
    # the plain trend (no floor) is what issue 27 found: those 5 events decide the top alone
    assert np.argmax(floored_trend(clicked, all_time, min_mass=0.0)) == 4


def test_serving_reads_the_floor_from_the_meta(tmp_path):
    all_time = np.array([50.0, 30.0, 10.0, 6.0, 4.0], np.float32)
    trend = np.array([0.0, 0.0, 0.0, 0.0, 5.0], np.float32)  # one item's fresh events, after a gap
    tables = schema.make_tables(
        user_ids=[1], item_ids=np.arange(5) + 100, user_rows=np.ones((1, 2)),
        item_rows=np.ones((5, 2)), user_history=np.full((1, 3), -1), item_popularity=all_time,
        trend=(trend, T0))
    for min_mass, first in ((0.0, 104), (100.0, 100)):
        meta = schema.RetrieveMeta(dim=2, history_len=3, popularity_weight=0.5,
                                   popularity_half_life_s=DAY, trend_min_mass=min_mass)
        path = versions.write_version(tmp_path / f"r{int(min_mass)}", 1, tables, meta=meta.to_dict())
        (stranger,) = Retriever(path, lambda u, h: u + h).answer([Query(user_id=999, k=5)])
        assert stranger.item_ids[0] == first, (min_mass, stranger.item_ids)
    with pytest.raises(schema.SchemaError, match="trend_min_mass"):
        schema.RetrieveMeta(dim=2, history_len=3, trend_min_mass=-1.0)


def test_a_half_life_without_its_tables_or_below_zero_is_refused_by_name():
    tables = _tables()
    with pytest.raises(schema.SchemaError, match="item_trend"):
        schema.prior_counts(tables, schema.RetrieveMeta(dim=8, history_len=5,
                                                        popularity_half_life_s=DAY))
    with pytest.raises(schema.SchemaError, match="popularity_half_life_s"):
        schema.RetrieveMeta(dim=8, history_len=5, popularity_half_life_s=-1.0)


def _event(offset, user_id, item_id, timestamp, kind="click"):
    e = validate(f"e{offset}", user_id, item_id, kind, 0.0, timestamp, now=T0 + 1000 * DAY)
    return type(e)(e.event_id, e.user_id, e.item_id, e.kind, e.value, e.timestamp, offset=offset)


def test_the_updater_streams_the_same_counts_the_build_makes_in_one_pass():
    """Build's counts at T0, then events (some out of order, a new item, a skip, a publish in
    between, one gap of 40 half-lives) streamed in: the published trend is the one-pass count
    of every positive event as of the newest one."""
    base = _tables()
    rng = np.random.default_rng(5)
    n_items, half_life = len(base["item_ids"]), DAY
    built_rows, built_times = rng.integers(0, n_items, 200), T0 - rng.uniform(0, 10 * DAY, 200)
    base[schema.ITEM_TREND] = trend_counts(built_rows, built_times, n_items, as_of=T0,
                                           half_life_s=half_life)
    base[schema.TREND_AS_OF] = np.array([T0])
    trainer = SparseTrainer(base, _numpy_tower(), popularity_half_life_s=half_life)
    users, items = base["user_ids"], base["item_ids"]
    stream = [(int(users[i % 6]), int(items[rng.integers(0, n_items)]), T0 + t)
              for i, t in enumerate([3600, 7200, -5 * 3600, 2 * DAY, 2.5 * DAY])]
    stream += [(int(users[0]), 99_999, T0 + 3 * DAY),  # a new item
               (int(users[1]), int(items[4]), T0 + 40 * DAY)]  # far later: a settle on the way
    counted = []
    for offset, (user, item, when) in enumerate(stream):
        trainer.apply(_event(offset, user, item, when))
        counted.append((trainer.item_index[item], when))
        if offset == 2:
            published = trainer.tables()
            assert published[schema.TREND_AS_OF][0] == T0 + 7200  # the newest so far
    trainer.apply(_event(99, int(users[2]), int(items[7]), T0 + 41 * DAY, kind="skip"))
    out = trainer.tables()
    rows = np.concatenate([built_rows, [r for r, _ in counted]])
    times = np.concatenate([built_times, [t for _, t in counted]])
    newest = T0 + 40 * DAY
    assert out[schema.TREND_AS_OF][0] == newest  # a skip is not counted, nor its time
    want = trend_counts(rows, times, n_items + 1, as_of=newest, half_life_s=half_life)
    floor = np.float32(2.0 ** -MAX_TREND_EXPONENT)
    np.testing.assert_allclose(out[schema.ITEM_TREND], np.maximum(want, floor), rtol=1e-4)
    assert schema.ITEM_TREND in trainer.rewritten  # settled: every row is written
    # a rollback or restart resumes from a version's own trend tables
    again = SparseTrainer(out, _numpy_tower(), popularity_half_life_s=half_life)
    assert again.trend_as_of == newest
    np.testing.assert_array_equal(again.tables()[schema.ITEM_TREND], out[schema.ITEM_TREND])


def test_without_a_half_life_the_updater_writes_no_trend_tables():
    trainer = SparseTrainer(_tables(), _numpy_tower())
    trainer.apply(_event(0, 1000, 500, T0))
    assert not set(schema.TREND_TABLES) & set(trainer.tables())


def test_a_published_version_carries_the_settled_trend_and_serves_it(tmp_path):
    """Version 1 with trend counts, events applied, version 2 written as the updater's
    publisher writes it (changed rows only, the settled trend in full): served from v2, a
    stranger gets the items popular as of the newest event."""
    base = _tables()
    n_items = len(base["item_ids"])
    base[schema.ITEM_TREND] = np.full(n_items, 4.0, np.float32)  # everything equally popular
    base[schema.TREND_AS_OF] = np.array([T0])
    tables = schema.make_tables(**{k: base[k] for k in (
        "user_ids", "item_ids", "user_rows", "item_rows", "user_history", "item_popularity")},
        trend=(base[schema.ITEM_TREND], T0))
    meta = schema.RetrieveMeta(dim=8, history_len=5, popularity_half_life_s=DAY).to_dict()
    model_dir = tmp_path / "retrieve"
    versions.write_version(model_dir, 1, tables, meta=meta)
    trainer = SparseTrainer(tables, _numpy_tower(), popularity_half_life_s=DAY)
    hot = [int(base["item_ids"][r]) for r in (7, 3, 11)]
    for offset, item in enumerate(hot * 3):  # three days later: the old counts are at 0.5
        trainer.apply(_event(offset, 1000, item, T0 + 3 * DAY))
    published = trainer.tables()
    versions.write_version(model_dir, 2, published, parent=1, meta=meta,
                           changed_rows=trainer.changed_rows())
    manifest = versions.read_manifest(model_dir / "2")
    assert manifest.tables[schema.TREND_AS_OF].shape == (1,)
    loaded = {name: versions.load_table(model_dir / "2", manifest, name)
              for name in schema.TREND_TABLES}
    assert loaded[schema.TREND_AS_OF][0] == T0 + 3 * DAY
    np.testing.assert_allclose(loaded[schema.ITEM_TREND], published[schema.ITEM_TREND])
    assert float(loaded[schema.ITEM_TREND][7]) == pytest.approx(0.5 + 3.0)
    retriever = Retriever(model_dir / "2", lambda u, h: u + h)
    (stranger,) = retriever.answer([Query(user_id=424242, k=3)])
    assert sorted(stranger.item_ids.tolist()) == sorted(hot)
