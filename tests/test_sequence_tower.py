"""The sequence user tower: numpy (served) == torch (trained) == ONNX (user_tower) on ragged and
empty histories, the inputs' layout, its tables, and retrieve serving a version that carries it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporter.build import write_repository
from exporter.onnx_export import (
    ParityError,
    check_onnx_parity,
    export_user_tower,
    torch_query,
    tower_inputs,
)
from exporter.sequence_tower import SequenceTower, sequence_inputs_torch
from exporter.synthetic import generate_synthetic
from exporter.towers import numpy_tower
from exporter.train import TrainConfig, train_base_model
from model_repository import configs, versions
from model_repository import contract as c
from model_repository import retrieve_schema as schema
from model_repository.live_history import LiveHistory, LiveHistoryReader, history_path
from model_repository.sequence_tower import (
    NumpySequenceTower,
    SequenceTowerShapeError,
    sequence_inputs,
)
from model_repository.serving import Query, Retriever
from model_repository.tower import tower_from_tables
from tests.kernels.checks import assert_close

DIM, LENGTH = 16, 6
# measured max |numpy - torch| and |onnx - torch| 4.8e-7 at batch 64 (outputs of order 1-10
# from N(0, 0.5) weights); the tolerance leaves room for other BLAS kernels
ATOL, RTOL = 1e-5, 1e-5


def random_sequence_tower(*, blocks: int = 2, dim: int = DIM, length: int = LENGTH,
                          seed: int = 0) -> SequenceTower:
    """A tower whose every weight matters: N(0, 0.5) weights, LayerNorms included."""
    torch.manual_seed(seed)
    tower = SequenceTower(dim, length=length, blocks=blocks)
    with torch.no_grad():
        for p in tower.parameters():
            p.normal_(0.0, 0.5)
    return tower.eval()


@pytest.fixture(scope="module", params=[1, 2], ids=["1-block", "2-blocks"])
def exported(request, tmp_path_factory):
    tower = random_sequence_tower(blocks=request.param)
    path = export_user_tower(tower, tmp_path_factory.mktemp("seq") / "model.onnx", dim=DIM)
    return tower, path, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_numpy_torch_and_onnx_agree_on_ragged_and_empty_histories(exported, batch):
    tower, _, session = exported
    inputs = tower_inputs(tower, batch, rng=np.random.default_rng(batch))
    lengths = inputs[c.HISTORY_MASK].sum(1)
    assert lengths[0] == 0 and (batch == 1 or lengths[1] == LENGTH)  # empty and full included
    want = torch_query(tower, inputs)
    assert_close(numpy_tower(tower)(*inputs.values()), want, atol=ATOL, rtol=RTOL, name="numpy")
    (onnx_query,) = session.run([c.QUERY], inputs)
    assert_close(onnx_query, want, atol=ATOL, rtol=RTOL, name="onnx")
    # an empty history adds nothing: the query is the user row
    np.testing.assert_array_equal(numpy_tower(tower)(*inputs.values())[0], inputs[c.USER_EMB][0])


def test_check_onnx_parity_passes_and_catches_a_different_tower(exported):
    tower, path, _ = exported
    assert check_onnx_parity(tower, path, dim=DIM, batch=64) <= ATOL
    changed = random_sequence_tower(blocks=tower.blocks)
    with torch.no_grad():
        # position 0 holds an item only in a full history (not a constant shift: LayerNorm
        # removes those)
        changed.positions[0].add_(torch.randn(DIM))
    with pytest.raises(ParityError, match=r"max \|onnx - torch\|"):
        check_onnx_parity(changed, path, dim=DIM, batch=64)


def test_graph_takes_the_sequence_inputs_with_a_dynamic_batch(exported):
    _, path, _ = exported
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == [c.USER_EMB, c.HISTORY_SEQ, c.HISTORY_MASK]
    assert [o.name for o in model.graph.output] == [c.QUERY]
    shapes = {v.name: v.type.tensor_type.shape.dim for v in [*model.graph.input, *model.graph.output]}
    for name, dims in shapes.items():
        assert dims[0].dim_param and not dims[0].dim_value, f"{name}: batch axis is fixed"
    assert [d.dim_value for d in shapes[c.HISTORY_SEQ][1:]] == [LENGTH, DIM]
    assert [d.dim_value for d in shapes[c.HISTORY_MASK][1:]] == [LENGTH]


def test_inputs_keep_the_last_L_items_right_aligned():
    item_rows = np.arange(10 * 2, dtype=np.float32).reshape(10, 2) + 1  # no zero rows
    rows, mask = sequence_inputs(item_rows, [np.array([], np.int64), np.array([3]),
                                             np.arange(10)], 4)
    assert mask.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert not rows[0].any() and not rows[1, :3].any()
    np.testing.assert_array_equal(rows[1, 3], item_rows[3])
    np.testing.assert_array_equal(rows[2], item_rows[6:10])  # oldest first, most recent last


def test_torch_inputs_from_padded_histories_match_the_served_layout():
    item_rows = np.random.default_rng(0).normal(size=(30, DIM)).astype(np.float32)
    lists = [np.array([], np.int64), np.array([4]), np.arange(LENGTH - 1), np.arange(LENGTH),
             np.arange(LENGTH + 5) % 30]
    for width in (LENGTH - 2, LENGTH, LENGTH + 5):  # fewer, as many and more columns than L
        padded = np.full((len(lists), width), -1, np.int64)
        for row, h in enumerate(lists):
            kept = h[-width:]
            padded[row, width - kept.size:] = kept
        got = sequence_inputs_torch(torch.from_numpy(item_rows), torch.from_numpy(padded), LENGTH)
        want = sequence_inputs(item_rows, [h[-width:] for h in lists], LENGTH)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.numpy(), w)


def test_order_matters_and_only_the_last_L_items_count():
    """Not a bag of items: reversing a history changes the query; items older than the last L
    do not."""
    tower = numpy_tower(random_sequence_tower())
    rng = np.random.default_rng(1)
    item_rows = rng.normal(size=(40, DIM)).astype(np.float32)
    user = rng.normal(size=(1, DIM)).astype(np.float32)
    history = rng.permutation(40)[:LENGTH]
    query = tower(user, *tower.history_inputs(item_rows, [history]))
    reversed_query = tower(user, *tower.history_inputs(item_rows, [history[::-1]]))
    assert np.abs(query - reversed_query).max() > 0.1
    longer = np.concatenate([rng.permutation(40)[:7], history])
    np.testing.assert_array_equal(tower(user, *tower.history_inputs(item_rows, [longer])), query)


def test_tables_round_trip_and_bad_tables_are_named():
    tables = numpy_tower(random_sequence_tower()).tables()
    assert tuple(tables) == schema.SEQUENCE_TABLES
    again = NumpySequenceTower.from_tables(tables)
    assert (again.length, again.dim, again.blocks, again.hidden) == (LENGTH, DIM, 2, 2 * DIM)
    assert NumpySequenceTower.from_tables({}) is None
    with pytest.raises(SequenceTowerShapeError, match="seq_ffn_b2 is missing"):
        NumpySequenceTower({k: v for k, v in tables.items() if k != schema.SEQ_FFN_B2})
    with pytest.raises(SequenceTowerShapeError, match=r"seq_attn_in is \(2, 47, 16\), expected"):
        NumpySequenceTower({**tables, schema.SEQ_ATTN_IN: tables[schema.SEQ_ATTN_IN][:, 1:]})
    with pytest.raises(schema.SchemaError, match="sequence-tower version without its tables"):
        tower_from_tables({}, schema.TOWER_SEQUENCE)


# --- retrieve serves a version that carries the sequence tower --------------------------------

USERS, ITEMS = 6, 40
USER_OFFSET, ITEM_OFFSET = 100, 7000


@pytest.fixture
def sequence_version(tmp_path):
    torch_tower = random_sequence_tower()
    rng = np.random.default_rng(2)
    history = np.full((USERS, LENGTH), -1, np.int64)
    history[:, -3:] = rng.integers(0, ITEMS, size=(USERS, 3))
    history[0] = -1  # user 0: no stored history
    tables = schema.make_tables(
        user_ids=np.arange(USERS) + USER_OFFSET, item_ids=np.arange(ITEMS) + ITEM_OFFSET,
        user_rows=rng.normal(size=(USERS, DIM)), item_rows=rng.normal(size=(ITEMS, DIM)),
        user_history=history, item_popularity=np.arange(ITEMS)[::-1],
        tower=numpy_tower(torch_tower).tables())
    meta = schema.RetrieveMeta(dim=DIM, history_len=LENGTH, tower=schema.TOWER_SEQUENCE)
    model_dir = tmp_path / "retrieve"
    versions.write_version(model_dir, 1, tables, meta=meta.to_dict())
    return model_dir, tables, torch_tower


def _reference_scores(tables, torch_tower, user_row, history_rows):
    """Scores of every item for one request, in torch from the tables (history: item rows)."""
    items = torch.from_numpy(tables["item_rows"])
    padded = torch.tensor([[-1] * LENGTH + list(history_rows)], dtype=torch.int64)
    rows, mask = sequence_inputs_torch(items, padded, LENGTH)
    user = torch.zeros(1, DIM)
    if user_row >= 0:
        user = torch.from_numpy(tables["user_rows"][user_row:user_row + 1])
    with torch.no_grad():
        return (items @ torch_tower(user, rows, mask)[0]).numpy()


def _check(answer, scores, k):
    want = np.sort(scores)[::-1][:k]
    assert_close(answer.scores, want, atol=1e-4, rtol=1e-5, name="top-k scores")
    assert_close(answer.scores, scores[answer.item_ids - ITEM_OFFSET], atol=1e-4, rtol=1e-5,
                 name="scores of the returned items")


def test_retrieve_builds_the_query_with_the_sequence_tower(sequence_version):
    model_dir, tables, torch_tower = sequence_version
    retriever = Retriever(model_dir / "1")
    assert retriever.tower_from_tables and isinstance(retriever.tower, NumpySequenceTower)
    sent = np.arange(LENGTH + 4) + ITEM_OFFSET  # longer than L: the last L count
    queries = [Query(user_id=USER_OFFSET + 2, k=8),                    # stored history
               Query(user_id=USER_OFFSET + 3, k=8, history=sent),      # HISTORY
               Query(user_id=999, k=8, history=sent[:2]),              # unknown user, HISTORY
               Query(user_id=USER_OFFSET, k=8)]                        # known, empty history
    answers = retriever.answer(queries)
    stored = tables["user_history"][2][tables["user_history"][2] >= 0]
    _check(answers[0], _reference_scores(tables, torch_tower, 2, stored), 8)
    _check(answers[1], _reference_scores(tables, torch_tower, 3, sent[-LENGTH:] - ITEM_OFFSET), 8)
    _check(answers[2], _reference_scores(tables, torch_tower, -1, sent[:2] - ITEM_OFFSET), 8)
    _check(answers[3], tables["item_rows"] @ tables["user_rows"][0], 8)  # the user row alone


def test_an_event_in_the_live_history_is_in_the_next_requests_sequence(sequence_version):
    model_dir, tables, torch_tower = sequence_version
    writer = LiveHistory(history_path(model_dir), history_len=LENGTH)
    try:
        retriever = Retriever(model_dir / "1", live_history=LiveHistoryReader(writer.path))
        user = USER_OFFSET + 4
        (before,) = retriever.answer([Query(user_id=user, k=8)])
        clicked = [ITEM_OFFSET + 11, ITEM_OFFSET + 29]
        writer.append([(user, item, 1.0) for item in clicked], offset=2)
        (after,) = retriever.answer([Query(user_id=user, k=8)])
        _check(after, _reference_scores(tables, torch_tower, 4, np.array(clicked) - ITEM_OFFSET), 8)
        assert not np.array_equal(before.scores, after.scores)
        writer.append([(user, ITEM_OFFSET + 3, 1.0)], offset=3)  # the order of the events counts
        (latest,) = retriever.answer([Query(user_id=user, k=8)])
        _check(latest, _reference_scores(tables, torch_tower, 4,
                                         np.array([*clicked, ITEM_OFFSET + 3]) - ITEM_OFFSET), 8)
    finally:
        writer.close()


def test_a_sequence_version_without_its_tables_is_refused(sequence_version, tmp_path):
    _, tables, _ = sequence_version
    plain = {k: v for k, v in tables.items() if k not in schema.SEQUENCE_TABLES}
    meta = schema.RetrieveMeta(dim=DIM, history_len=LENGTH, tower=schema.TOWER_SEQUENCE)
    path = versions.write_version(tmp_path / "other", 1, plain, meta=meta.to_dict())
    with pytest.raises(schema.SchemaError, match="version 1: a sequence-tower version without"):
        Retriever(path, lambda u, h: u + h)


def test_build_serves_what_it_trained(tmp_path):
    """A trained sequence model written as a repository: retrieve's queries are the model's
    evaluation queries, the user_tower config takes the sequence, the meta names the kind."""
    dataset = generate_synthetic(n_users=40, n_items=30, n_events=600, seed=5, progress=False)
    model = train_base_model(dataset.interactions, items=dataset.items, progress=False,
                             config=TrainConfig(dim=8, epochs=1, batch_size=64, history_len=5,
                                                tower=schema.TOWER_SEQUENCE))
    assert isinstance(model.tower, SequenceTower) and model.tower.length == 5
    result = write_repository(model, tmp_path / "repository", tensorrt=False)
    assert result.onnx_max_abs_err <= ATOL
    retriever = Retriever(result.repository / c.RETRIEVE / "1")
    assert retriever.meta.tower == schema.TOWER_SEQUENCE
    histories, _ = retriever._histories([Query(user_id=int(u)) for u in model.user_ids],
                                        np.arange(len(model.user_ids)))
    served = retriever._user_queries(np.arange(len(model.user_ids)), histories,
                                     list(range(len(model.user_ids))))
    assert_close(served, model.user_queries(), atol=1e-5, rtol=1e-5, name="served queries")
    config = configs.read_config(result.repository / c.USER_TOWER)
    # one config takes every tower (configs.user_tower_config): the sequence's inputs too
    assert {c.USER_EMB, c.HISTORY_SEQ, c.HISTORY_MASK} <= {i.name for i in config.input}
