"""User tower -> ONNX (served with onnxruntime) and, on GPU hosts, -> TensorRT plan.

Tensor names come from :mod:`model_repository.contract`, so the file matches the served
``user_tower`` config: inputs USER_EMB (B, d) and, for a pooled tower, HISTORY_EMB (B, d), for a
sequence tower HISTORY_SEQ (B, L, d) and HISTORY_MASK (B, L); output QUERY (B, d); all float32,
batch axis dynamic.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporter.sequence_tower import SequenceTower
from exporter.towers import Tower
from model_repository.contract import (
    HISTORY_EMB,
    HISTORY_MASK,
    HISTORY_SEQ,
    MAX_BATCH_SIZE,
    QUERY,
    USER_EMB,
)
from model_repository.sequence_tower import sequence_inputs

log = logging.getLogger(__name__)

ONNX_OPSET = 17
DEFAULT_PARITY_ATOL = 1e-5
DEFAULT_PARITY_BATCH = 64
PARITY_SEED = 0
TRT_WORKSPACE_BYTES = 1 << 30
LEGACY_EXPORT_WARNING = "You are using the legacy TorchScript-based ONNX export"
LEGACY_EXPORTER_MODULE = r"torch\.onnx\._internal\.torchscript_exporter\."


class ParityError(RuntimeError):
    """The exported graph disagrees with the torch module beyond the tolerance."""


@contextmanager
def _eval_mode(module: torch.nn.Module):
    """Eval mode inside, the caller's mode restored after (a tower may be mid-training)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def tower_inputs(tower: Tower, batch: int, *, rng: np.random.Generator | None = None
                 ) -> dict[str, np.ndarray]:
    """The tower's ONNX inputs by name for ``batch`` users: zeros, or random from ``rng``.

    Random sequence inputs are ragged: history lengths run from 0 (empty: the output is the
    user row) to past L (truncated to the last L), as `sequence_inputs` lays them out."""
    dim = tower.dim
    if rng is None:
        user = np.zeros((batch, dim), np.float32)
    else:
        user = rng.standard_normal((batch, dim), dtype=np.float32)
    if not isinstance(tower, SequenceTower):
        history = np.zeros_like(user) if rng is None else rng.standard_normal(
            (batch, dim), dtype=np.float32)
        return {USER_EMB: user, HISTORY_EMB: history}
    if rng is None:
        rows = np.zeros((batch, tower.length, dim), np.float32)
        return {USER_EMB: user, HISTORY_SEQ: rows, HISTORY_MASK: np.ones(rows.shape[:2], np.float32)}
    items = rng.standard_normal((4 * tower.length, dim), dtype=np.float32)
    lengths = rng.integers(0, tower.length + 3, size=batch)
    lengths[: min(batch, 2)] = (0, tower.length)[: min(batch, 2)]  # always an empty and a full one
    histories = [rng.integers(0, len(items), size=n) for n in lengths]
    rows, mask = sequence_inputs(items, histories, tower.length)
    return {USER_EMB: user, HISTORY_SEQ: rows, HISTORY_MASK: mask}


def torch_query(tower: Tower, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The torch tower (eval mode, no grad) on ONNX-named inputs -> QUERY (B, d)."""
    with torch.no_grad(), _eval_mode(tower):
        return tower(*(torch.from_numpy(array) for array in inputs.values())).numpy()


def export_user_tower(tower: Tower, path: str | Path, *, dim: int) -> Path:
    """Write ``tower`` as ONNX (opset 17, dynamic batch axis) to ``path``; return the path.

    Uses the TorchScript exporter (``dynamo=False``): torch 2.13's default, the torch.export-based
    exporter, needs ``onnxscript``, which this project does not install, and the tower is a
    static graph (Add, Concat, Gemm, Relu; the sequence tower adds MatMul, Softmax and
    LayerNormalization) that the old exporter handles fully. torch deprecates
    that exporter; once ``onnxscript`` is a dependency, ``dynamo=True`` is the switch, and
    :func:`check_onnx_parity` tells whether the result still matches. The file is written next
    to ``path`` and renamed into place, so a reader never sees half a model.
    """
    if tower.dim != dim:
        raise ValueError(f"dim={dim} but the tower was built for dim={tower.dim}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = tower_inputs(tower, 2)
    # a private name in the same folder (so the rename is atomic), created by torch with the
    # usual umask permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _eval_mode(tower), warnings.catch_warnings():
            # The TorchScript exporter is a deliberate choice (see the docstring), and torch
            # 2.13 deprecates it twice per call: torch/onnx/__init__.py warns on dynamo=False,
            # and torchscript_exporter/utils.py calls its own @deprecated setup_onnx_logging.
            # Only those two DeprecationWarnings are silenced, and only around this call.
            warnings.filterwarnings("ignore", message=LEGACY_EXPORT_WARNING,
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    module=LEGACY_EXPORTER_MODULE)
            torch.onnx.export(
                tower, tuple(torch.from_numpy(array) for array in example.values()), tmp,
                input_names=list(example),
                output_names=[QUERY],
                dynamic_axes={name: {0: "batch"} for name in (*example, QUERY)},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s user tower (dim %d) to %s", tower.kind, dim, path)
    return path


def check_onnx_parity(tower: Tower, onnx_path: str | Path, *, dim: int,
                      batch: int = DEFAULT_PARITY_BATCH,
                      atol: float = DEFAULT_PARITY_ATOL) -> float:
    """Run the ONNX file (onnxruntime, CPUExecutionProvider) and the torch tower on the same
    random float32 inputs for ``batch`` users (`tower_inputs`: ragged and empty histories for a
    sequence tower); return the max abs difference of QUERY.

    Raises :class:`ParityError` above ``atol``, naming the worst element.
    """
    if tower.dim != dim:
        raise ValueError(f"dim={dim} but the tower was built for dim={tower.dim}")
    inputs = tower_inputs(tower, batch, rng=np.random.default_rng(PARITY_SEED))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run([QUERY], inputs)
    want = torch_query(tower, inputs)
    if got.shape != want.shape:
        raise ParityError(f"{onnx_path}: QUERY shape {got.shape}, torch gives {want.shape}")
    diff = np.abs(got - want)
    worst = float(diff.max()) if diff.size else 0.0
    if not worst <= atol:  # also catches NaN
        at = np.unravel_index(int(np.nanargmax(diff)), diff.shape)
        raise ParityError(f"{onnx_path}: max |onnx - torch| = {worst:.3g} > atol {atol:.3g} "
                          f"at {tuple(int(i) for i in at)}: onnx {got[at]:.6g}, "
                          f"torch {want[at]:.6g} ({int((diff > atol).sum())} of {diff.size} "
                          "elements differ)")
    return worst


Shape = tuple[int, ...]


def build_tensorrt_plan(onnx_path: str | Path, plan_path: str | Path, *,
                        profile_shapes: dict[str, tuple[Shape, Shape, Shape]] | None = None,
                        ) -> Path | None:
    """Build a serialized TensorRT engine from an ONNX file; None where that can't run.

    Needs the ``tensorrt`` package and a CUDA device; otherwise logs why and returns None. FP16
    is enabled where the GPU has fast fp16. ``profile_shapes``: input name -> (min, opt, max)
    shapes of its one optimisation profile; by default (the user tower: inputs with a batch axis
    and fixed other axes) batch 1..64 (MAX_BATCH_SIZE), optimised for the largest. Not verified
    on the CPU-only development machine: this path only runs on GPU hosts (the NGC container's
    tensorrt backend).
    """
    try:
        import tensorrt as trt
    except ImportError:
        log.info("no TensorRT plan: the tensorrt package is not installed")
        return None
    if not torch.cuda.is_available():
        log.info("no TensorRT plan: no CUDA device")
        return None
    trt_log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_log)
    # explicit batch is the only mode in TensorRT 10; the flag is needed before it
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_log)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the ONNX file: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, TRT_WORKSPACE_BYTES)
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if profile_shapes is not None:
            profile.set_shape(tensor.name, *profile_shapes[tensor.name])
            continue
        rest = tuple(tensor.shape[1:])
        largest = (MAX_BATCH_SIZE, *rest)
        profile.set_shape(tensor.name, (1, *rest), largest, largest)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see its log)")
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(plan))
    log.info("built TensorRT plan %s (fp16=%s)", plan_path, builder.platform_has_fast_fp16)
    return plan_path
