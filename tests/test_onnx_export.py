"""exporter.onnx_export: the ONNX user tower has the contract's names, a dynamic batch axis, and
computes what the torch tower computes."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporter.onnx_export import (
    ONNX_OPSET,
    ParityError,
    build_tensorrt_plan,
    check_onnx_parity,
    export_user_tower,
)
from exporter.synthetic import generate_synthetic
from exporter.towers import UserTower
from exporter.train import TrainConfig, train_base_model
from model_repository.contract import HISTORY_EMB, MAX_BATCH_SIZE, QUERY, USER_EMB
from tests.fixtures.serving_pool import pool_numpy
from tests.fixtures.tensorrt import needs_tensorrt

DIM = 24


def random_tower(dim: int = DIM, seed: int = 0) -> UserTower:
    """A tower whose every weight matters: the default init leaves outputs close to u + h."""
    torch.manual_seed(seed)
    tower = UserTower(dim)
    with torch.no_grad():
        for p in tower.parameters():
            p.normal_(0.0, 0.5)
    return tower.eval()


@pytest.fixture
def exported(tmp_path):
    tower = random_tower()
    return tower, export_user_tower(tower, tmp_path / "user_tower" / "model.onnx", dim=DIM)


def test_graph_has_contract_names_and_dynamic_batch(exported):
    _, path = exported
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == [USER_EMB, HISTORY_EMB]
    assert [o.name for o in model.graph.output] == [QUERY]
    assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [
        ONNX_OPSET]
    for value in [*model.graph.input, *model.graph.output]:
        tensor = value.type.tensor_type
        assert tensor.elem_type == onnx.TensorProto.FLOAT, value.name
        batch, dim = tensor.shape.dim
        assert batch.dim_param and not batch.dim_value, f"{value.name}: batch axis is fixed"
        assert dim.dim_value == DIM, value.name
    assert not list(path.parent.glob(".*.tmp")), "temporary export file left behind"


@pytest.mark.parametrize("batch", [1, 7, MAX_BATCH_SIZE])
def test_onnx_parity(exported, batch):
    tower, path = exported
    # measured 0 to 4.3e-6 here: fp32 outputs of order 10 (large random weights), other kernels
    assert check_onnx_parity(tower, path, dim=DIM, batch=batch) <= 1e-5


def test_parity_check_catches_a_different_tower(exported):
    tower, path = exported
    with torch.no_grad():
        tower.mix[2].bias.add_(1e-3)
    with pytest.raises(ParityError, match=r"max \|onnx - torch\| = 0.001 > atol"):
        check_onnx_parity(tower, path, dim=DIM)


def test_onnx_output_on_zero_inputs_by_hand(exported):
    """Spot check by hand: zero inputs give the MLP's output on zeros, i.e. relu(b1) @ W2 + b2."""
    tower, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    zeros = np.zeros((3, DIM), dtype=np.float32)
    (query,) = session.run([QUERY], {USER_EMB: zeros, HISTORY_EMB: zeros})
    first, second = tower.mix[0], tower.mix[2]
    want = (torch.relu(first.bias) @ second.weight.T + second.bias).detach().numpy()
    np.testing.assert_allclose(query, np.tile(want, (3, 1)), rtol=1e-5, atol=1e-5)


def test_served_query_equals_trained_query(tmp_path):
    """End to end: numpy pooling (serving's) + the ONNX tower on a trained model's tables give
    the queries the model was evaluated with."""
    dataset = generate_synthetic(n_users=40, n_items=30, n_events=600, seed=5)
    model = train_base_model(dataset.interactions, items=dataset.items, progress=False,
                             config=TrainConfig(dim=8, epochs=2, batch_size=64))
    path = export_user_tower(model.tower, tmp_path / "model.onnx", dim=8)
    pooled = pool_numpy(model.item_rows, model.user_history, model.config.recency_decay)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (served,) = session.run([QUERY], {USER_EMB: model.user_rows,
                                      HISTORY_EMB: pooled.astype(np.float32)})
    np.testing.assert_allclose(served, model.user_queries(), rtol=1e-5, atol=1e-6)


def test_export_rejects_wrong_dim(tmp_path):
    with pytest.raises(ValueError, match="dim=8 but the tower was built for dim=24"):
        export_user_tower(random_tower(), tmp_path / "model.onnx", dim=8)


def test_export_leaves_training_mode_alone(tmp_path):
    tower = random_tower().train()
    export_user_tower(tower, tmp_path / "model.onnx", dim=DIM)
    assert tower.training


@needs_tensorrt
def test_tensorrt_plan_of_the_user_tower_is_written(exported, tmp_path):
    _, path = exported
    plan = build_tensorrt_plan(path, tmp_path / "model.plan")
    assert plan is not None and plan.stat().st_size > 0


def test_without_cuda_build_tensorrt_plan_returns_none_writes_nothing_and_logs_why(
        exported, tmp_path, caplog, monkeypatch):
    """Runs on every host: CUDA is hidden, so a GPU host takes the CPU host's path too (and a
    host without the tensorrt package stops one check earlier, with its own reason)."""
    _, path = exported
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    caplog.set_level(logging.INFO, logger="exporter.onnx_export")
    assert build_tensorrt_plan(path, tmp_path / "model.plan") is None
    assert not (tmp_path / "model.plan").exists()
    assert "no TensorRT plan:" in caplog.text
