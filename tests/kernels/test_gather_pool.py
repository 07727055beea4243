"""gather_pool against its torch reference: Triton kernel (interpreter / CUDA) and the CPU path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import KernelInputError, gather_pool, gather_pool_reference, gather_pool_triton
from tests.kernels.checks import assert_close
from tests.kernels.impls import IMPLS, from_numpy, run

# Tolerances from measurement: worst |got - want| over SHAPES was 2.4e-6 for every dtype (fp32
# sums of <= 70 rows in another order; fp16/bf16 rows upcast exactly before the fp32 sum).
DTYPE_TOL = [
    pytest.param(torch.float32, 2e-5, 1e-5, id="fp32"),
    pytest.param(torch.float16, 2e-5, 1e-5, id="fp16"),
    pytest.param(torch.bfloat16, 2e-5, 1e-5, id="bf16"),
]

SHAPES = [
    # (lists, rows, d, max_len); every case has some empty lists
    pytest.param(1, 50, 16, 5, id="one-list"),
    pytest.param(7, 300, 100, 70, id="d100-long-lists"),  # d=100 masked columns; > BLOCK_L ids
    pytest.param(64, 1000, 128, 3, id="many-short-lists"),
    pytest.param(5, 20, 64, 0, id="all-empty"),
]


def _inputs(lists, rows, d, max_len, dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, d, generator=g).to(dtype)
    lengths = torch.randint(0, max_len + 1, (lists,), generator=g)
    lengths[::3] = 0  # empty histories on purpose
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    ids = torch.randint(0, rows, (int(offsets[-1]),), generator=g)
    weights = torch.rand(len(ids), generator=g)
    return table, ids, offsets, weights


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOL)
@pytest.mark.parametrize("lists, rows, d, max_len", SHAPES)
def test_matches_reference(impl, lists, rows, d, max_len, dtype, atol, rtol, weighted, mode):
    table, ids, offsets, weights = _inputs(lists, rows, d, max_len, dtype)
    weights = weights if weighted else None
    got = run(impl, gather_pool, gather_pool_triton, table, ids, offsets, weights, mode=mode)
    want = gather_pool_reference(table, ids, offsets, weights, mode=mode)
    assert got.dtype == torch.float32 and got.shape == (lists, d)
    assert_close(got, want, atol=atol, rtol=rtol, name=f"gather_pool {mode}")
    empty = offsets.diff() == 0
    assert (got[empty] == 0).all(), "an empty list must pool to zeros"


@pytest.mark.parametrize("impl", IMPLS)
def test_int32_ids_and_zero_lists(impl):
    table, ids, offsets, _ = _inputs(4, 30, 16, 6, torch.float32, seed=1)
    got = run(impl, gather_pool, gather_pool_triton, table, ids.int(), offsets.int())
    assert_close(got, gather_pool_reference(table, ids, offsets), atol=2e-5, rtol=1e-5)
    none = run(impl, gather_pool, gather_pool_triton, table, ids[:0], torch.zeros(1).long())
    assert none.shape == (0, 16)


def _bad_calls():
    table = np.zeros((10, 4), np.float32)
    ids, offsets = np.array([1, 2, 3]), np.array([0, 1, 3])
    return [
        ("ids holds id 10, outside the table's rows", (table, np.array([1, 10, 3]), offsets), {}),
        ("ids holds id -1, outside the table's rows", (table, np.array([-1, 2, 3]), offsets), {}),
        ("offsets must start at 0", (table, ids, np.array([1, 1, 3])), {}),
        ("offsets must not decrease", (table, ids, np.array([0, 2, 1, 3])), {}),
        (r"offsets\[-1\] must equal len\(ids\)=3", (table, ids, np.array([0, 1, 2])), {}),
        ("offsets must be a 1-D", (table, ids, offsets[None]), {}),
        ("ids must have dtype", (table, ids.astype(np.float32), offsets), {}),
        ("table must have dtype", (table.astype(np.int32), ids, offsets), {}),
        ("weights must have one entry per id", (table, ids, offsets, np.ones(2, np.float32)), {}),
        ("mode must be one of", (table, ids, offsets), {"mode": "max"}),
    ]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("match, args, kwargs", _bad_calls())
def test_bad_input_is_an_error(impl, match, args, kwargs):
    with pytest.raises(KernelInputError, match=match):
        run(impl, gather_pool, gather_pool_triton, *from_numpy(args), **kwargs)
