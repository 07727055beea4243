"""The sparse trainer: only touched rows move, steps are clipped, tables grow, replay is exact."""

import numpy as np
import pytest
import torch

from exporter.sequence_tower import SequenceTower
from exporter.towers import UserTower, numpy_tower, tower_query
from updater.events import validate
from updater.negatives import draw_negatives, draw_negatives_many
from updater.settings import TrainerConfig
from updater.trainer import SparseTrainer

DIM, USERS, ITEMS, HISTORY = 8, 6, 40, 5
NOW = 1_790_000_000.0


def _tables(seed=0):
    rng = np.random.default_rng(seed)
    history = np.full((USERS, HISTORY), -1, np.int64)
    history[:, -2:] = rng.integers(0, ITEMS, size=(USERS, 2))
    return {
        "user_ids": np.arange(USERS, dtype=np.int64) * 10 + 1000,
        "item_ids": np.arange(ITEMS, dtype=np.int64) * 7 + 500,
        "user_rows": rng.normal(0, 0.3, (USERS, DIM)).astype(np.float32),
        "item_rows": rng.normal(0, 0.3, (ITEMS, DIM)).astype(np.float32),
        "user_history": history,
        "item_popularity": rng.integers(0, 9, ITEMS).astype(np.float32),
    }


def _tower():
    torch.manual_seed(0)
    return UserTower(DIM)


def _numpy_tower():
    return numpy_tower(_tower())  # what the trainer runs: the same weights as _tower()


def _event(offset, user_id, item_id, kind="click", value=0.0):
    e = validate(f"e{offset}", user_id, item_id, kind, value, NOW, now=NOW)
    return type(e)(e.event_id, e.user_id, e.item_id, e.kind, e.value, e.timestamp, offset=offset)


def _score(trainer, user_row, item_row):
    t = trainer.tables()
    hist = t["user_history"][user_row]
    rows = hist[hist >= 0]
    weights = 0.8 ** np.arange(rows.size)[::-1]
    pooled = (weights[:, None] * t["item_rows"][rows]).sum(0) / weights.sum()
    with torch.no_grad():
        query = _tower()(torch.from_numpy(t["user_rows"][user_row][None].copy()),
                              torch.from_numpy(pooled[None].astype(np.float32)))[0].numpy()
    return float(t["item_rows"][item_row] @ query)


def test_a_click_raises_the_item_and_moves_only_touched_rows():
    tables = _tables()
    trainer = SparseTrainer(tables, _numpy_tower(),
                            config=TrainerConfig(negatives=4, fold_in_events=0))
    before = {k: np.array(v) for k, v in trainer.tables().items()}
    score_before = _score(trainer, 2, 11)
    trainer.apply(_event(1, user_id=1020, item_id=500 + 7 * 11))
    after = trainer.tables()
    changed = trainer.changed_rows()
    for name in ("user_rows", "item_rows", "user_history", "item_popularity"):
        differs = np.flatnonzero(np.any((after[name] != before[name]).reshape(len(before[name]), -1), 1))
        assert set(differs) <= set(changed[name]), name  # every changed row is reported
    assert set(changed["user_rows"]) == {2}
    assert 11 in changed["item_rows"] and len(changed["item_rows"]) <= 1 + 4
    assert after["user_history"][2, -1] == 11  # appended, most recent last
    np.testing.assert_array_equal(after["user_history"][2, :-1], before["user_history"][2, 1:])
    assert after["item_popularity"][11] == before["item_popularity"][11] + 1
    assert _score(trainer, 2, 11) > score_before


def test_a_skip_lowers_the_item_and_leaves_history_alone():
    trainer = SparseTrainer(_tables(), _numpy_tower())
    history = np.array(trainer.tables()["user_history"][3])
    before = _score(trainer, 3, 20)
    trainer.apply(_event(1, user_id=1030, item_id=500 + 7 * 20, kind="skip"))
    assert _score(trainer, 3, 20) < before
    np.testing.assert_array_equal(trainer.tables()["user_history"][3], history)


def test_the_skip_weight_sets_how_hard_a_skip_pushes():
    moved = {}
    for weight in (0.0, 0.5, 2.0):
        trainer = SparseTrainer(_tables(), _numpy_tower(),
                                config=TrainerConfig(skip_weight=weight, fold_in_events=0))
        # a click first: row-wise Adagrad's first step has the same length whatever the
        # gradient's scale, so a weight shows against what the rows learned before
        trainer.apply(_event(0, user_id=1030, item_id=500 + 7 * 21))
        before = _score(trainer, 3, 20)
        trainer.apply(_event(1, user_id=1030, item_id=500 + 7 * 20, kind="skip"))
        moved[weight] = before - _score(trainer, 3, 20)
    assert moved[0.0] == 0.0 < moved[0.5] < moved[2.0]
    with pytest.raises(ValueError, match="skip_weight must be >= 0"):
        TrainerConfig(skip_weight=-1.0)


def test_each_step_is_clipped_per_row():
    max_step = 1e-3
    trainer = SparseTrainer(_tables(), _numpy_tower(),
                            config=TrainerConfig(lr=100.0, max_step=max_step, fold_in_events=0))
    before = {k: np.array(v) for k, v in trainer.tables().items()}
    trainer.apply(_event(1, user_id=1000, item_id=500, kind="purchase"))
    for name in ("user_rows", "item_rows"):
        moved = np.linalg.norm(trainer.tables()[name] - before[name], axis=1)
        assert moved.max() > 0
        # float32 rows: the distance moved is rounded at the rows' own scale (~1e-7 per entry)
        ulp = np.abs(before[name]).max() * np.finfo(np.float32).eps * np.sqrt(DIM)
        assert moved.max() <= max_step * (1 + 1e-5) + ulp, name


def test_new_users_and_items_get_rows_and_tables_grow():
    trainer = SparseTrainer(_tables(), _numpy_tower())
    for offset in range(1, 41):  # 40 new users and items: several capacity doublings
        trainer.apply(_event(offset, user_id=90_000 + offset, item_id=80_000 + offset))
    t = trainer.tables()
    assert len(t["user_ids"]) == USERS + 40 and len(t["item_ids"]) == ITEMS + 40
    assert {len(t[n]) for n in ("user_rows", "user_history", "user_adagrad")} == {USERS + 40}
    assert {len(t[n]) for n in ("item_rows", "item_popularity", "item_adagrad")} == {ITEMS + 40}
    assert t["user_ids"][-1] == 90_040 and t["item_ids"][-1] == 80_040
    assert t["user_history"][-1, -1] == ITEMS + 39  # the new item's row
    assert set(trainer.changed_rows()["user_ids"]) == set(range(USERS, USERS + 40))


def test_replaying_the_same_events_gives_the_same_tables():
    events = [_event(o, 1000 + 10 * (o % USERS), 500 + 7 * (o % ITEMS), kind)
              for o, kind in zip(range(1, 30), ["click", "skip", "purchase"] * 10)]
    one, two = SparseTrainer(_tables(), _numpy_tower()), SparseTrainer(_tables(), _numpy_tower())
    for e in events:
        one.apply(e)
    for e in events:
        two.apply(e)
    for name, table in one.tables().items():
        np.testing.assert_array_equal(table, two.tables()[name], err_msg=name)


def test_forget_user_removes_every_user_table_row():
    trainer = SparseTrainer(_tables(), _numpy_tower())
    assert trainer.forget_user(1010)
    t = trainer.tables()
    assert 1010 not in t["user_ids"] and len(t["user_rows"]) == USERS - 1
    assert trainer.user_index == {int(u): r for r, u in enumerate(t["user_ids"])}
    assert "user_rows" not in trainer.changed_rows()  # rows moved: written in full
    assert not trainer.forget_user(1010)


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("negatives", 0), ("max_step", -1.0),
                                          ("fold_in_events", -1)])
def test_trainer_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"TrainerConfig.{field}"):
        TrainerConfig(**{field: value})


def test_user_fold_in_without_a_history_length_is_refused():
    with pytest.raises(ValueError, match="fold_in_users needs fold_in_events > 0"):
        TrainerConfig(fold_in_users=True)  # the default fold_in_events is 0: off
    assert TrainerConfig(fold_in_users=True, fold_in_events=10).fold_in_users


def test_the_updater_command_names_a_bad_flag_in_one_line(capsys):
    from updater.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["--fold-in-users"])  # refused before anything starts
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: TrainerConfig.fold_in_users needs fold_in_events > 0" in err
    assert "Traceback" not in err


def test_tables_it_does_not_train_are_carried_into_every_version_unchanged():
    tables = _tables()
    projection = np.random.default_rng(3).normal(size=(12, DIM)).astype(np.float32)
    carried = {"text_projection": projection, **_numpy_tower().tables()}
    trainer = SparseTrainer({**tables, **carried}, _numpy_tower())
    trainer.apply(_event(1, user_id=1000, item_id=500))
    trainer.forget_user(1010)
    for name, table in carried.items():
        np.testing.assert_array_equal(trainer.tables()[name], table)
        assert trainer.changed_rows()[name].size == 0  # hard-linked from the parent


def test_added_items_get_their_rows_and_then_train_like_any_other():
    trainer = SparseTrainer(_tables(), _numpy_tower())
    rows = np.random.default_rng(4).normal(0, 0.3, (2, DIM)).astype(np.float32)
    trainer.add_items(np.array([9001, 9002]), rows)
    t = trainer.tables()
    np.testing.assert_array_equal(t["item_rows"][ITEMS:], rows)
    assert list(t["item_ids"][ITEMS:]) == [9001, 9002] and list(t["item_popularity"][ITEMS:]) == [0, 0]
    assert set(trainer.changed_rows()["item_rows"]) == {ITEMS, ITEMS + 1}
    before = _score(trainer, 0, ITEMS)
    trainer.apply(_event(1, user_id=1000, item_id=9001))
    assert _score(trainer, 0, ITEMS) > before
    assert trainer.tables()["item_popularity"][ITEMS] == 1


def test_adding_a_known_or_repeated_item_adds_nothing_and_a_failed_add_can_be_undone():
    trainer = SparseTrainer(_tables(), _numpy_tower())
    rows = np.zeros((2, DIM), np.float32)
    with pytest.raises(ValueError, match="exist already: \\[500\\]"):
        trainer.add_items(np.array([9001, 500]), rows)
    with pytest.raises(ValueError, match="repeat"):
        trainer.add_items(np.array([9001, 9001]), rows)
    assert trainer.n_items == ITEMS and 9001 not in trainer.item_index
    trainer.add_items(np.array([9001, 9002]), rows)
    trainer.drop_last_items(2)
    assert trainer.n_items == ITEMS and 9001 not in trainer.item_index
    assert not trainer.changed_rows()["item_rows"].size
    trainer.add_items(np.array([9001]), rows[:1])  # the ids are free again
    assert trainer.item_index[9001] == ITEMS


def _autograd_step(trainer, tower, event, user_row, item_row, weight):
    """The step with torch autograd, as the trainer did before its gradients were written out:
    the query through the torch tower from the user row and the stored history, whose item rows
    are held constant (they move only as scored items)."""
    negatives = draw_negatives(trainer.config.seed, event.offset, trainer.config.negatives,
                               trainer.n_items, item_row)
    user = torch.from_numpy(trainer.t["user_rows"].data[user_row].copy()).requires_grad_(True)
    history = torch.from_numpy(trainer.t["user_history"].data[user_row][None].copy())
    constant_items = torch.from_numpy(trainer.t["item_rows"].data[: trainer.n_items].copy())
    query = tower_query(tower, user[None], constant_items, history, decay=trainer.decay)[0]
    item_rows = np.concatenate([[item_row], negatives])
    items = torch.from_numpy(trainer.t["item_rows"].data[item_rows].copy()).requires_grad_(True)
    scores = items @ query
    margin = scores[0] - scores[1:] if weight > 0 else scores[1:] - scores[0]
    (-abs(weight) * torch.nn.functional.logsigmoid(margin).mean()).backward()
    trainer._adagrad_step("user_rows", "user_adagrad", np.array([user_row]),
                          user.grad.numpy()[None].astype(np.float64))
    trainer._adagrad_step("item_rows", "item_adagrad", item_rows, items.grad.numpy().astype(np.float64))


TOWERS = {"pooled": lambda: UserTower(DIM),
          "sequence": lambda: SequenceTower(DIM, length=HISTORY, blocks=2)}


@pytest.mark.parametrize("tower_kind", sorted(TOWERS))
@pytest.mark.parametrize("kind", ["click", "skip"])
def test_written_out_gradients_match_torch_autograd(kind, tower_kind, monkeypatch):
    torch.manual_seed(1)
    tower = TOWERS[tower_kind]().eval()
    for p in tower.parameters():  # a trained-looking tower, not the near-identity of a fresh one
        torch.nn.init.normal_(p, std=0.5)
    steps_only = TrainerConfig(fold_in_events=0)  # the gradient step alone (fold-in: below)
    ours = SparseTrainer(_tables(), numpy_tower(tower), config=steps_only)
    reference = SparseTrainer(_tables(), numpy_tower(tower), config=steps_only)
    monkeypatch.setattr(reference, "_train_step", lambda *a: _autograd_step(reference, tower, *a))
    for offset in range(1, 25):
        event = _event(offset, 1000 + 10 * (offset % USERS), 500 + 7 * (offset % ITEMS), kind)
        ours.apply(event)
        reference.apply(event)
    for name in ("user_rows", "item_rows", "user_adagrad", "item_adagrad"):
        np.testing.assert_allclose(ours.tables()[name], reference.tables()[name], rtol=1e-4,
                                   atol=1e-6, err_msg=name)
    assert not np.array_equal(ours.tables()["item_rows"], _tables()["item_rows"])  # rows moved


def _splitmix64_reference(x):
    """The finaliser in numpy's wrapping uint64 arithmetic (what draw_negatives computed before
    it moved to Python ints): the draws must not change, or a replay would draw other rows."""
    c = [np.uint64(v) for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]
    z = x + c[0]
    z = (z ^ (z >> np.uint64(30))) * c[1]
    z = (z ^ (z >> np.uint64(27))) * c[2]
    return z ^ (z >> np.uint64(31))


def test_negatives_are_the_splitmix_draws_of_the_event_offset():
    with np.errstate(over="ignore"):
        for seed, offset, count, n_items, item_row in [(0, 1, 8, 40, 3), (7, 123456789, 8, 9125, 0),
                                                       (2**40, 2**50, 32, 1000, 999), (1, 5, 3, 2, 1)]:
            key = (offset * 1024 ^ seed * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF
            draws = _splitmix64_reference(np.uint64(key) + np.arange(count, dtype=np.uint64))
            raw = (draws % np.uint64(n_items - 1)).astype(np.int64)
            expected = np.unique(raw + (raw >= item_row))
            got = draw_negatives(seed, offset, count, n_items, item_row)
            assert got.dtype == np.int64 and np.array_equal(got, expected)
            assert item_row not in got


def test_one_step_over_two_tables_is_each_table_s_step_to_the_bit():
    rng = np.random.default_rng(3)
    fused, separate = (SparseTrainer(_tables(), _numpy_tower()) for _ in range(2))
    user_acc, item_acc = rng.random(USERS), rng.random(ITEMS)  # accumulators not all zero
    for trainer in (fused, separate):
        trainer.t["user_adagrad"].data[:] = user_acc
        trainer.t["item_adagrad"].data[:] = item_acc
    users, items = np.array([4]), np.array([0, 7, 19, 33])
    grads = rng.normal(0, 2.0, (1 + len(items), DIM))  # large enough for the clip to act
    fused._adagrad_steps((("user_rows", "user_adagrad", users),
                          ("item_rows", "item_adagrad", items)), grads)
    separate._adagrad_step("user_rows", "user_adagrad", users, grads[:1])
    separate._adagrad_step("item_rows", "item_adagrad", items, grads[1:])
    for name in ("user_rows", "item_rows", "user_adagrad", "item_adagrad"):
        assert np.array_equal(fused.tables()[name], separate.tables()[name]), name
    assert fused.changed_rows()["item_rows"].tolist() == items.tolist()
    assert not np.array_equal(fused.tables()["item_rows"], _tables()["item_rows"])


def test_the_pooled_backward_is_the_float32_tower_s_product_to_the_bit():
    # user_grad keeps float64 copies of the tower's matrices: the same numbers numpy computed
    # when it cast the float32 ones on every event
    tower = _numpy_tower()
    grad = SparseTrainer(_tables(), tower)._tower
    rng = np.random.default_rng(5)
    for _ in range(20):
        query_grad, z1 = rng.normal(0, 1, DIM), rng.normal(0, 1, tower.hidden).astype(np.float32)
        expected = query_grad + tower.w1[:, :DIM].T @ ((tower.w2.T @ query_grad) * (z1 > 0))
        assert np.array_equal(grad.user_grad(query_grad, z1), expected)


def test_the_sequence_query_reads_the_stored_history_in_order():
    """The gradient check above holds for any history; this pins that the trainer's query is the
    served one: the version's stored history, oldest first, through the sequence tower."""
    torch.manual_seed(2)
    tower = SequenceTower(DIM, length=HISTORY, blocks=1).eval()
    served = numpy_tower(tower)
    trainer = SparseTrainer(_tables(), served)
    t = trainer.tables()
    for user_row in range(USERS):
        history = t["user_history"][user_row]
        want = served(t["user_rows"][user_row][None],
                      *served.history_inputs(t["item_rows"], [history[history >= 0]]))[0]
        np.testing.assert_array_equal(trainer.query(user_row)[0], want)
    trainer.apply(_event(1, user_id=1000, item_id=500 + 7 * 3))  # a click: appended, most recent
    history = trainer.tables()["user_history"][0]
    assert history[-1] == 3
    rows = history[history >= 0]
    want = served(trainer.tables()["user_rows"][0][None],
                  *served.history_inputs(trainer.tables()["item_rows"], [rows]))[0]
    np.testing.assert_array_equal(trainer.query(0)[0], want)


def test_a_young_item_folds_in_the_queries_of_the_users_who_take_it():
    trainer = SparseTrainer(_tables(), _numpy_tower(), config=TrainerConfig(fold_in_events=3))
    t = trainer.tables()
    warm = t["item_rows"][t["item_popularity"] >= 3]
    queries = [trainer.query(r)[0] for r in range(USERS)]
    assert trainer.fold_in_scale > 0
    new = trainer._item_row(99_999)  # a random row, no events
    trainer.fold_in(0, new)
    np.testing.assert_allclose(trainer.tables()["item_rows"][new],
                               trainer.fold_in_scale * queries[0], rtol=1e-5, atol=1e-6)
    trainer.t["item_popularity"].data[new] = 1.0
    trainer.fold_in(1, new)  # the running mean of the two users' queries
    np.testing.assert_allclose(trainer.tables()["item_rows"][new],
                               trainer.fold_in_scale * (queries[0] + queries[1]) / 2, rtol=1e-5,
                               atol=1e-6)
    # rho makes a folded-in row as long as an established one, for a median query
    median_query = np.median([np.linalg.norm(q) for q in queries])
    assert np.isclose(trainer.fold_in_scale * median_query,
                      np.median(np.linalg.norm(warm, axis=1)), rtol=0.1)


def test_an_established_item_moves_by_gradient_steps_only():
    max_step = 1e-3
    trainer = SparseTrainer(_tables(), _numpy_tower(),
                            config=TrainerConfig(lr=100.0, max_step=max_step, fold_in_events=3))
    established = int(np.flatnonzero(trainer.tables()["item_popularity"] >= 3)[0])
    young = int(np.flatnonzero(trainer.tables()["item_popularity"] < 3)[0])
    item_ids = trainer.tables()["item_ids"]
    before = np.array(trainer.tables()["item_rows"])
    trainer.apply(_event(1, user_id=1000, item_id=int(item_ids[established])))
    assert np.linalg.norm(trainer.tables()["item_rows"][established] - before[established]) <= (
        max_step * (1 + 1e-5))
    trainer.apply(_event(2, user_id=1000, item_id=int(item_ids[young])))
    assert np.linalg.norm(trainer.tables()["item_rows"][young] - before[young]) > max_step
    assert young in trainer.changed_rows()["item_rows"]


def test_a_new_user_takes_the_scaled_mean_of_what_they_took_when_asked_to():
    tables = _tables()
    tables["user_history"] = np.tile(np.arange(HISTORY, dtype=np.int64), (USERS, 1))  # full
    off = SparseTrainer(tables, _numpy_tower(), config=TrainerConfig(fold_in_events=HISTORY))
    assert off.user_fold_in_scale == 0.0  # off unless asked
    trainer = SparseTrainer(tables, _numpy_tower(),
                            config=TrainerConfig(fold_in_events=HISTORY, fold_in_users=True))
    assert trainer.user_fold_in_scale > 0
    item_ids = trainer.tables()["item_ids"]
    for offset, item in enumerate((2, 5), start=1):
        trainer.apply(_event(offset, user_id=77_777, item_id=int(item_ids[item])))
    row = trainer.user_index[77_777]
    t = trainer.tables()
    np.testing.assert_allclose(t["user_rows"][row],
                               trainer.user_fold_in_scale * t["item_rows"][[2, 5]].mean(0),
                               rtol=1e-5, atol=1e-6)


def test_the_vectorised_negatives_are_draw_negatives_row_by_row():
    rng = np.random.default_rng(4)
    offsets = rng.integers(1, 2**40, 200)
    n_items = rng.integers(2, 50, 200)
    item_rows = np.array([rng.integers(0, n) for n in n_items])
    with np.errstate(over="ignore"):
        many = draw_negatives_many(9, offsets, 8, n_items, item_rows)
    for row, offset, n, item in zip(many, offsets, n_items, item_rows):
        assert row[row >= 0].tolist() == draw_negatives(9, int(offset), 8, int(n), int(item)).tolist()


def _disjoint_events(trainer, n_events, *, kinds=("click", "skip")):
    """Events whose users, items, negatives and histories share no row: a minibatch of them
    is the same as applying them one by one."""
    used, events = set(), []
    for offset in range(1, 10_000):
        user_row, item_row = offset % USERS, (offset * 13) % ITEMS
        history = trainer.t["user_history"].data[user_row]
        rows = {item_row, *draw_negatives(trainer.config.seed, offset, trainer.config.negatives,
                                          trainer.n_items, item_row).tolist(),
                *history[history >= 0].tolist()}
        if rows & used or any(e.user_id == 1000 + 10 * user_row for e in events):
            continue
        used |= rows
        events.append(_event(offset, 1000 + 10 * user_row, 500 + 7 * item_row,
                             kinds[len(events) % len(kinds)]))
        if len(events) == n_events:
            return events
    raise AssertionError("no disjoint events")


@pytest.mark.parametrize("tower_kind", sorted(TOWERS))
def test_a_minibatch_of_events_sharing_no_row_is_the_events_one_by_one(tower_kind):
    torch.manual_seed(2)
    tower = TOWERS[tower_kind]().eval()
    for p in tower.parameters():
        torch.nn.init.normal_(p, std=0.5)
    config = TrainerConfig(negatives=2, fold_in_events=0)
    tables = {**_tables(), "item_rows": np.random.default_rng(5).normal(0, 0.3, (ITEMS, DIM))
              .astype(np.float32)}
    one_by_one, batched = (SparseTrainer(tables, numpy_tower(tower), popularity_half_life_s=3600.0,
                                         config=config) for _ in range(2))
    events = _disjoint_events(one_by_one, 4)
    for event in events:
        one_by_one.apply(event)
    batched.apply_many(events)
    for name, table in one_by_one.tables().items():
        np.testing.assert_allclose(batched.tables()[name], table, rtol=1e-5, atol=1e-7, err_msg=name)
    assert batched.changed_rows()["item_rows"].tolist() == one_by_one.changed_rows()["item_rows"].tolist()
    assert not np.array_equal(batched.tables()["user_rows"], tables["user_rows"])


def test_repeated_rows_take_their_steps_in_order_as_one_by_one():
    rng = np.random.default_rng(6)
    in_order, stepwise = (SparseTrainer(_tables(), _numpy_tower()) for _ in range(2))
    for trainer in (in_order, stepwise):
        trainer.t["item_adagrad"].data[:] = np.linspace(0.0, 1.0, ITEMS)
    rows = np.array([3, 7, 3, 3, 12, 7])
    grads = rng.normal(0, 2.0, (rows.size, DIM))  # large enough for the clip to act
    in_order._adagrad_in_order("item_rows", "item_adagrad", rows, grads)
    for row, grad in zip(rows, grads):
        stepwise._adagrad_step("item_rows", "item_adagrad", np.array([row]), grad[None])
    for name in ("item_rows", "item_adagrad"):
        np.testing.assert_allclose(in_order.tables()[name], stepwise.tables()[name], rtol=1e-6,
                                   atol=1e-7, err_msg=name)
    assert in_order.changed_rows()["item_rows"].tolist() == [3, 7, 12]


def test_a_minibatch_keeps_the_histories_counts_and_new_rows_of_one_by_one():
    config = TrainerConfig(negatives=4, fold_in_events=0)
    one_by_one, batched = (SparseTrainer(_tables(), _numpy_tower(), popularity_half_life_s=60.0,
                                         config=config) for _ in range(2))
    events = [_event(n, 1000 + 10 * (n % 3), 500 + 7 * (n % 5), ("click", "skip", "purchase")[n % 3])
              for n in range(1, 30)] + [_event(40, 77, 99), _event(41, 77, 500)]  # new user, item
    for event in events:
        one_by_one.apply(event)
    batched.apply_many(events)
    for name in ("user_ids", "item_ids", "user_history", "item_popularity", "user_last_at"):
        np.testing.assert_array_equal(batched.tables()[name], one_by_one.tables()[name], err_msg=name)
    np.testing.assert_allclose(batched.tables()["item_trend"], one_by_one.tables()["item_trend"],
                               rtol=1e-6)
    # shared rows: close, not equal (a later event's gradient does not see an earlier step)
    np.testing.assert_allclose(batched.tables()["item_rows"], one_by_one.tables()["item_rows"],
                               atol=0.05)

