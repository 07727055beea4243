"""exporter.train and exporter.evaluate: pooling parity with serving, the trained model's tables,
quality against popularity, and the metrics themselves on a hand-checked case."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from exporter.data import Interactions, Items, split_by_time
from exporter.evaluate import (
    build_eval_split,
    evaluate,
    format_quality_table,
    ranking_metrics,
)
from exporter.onnx_export import torch_query, tower_inputs
from exporter.synthetic import generate_synthetic
from exporter.towers import UserTower, load_tower, pool_history_torch, save_tower
from exporter.train import TrainConfig, make_tower, train_base_model
from model_repository import retrieve_schema as schema
from model_repository.tower import TOWER_FILE_FORMAT
from tests.fixtures.serving_pool import pool_numpy

# ---------------------------------------------------------------------------------------------
# pooling: the torch twin must equal serving's numpy definition

HISTORIES = np.array([
    [4, 9, 2, 7, 1],       # full
    [-1, -1, 3, 3, 8],     # left padded, a repeated item
    [-1, -1, -1, -1, -1],  # empty: pools to zeros
    [-1, -1, -1, -1, 0],   # one item
    [5, -1, 6, -1, 2],     # holes: padded_to_csr drops them, so must we
], dtype=np.int64)


@pytest.mark.parametrize("decay", [0.8, 0.5, 1.0])
def test_pool_history_torch_matches_serving(decay):
    item_rows = np.random.default_rng(0).standard_normal((10, 7)).astype(np.float32)
    got = pool_history_torch(torch.from_numpy(item_rows), torch.from_numpy(HISTORIES), decay)
    want = pool_numpy(item_rows, HISTORIES, decay)
    # fp32 weights and sums vs float64 maths over at most 5 terms: 1e-6 is a few ulp
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    assert not got[2].any(), "an empty history must pool to zeros"
    np.testing.assert_array_equal(got[3].numpy(), item_rows[0])


def test_pool_history_torch_weights_recent_items_more():
    item_rows = torch.eye(3)
    pooled = pool_history_torch(item_rows, torch.tensor([[0, 1, 2]]), 0.5)
    # weights 0.25, 0.5, 1 normalised by 1.75, most recent (item 2) last
    torch.testing.assert_close(pooled, torch.tensor([[0.25, 0.5, 1.0]]) / 1.75)


# ---------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize(("field", "value"), [
    ("dim", 0), ("epochs", -1), ("batch_size", 2.5), ("negatives", 0), ("history_len", 0),
    ("lr", 0.0), ("recency_decay", 0.0), ("recency_decay", 1.5), ("user_dropout", 1.0),
    ("l2", -1e-3), ("tower", "bag"), ("seq_blocks", 0), ("seq_dropout", 1.0),
])
def test_train_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} "):
        TrainConfig(**{field: value})


# ---------------------------------------------------------------------------------------------
# the trained model's tables on a hand-made data set


def test_tables_history_and_popularity():
    # user 7: items 3, 1, 2 in that order; user 5: item 2; item 4 only in the catalogue
    train = Interactions.from_arrays([7, 7, 5, 7], [3, 1, 2, 2], [1, 1, 1, 1], [10, 20, 40, 30])
    items = Items(ids=np.array([4, 1, 2, 3]), titles=["d", "a", "b", "c"],
                  categories=["", "", "", ""])
    model = train_base_model(train, items=items, progress=False,
                             config=TrainConfig(dim=4, epochs=1, history_len=2))
    assert model.user_ids.tolist() == [5, 7]
    assert model.item_ids.tolist() == [1, 2, 3, 4]
    # rows: item 1 -> 0, 2 -> 1, 3 -> 2; most recent last, -1 on the left
    assert model.user_history.tolist() == [[-1, 1], [0, 1]]
    assert model.item_popularity.tolist() == [1.0, 2.0, 1.0, 0.0]
    assert model.user_rows.shape == (2, 4) and model.user_rows.dtype == np.float32
    assert model.item_rows.shape == (4, 4) and model.item_rows.dtype == np.float32
    assert not model.tower.training


# ---------------------------------------------------------------------------------------------
# quality on a small synthetic set

SMALL_CONFIG = TrainConfig(dim=16, epochs=8, lr=0.01, batch_size=512, seed=1)


@pytest.fixture(scope="module")
def small_split():
    # Users come and go in sessions (exporter.synthetic), so only those active on both sides of
    # the time split are evaluated: about 280 here. Recall@10 model / popularity over generator
    # seeds 1-3 was 1.32-1.49 here, 1.07-1.10 on the earlier 300 users x 200 items (about 100
    # users evaluated, where the old generator gave 1.54) and 1.14-1.55 on 800 x 250.
    dataset = generate_synthetic(n_users=1000, n_items=400, n_events=40_000, seed=1)
    train, test = split_by_time(dataset.interactions)
    return dataset.items, train, test


@pytest.fixture(scope="module")
def small_model(small_split):
    items, train, _ = small_split
    return train_base_model(train, items=items, config=SMALL_CONFIG, progress=False)


def random_scorer(n_items: int):
    rng = np.random.default_rng(0)
    return lambda user_ids: rng.random((len(user_ids), n_items), dtype=np.float32)


def test_training_beats_popularity(small_split, small_model):
    _, train, test = small_split
    rows = evaluate(small_model, train, test, extra={
        "random": random_scorer(len(small_model.item_ids))})
    model, popularity = rows["model"], rows["popularity"]
    # measured: model 0.18, history only 0.19, popularity 0.14, random 0.04 recall@10
    assert model["recall@10"] > 1.2 * popularity["recall@10"], format_quality_table(rows)
    assert model["ndcg@10"] > popularity["ndcg@10"], format_quality_table(rows)
    assert rows["history only"]["recall@10"] > popularity["recall@10"], format_quality_table(rows)
    assert popularity["recall@10"] > 2 * rows["random"]["recall@10"], format_quality_table(rows)
    assert model["users"] == popularity["users"] > 200


def test_sampled_negatives_learn(small_split):
    items, train, test = small_split
    config = TrainConfig(dim=16, epochs=8, lr=0.01, batch_size=512, negatives=64, seed=1)
    model = train_base_model(train, items=items, config=config, progress=False)
    rows = evaluate(model, train, test, extra={"random": random_scorer(len(model.item_ids))})
    # measured: 0.16 vs 0.04 for random scores (full softmax is better here, see above)
    assert rows["model"]["recall@10"] > 2 * rows["random"]["recall@10"], format_quality_table(rows)


def test_sampled_negatives_follow_item_frequency_and_their_correction_is_unbiased():
    """Draws come in proportion to (count + smoothing); with each draw's logit corrected by
    -log(n q(i)), the sampled sum of exp(logits) estimates the full softmax's normaliser."""
    from exporter.train import FREQUENCY_SMOOTHING, _Negatives

    counts = np.array([500, 120, 40, 9, 0, 0, 3, 1], dtype=np.int64)
    sampler = _Negatives(counts, 64)
    generator = torch.Generator().manual_seed(0)
    logits = torch.linspace(3.0, -2.0, len(counts), dtype=torch.float64)  # popular items score high
    drawn_counts = torch.zeros(len(counts), dtype=torch.float64)
    estimates = []
    for _ in range(2000):
        drawn, log_expected = sampler.sample(generator)
        drawn_counts += torch.bincount(drawn, minlength=len(counts))
        estimates.append(float(torch.exp(logits[drawn] - log_expected.double()).sum()))
    want_q = (counts + FREQUENCY_SMOOTHING) / (counts + FREQUENCY_SMOOTHING).sum()
    np.testing.assert_allclose(drawn_counts.numpy() / drawn_counts.sum().item(), want_q, atol=0.01)
    full = float(torch.exp(logits).sum())
    assert abs(np.mean(estimates) / full - 1) < 0.03, (np.mean(estimates), full)
    # the uncorrected sum is far off: the correction matters
    assert abs(float(torch.exp(logits[drawn]).sum()) / full - 1) > 0.5


def test_training_is_deterministic_and_leaves_global_rng_alone(small_split, small_model):
    items, train, _ = small_split
    before = torch.random.get_rng_state()
    again = train_base_model(train, items=items, config=SMALL_CONFIG, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    np.testing.assert_array_equal(again.user_rows, small_model.user_rows)
    np.testing.assert_array_equal(again.item_rows, small_model.item_rows)


def test_progress_bar_goes_to_stderr(small_split, capsys):
    items, train, _ = small_split
    train_base_model(train.take(slice(0, 500)), items=items, progress=True,
                     config=TrainConfig(dim=4, epochs=1))
    out, err = capsys.readouterr()
    assert out == ""
    assert "train" in err and "batch" in err


# ---------------------------------------------------------------------------------------------
# tower file


@pytest.mark.parametrize("kind", schema.TOWER_KINDS)
def test_save_and_load_tower(tmp_path, kind):
    torch.manual_seed(0)
    tower = make_tower(TrainConfig(dim=16, history_len=7, seq_blocks=1, tower=kind))
    path = save_tower(tower, tmp_path / "tower.pt")
    loaded = load_tower(path)
    assert not loaded.training and type(loaded) is type(tower) and loaded.kind == kind
    assert loaded.constructor_args() == tower.constructor_args()
    inputs = tower_inputs(tower, 5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(torch_query(loaded, inputs), torch_query(tower, inputs))


def test_a_tower_file_without_a_kind_holds_a_pooled_tower(tmp_path):
    """Files written before the sequence tower: {"dim", "hidden"} only."""
    tower = UserTower(4)
    path = tmp_path / "tower.pt"
    torch.save({"format": TOWER_FILE_FORMAT, "args": {"dim": 4, "hidden": 8},
                "state_dict": tower.state_dict()}, path)
    assert isinstance(load_tower(path), UserTower)


@pytest.mark.parametrize("kind", schema.TOWER_KINDS)
def test_each_tower_trains_deterministically(kind):
    data = generate_synthetic(n_users=120, n_items=60, n_events=3000, seed=4, progress=False)
    config = replace(SMALL_CONFIG, tower=kind, epochs=1)
    model = train_base_model(data.interactions, items=data.items, config=config, progress=False)
    assert model.tower.kind == kind
    again = train_base_model(data.interactions, items=data.items, config=config, progress=False)
    np.testing.assert_array_equal(again.user_queries(), model.user_queries())


def test_the_sequence_tower_beats_popularity(small_split):
    """(The pooled tower: test_training_beats_popularity.) Measured on this set, seed 1, 4 epochs
    (2026-12-01): recall@10 0.163 against popularity's 0.138, 1.19x, on the bursty generator."""
    items, train, test = small_split
    config = replace(SMALL_CONFIG, tower=schema.TOWER_SEQUENCE, epochs=4)
    rows = evaluate(train_base_model(train, items=items, config=config, progress=False), train, test)
    assert rows["model"]["recall@10"] > 1.1 * rows["popularity"]["recall@10"], \
        format_quality_table(rows)


def test_load_tower_rejects_unknown_format(tmp_path):
    path = tmp_path / "tower.pt"
    torch.save({"format": 99, "args": {}, "state_dict": UserTower(4).state_dict()}, path)
    with pytest.raises(ValueError, match="format 99"):
        load_tower(path)


# ---------------------------------------------------------------------------------------------
# metrics on a case worked out by hand


def test_metrics_by_hand():
    catalogue = np.array([10, 20, 30, 40, 50])
    train = Interactions.from_arrays([1, 1, 2, 3], [10, 20, 10, 30], [1] * 4, [1, 2, 3, 4])
    test = Interactions.from_arrays(
        [1, 1, 1, 2, 4, 3], [20, 30, 40, 50, 10, 99], [1] * 6, [5, 6, 7, 8, 9, 10])
    split = build_eval_split(train, test, item_ids=catalogue)
    # user 1: item 20 was seen in training, so targets are 30 and 40; user 2: 50;
    # user 4 is unknown to training; user 3's only test item is not in the catalogue
    assert split.user_ids.tolist() == [1, 2]
    assert split.target_items.tolist() == [2, 3, 4] and split.target_offsets.tolist() == [0, 2, 3]
    fixed = np.array([5.0, 4.0, 3.0, 2.0, 1.0], dtype=np.float32)  # item 10 best
    metrics = ranking_metrics(lambda users: np.tile(fixed, (len(users), 1)), split,
                              ks=(1, 2, 5, 10))
    # user 1 ranks 30, 40, 50 (10 and 20 excluded): hits at ranks 1 and 2
    # user 2 ranks 20, 30, 40, 50 (10 excluded): its target is 4th
    expected = {
        "recall@1": (0.5 + 0) / 2, "ndcg@1": (1 + 0) / 2,
        "recall@2": (1 + 0) / 2, "ndcg@2": (1 + 0) / 2,
        "recall@5": (1 + 1) / 2, "ndcg@5": (1 + 1 / math.log2(5)) / 2,
        "recall@10": (1 + 1) / 2, "ndcg@10": (1 + 1 / math.log2(5)) / 2,  # K > catalogue
        "users": 2.0,
    }
    assert metrics == pytest.approx(expected)


def test_format_quality_table():
    rows = {
        "model": {"recall@10": 0.2, "ndcg@10": 0.25, "recall@50": 0.5, "users": 1957.0},
        "popularity": {"recall@10": 0.1087, "ndcg@10": 0.1253, "recall@50": 0.30331,
                       "users": 1957.0},
    }
    lines = format_quality_table(rows).splitlines()
    assert lines[0].split() == ["model", "recall@10", "ndcg@10", "recall@50", "users"]
    assert lines[1].split() == ["model", "0.2000", "0.2500", "0.5000", "1957"]
    assert lines[2].split() == ["popularity", "0.1087", "0.1253", "0.3033", "1957"]
    assert len({len(line) for line in lines}) == 1, "columns are not aligned"
