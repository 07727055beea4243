"""The popularity prior's session gate: one definition (model_repository.scoring.session_weights)
met where a history's age is known: the build's two protocols, the search, serving (stored, live
and sent histories, on the log's clock) and the updater's newest-event times."""

import numpy as np
import pytest

from exporter import search as search_module
from exporter.data import Interactions, split_by_time
from exporter.evaluate import model_scorer, next_event_queries, next_event_results, per_user_metrics
from exporter.synthetic import generate_synthetic
from exporter.train import TrainConfig, fit_closed_form, last_event_times
from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.live_history import LiveHistory, LiveHistoryReader, history_path
from model_repository.scoring import history_ages, history_clock, session_weights
from model_repository.serving import Query, Retriever
from tests.test_trend import _event
from tests.updater.test_trainer import _numpy_tower, _tables
from updater.trainer import SparseTrainer

HOUR = 3600.0
T0 = 1_000_000_000.0  # 2001: ages are measured on the log's clock, not the wall clock


def test_a_user_in_session_gets_the_session_weight():
    assert history_clock(np.array([T0 - 60, -np.inf, T0 - HOUR])) == T0 - 60
    assert history_clock(np.array([-np.inf])) == history_clock(None) == -np.inf
    ages = history_ages(np.array([T0 - 60, T0 - 5 * HOUR, -np.inf, T0 + 10]), T0)
    np.testing.assert_array_equal(ages, [60.0, 5 * HOUR, np.inf, 0.0])  # never below 0
    weights = session_weights(ages, weight=3.0, session_weight=0.1, session_s=HOUR)
    np.testing.assert_array_equal(weights, np.float32([0.1, 3.0, 3.0, 0.1]))
    no_gate = session_weights(ages, weight=3.0, session_weight=0.1, session_s=0.0)
    np.testing.assert_array_equal(no_gate, np.float32([3.0] * 4))


def test_the_model_knows_each_users_newest_event_and_its_age_at_the_cut():
    train = Interactions.from_arrays([1, 2, 1, 3], [10, 11, 12, 10], [1.0] * 4,
                                     [T0, T0 + 5, T0 + 7, T0 + 100])
    np.testing.assert_array_equal(last_event_times(np.array([1, 2, 3]), train),
                                  [T0 + 7, T0 + 5, T0 + 100])
    (model,) = fit_closed_form(train, configs=[TrainConfig(method="ease", dim=2)])
    np.testing.assert_array_equal(model.history_ages(), [93.0, 95.0, 0.0])


# --- serving: the version's stored history, the live history and a sent HISTORY ---

N_ITEMS, DIM = 30, 4
USERS = (11, 12)


@pytest.fixture
def gated(tmp_path):
    """Item rows that favour the low rows for both users, popularity the high ones; user 11's
    stored history is a minute old at the version's clock, user 12's two days."""
    rng = np.random.default_rng(0)
    item_rows = np.zeros((N_ITEMS, DIM), np.float32)
    item_rows[:, 0] = np.linspace(1.0, 0.0, N_ITEMS)  # the model: row 0 first
    popularity = np.arange(1, N_ITEMS + 1, dtype=np.float32) ** 3  # popularity: row 29 first
    history = np.full((2, 3), -1)
    history[:, -1] = 15
    tables = schema.make_tables(
        user_ids=list(USERS), item_ids=np.arange(N_ITEMS) + 500,
        user_rows=np.tile(np.float32([1, 0, 0, 0]), (2, 1)) + rng.normal(0, 1e-3, (2, DIM)),
        item_rows=item_rows, user_history=history, item_popularity=popularity,
        user_last_at=np.array([T0 - 60, T0 - 2 * 86400.0]))
    meta = schema.RetrieveMeta(dim=DIM, history_len=3, popularity_weight=10.0,
                               session_s=HOUR, session_popularity_weight=0.0)
    model_dir = tmp_path / "retrieve"
    versions.write_version(model_dir, 1, tables, meta=meta.to_dict())
    return model_dir


def _top(retriever, user, **query):
    (answer,) = retriever.answer([Query(user_id=user, k=3, exclude_seen=False, **query)])
    return (answer.item_ids - 500).tolist()


def test_serving_weighs_the_prior_by_the_stored_historys_age(gated):
    retriever = Retriever(gated / "1", lambda u, h: u)  # the query is the user row
    assert retriever.clock == T0 - 60  # the version's newest history event
    assert _top(retriever, 11) == [0, 1, 2]  # in session: no prior, the model's ranking
    assert _top(retriever, 12) == [29, 28, 27]  # back after two days: popularity leads
    # a HISTORY sent with the request is the user's now: in session
    assert _top(retriever, 12, history=np.array([515])) == [0, 1, 2]


def test_the_live_history_moves_a_users_age_and_the_clock_at_once(gated):
    writer = LiveHistory(history_path(gated), history_len=3)
    retriever = Retriever(gated / "1", lambda u, h: u,
                          live_history=LiveHistoryReader(history_path(gated)))
    writer.append([(12, 503, T0 + 10)], offset=1)  # user 12 is back: in session at once
    assert _top(retriever, 12) == [0, 1, 2]
    assert _top(retriever, 11) == [0, 1, 2]  # 70 s behind the clock: still in session
    writer.append([(99, 501, T0 + 2 * HOUR)], offset=2)  # the clock moves on two hours
    assert _top(retriever, 11) == [29, 28, 27]  # now stale: the stored history's age grew
    assert _top(retriever, 12) == [29, 28, 27]
    read = retriever.live_history.read([12, 13], clock=True)
    assert read.last_at == {12: T0 + 10} and read.clock == T0 + 2 * HOUR
    writer.close()


def test_a_store_written_before_times_were_kept_is_migrated(tmp_path):
    import sqlite3

    path = history_path(tmp_path / "retrieve")
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE history (user_id INTEGER PRIMARY KEY, items BLOB NOT NULL);
        CREATE TABLE applied (id INTEGER PRIMARY KEY CHECK (id = 0), "offset" INTEGER);
        INSERT INTO applied (id, "offset") VALUES (0, 4);""")
    old.execute("INSERT INTO history VALUES (1, ?)", (np.array([7], np.int64).tobytes(),))
    old.commit()
    old.close()
    reader = LiveHistoryReader(path)
    unmigrated = reader.read([1], clock=True)  # retrieve may read it before the updater opens it
    assert unmigrated.items[1].tolist() == [7] and unmigrated.last_at == {1: -np.inf}
    assert unmigrated.clock == -np.inf
    writer = LiveHistory(path, history_len=3)
    before = reader.read([1], clock=True)
    assert before.items[1].tolist() == [7] and before.last_at == {1: -np.inf}  # no time: stale
    writer.append([(1, 8, T0)], offset=5)
    after = reader.read([1], clock=True)
    assert after.items[1].tolist() == [7, 8] and after.last_at == {1: T0} and after.clock == T0
    assert writer.applied_offset() == 5
    writer.close()


def test_the_updater_keeps_each_users_newest_positive_time():
    base = _tables()
    trainer = SparseTrainer(base, _numpy_tower())
    assert np.isneginf(trainer.tables()[schema.USER_LAST_AT]).all()  # a version without them
    user = int(base["user_ids"][1])
    trainer.apply(_event(0, user, int(base["item_ids"][3]), T0))
    trainer.apply(_event(1, user, int(base["item_ids"][4]), T0 - HOUR))  # late: not newer
    trainer.apply(_event(2, user, int(base["item_ids"][5]), T0 + HOUR, kind="skip"))  # negative
    trainer.apply(_event(3, 77_777, int(base["item_ids"][6]), T0 + 5))  # a new user
    out = trainer.tables()
    assert out[schema.USER_LAST_AT][1] == T0
    assert out[schema.USER_LAST_AT][-1] == T0 + 5 and out[schema.USER_IDS][-1] == 77_777
    assert {1, len(out[schema.USER_IDS]) - 1} <= set(trainer.changed_rows()[schema.USER_LAST_AT])
    assert trainer.forget_user(user)
    assert len(trainer.tables()[schema.USER_LAST_AT]) == len(trainer.tables()[schema.USER_IDS])


def test_a_session_gate_without_its_weight_range_is_refused_by_name():
    with pytest.raises(schema.SchemaError, match="session_s must be >= 0"):
        schema.RetrieveMeta(dim=2, history_len=2, session_s=-1.0)
    with pytest.raises(schema.SchemaError, match="session_popularity_weight must be >= 0"):
        schema.RetrieveMeta(dim=2, history_len=2, session_popularity_weight=float("inf"))


# --- the search: each query's result depends on its own weight only ---

@pytest.fixture(scope="module")
def tiny_train():
    return split_by_time(generate_synthetic(n_users=150, n_items=80, n_events=4000,
                                            n_categories=4, seed=7, progress=False).interactions)[0]


def test_the_gates_the_search_combines_are_what_the_model_serves(tiny_train, monkeypatch):
    """The search scores each weight once per query and combines them per gate; the model
    served with a gate (its scorer and next-event weights) gives exactly that combination."""
    fit, valid = split_by_time(tiny_train, train_fraction=0.9)
    (model,) = fit_closed_form(fit, configs=[TrainConfig(method="ease", dim=8, seed=3)])
    checks = search_module._Valid(fit, valid).ready(model)
    gate = float(np.median(checks.next_events.ages[np.isfinite(checks.next_events.ages)])) + 1.0
    in_split = model.history_ages()[np.searchsorted(model.user_ids, checks.split.user_ids)] < gate
    in_next = checks.next_events.ages < gate
    assert in_next.any() and not in_next.all()  # the gate splits the events
    queries = next_event_queries(model, checks.next_events)
    split, next_ = {}, {}
    for weight in (0.0, 1.0):
        search_module.Prior(weight).apply(model)
        split[weight] = per_user_metrics(model_scorer(model), checks.split, ks=(10,))["recall@10"]
        next_[weight] = next_event_results(checks.next_events, queries=queries,
                                           item_rows=model.item_rows, weights=weight,
                                           half_life_s=0.0)["recall@10"]
    search_module.Prior(1.0, gate, 0.0).apply(model)
    served = search_module._metrics(model, checks)
    assert served["recall@10"] == pytest.approx(np.where(in_split, split[0.0], split[1.0]).mean())
    assert served["next recall@10"] == pytest.approx(
        np.where(in_next, next_[0.0], next_[1.0]).mean())
    # and the search's own choice scores as the model served with it
    monkeypatch.setattr(search_module, "SESSION_S", (0.0, gate))
    prior, combined = search_module._best_prior(model, checks)
    prior.apply(model)
    assert search_module._key(search_module._metrics(model, checks)) == pytest.approx(
        search_module._key(combined))
