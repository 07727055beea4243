"""Which implementation a kernel test runs, and how its inputs get there.

Every op is checked through four doors against its torch reference:
  triton-interpreter  the Triton-language kernel on CPU tensors (TRITON_INTERPRET=1)
  triton-cuda         the same kernel compiled, on CUDA tensors (marker `gpu`)
  cpu-torch           the public op with CPU tensors (the CPU path)
  cpu-numpy           the public op with numpy arrays (the CPU path, torch-free)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch

from kernels._launch import interpreting

IMPLS = [
    pytest.param(
        "triton-interpreter",
        id="triton-interpreter",
        marks=pytest.mark.skipif(
            not interpreting(), reason="the Triton kernel runs on CPU only under TRITON_INTERPRET=1"
        ),
    ),
    pytest.param(
        "triton-cuda",
        id="triton-cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(
                not torch.cuda.is_available() or interpreting(),
                reason="needs a CUDA device and TRITON_INTERPRET=0 to run the compiled kernel",
            ),
        ],
    ),
    pytest.param("cpu-torch", id="cpu-torch"),
    pytest.param("cpu-numpy", id="cpu-numpy"),
]


def _move(impl: str, x: Any) -> Any:
    if isinstance(x, (tuple, list)):
        return type(x)(_move(impl, v) for v in x)
    if not isinstance(x, torch.Tensor):
        return x
    if impl == "cpu-numpy":
        if x.dtype == torch.bfloat16:
            pytest.skip("numpy has no bfloat16; bf16 reaches the CPU path as torch tensors")
        return x.numpy()
    if impl == "triton-cuda":
        return x.cuda()
    return x


def _back(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_back(v) for v in x)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return x.cpu()


def from_numpy(x: Any) -> Any:
    """numpy arrays (also inside tuples and lists) -> CPU tensors, for tables written in numpy."""
    if isinstance(x, (tuple, list)):
        return type(x)(from_numpy(v) for v in x)
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def run(impl: str, public_op: Callable, triton_op: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call the op through `impl` with torch CPU inputs; results come back as CPU tensors."""
    op = triton_op if impl.startswith("triton") else public_op
    out = op(*_move(impl, list(args)), **{k: _move(impl, v) for k, v in kwargs.items()})
    if impl == "cpu-numpy":  # numpy in, numpy out
        outs = out if isinstance(out, tuple) else (out,)
        assert all(isinstance(o, np.ndarray) for o in outs), [type(o) for o in outs]
    return _back(out)
