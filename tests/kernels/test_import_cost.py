"""The serving model imports `kernels` on every reload: numpy callers must not pay for torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROGRAM = """
import sys
import numpy as np
import kernels

rng = np.random.default_rng(0)
items = rng.standard_normal((500, 16), dtype=np.float32)
queries = rng.standard_normal((3, 16), dtype=np.float32)
offsets = np.array([0, 2, 2, 5])
scores, ids = kernels.score_topk(
    queries, items, 7, exclude=(offsets, np.array([1, 2, 3, 4, 5])),
    item_mask=np.zeros(500, dtype=bool),
)
pooled = kernels.gather_pool(items.astype(np.float16), np.array([0, 1, 2, 3, 4]), offsets,
                             np.ones(5, np.float32), mode="mean")
assert isinstance(scores, np.ndarray) and isinstance(pooled, np.ndarray)
try:
    kernels.score_topk(queries, items, 0)
except kernels.KernelInputError:
    pass
# The Triton paths live in modules of their own that the public ops import only when a call
# runs a Triton kernel; onnxruntime's graph ships as a file so the onnx package stays out too.
heavy = sorted(m for m in ("torch", "triton", "onnx", "kernels._score_topk_triton",
                           "kernels._gather_pool_triton") if m in sys.modules)
assert not heavy, f"imported {heavy}"
print("ok")
"""


def test_numpy_calls_import_neither_torch_nor_triton_nor_onnx():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
