"""gather_pool on torch tensors through the Triton kernel `_gather_pool_kernel`.

The path for CUDA tensors (and, under TRITON_INTERPRET=1, for CPU tensors in the tests): one
program per (list, BLOCK_D columns) walks its list BLOCK_L ids at a time and accumulates the
weighted rows in fp32 registers, so each gathered row is read once and only the pooled
(lists, dim) rows are written; the kernel's docstring counts the bytes.

Importing this module imports torch and triton: `kernels.gather_pool` imports it only when a
call takes the Triton path, so numpy callers (the serving model) never pay for either.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kernels._launch import gather_pool_blocks, rows_contiguous


@triton.jit
def _gather_pool_kernel(
    # pointers
    table_ptr, ids_ptr, offsets_ptr, weights_ptr, out_ptr,
    # sizes
    dim,
    # strides
    stride_table_row, stride_out_row,
    # meta-parameters
    HAS_WEIGHTS: tl.constexpr, MEAN: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program pools one list over BLOCK_D columns: out[b, cols] = sum_j w_j table[ids_j, cols].

    Shapes: table (rows, dim) fp32/fp16/bf16, ids (nnz,) int, offsets (lists + 1,) int64,
    weights (nnz,) fp32, out (lists, dim) fp32; grid (lists, cdiv(dim, BLOCK_D)).
    Traffic per call: reads nnz * dim * itemsize(table) bytes of rows, 8 (+ 4 with weights)
    bytes per id per column block and 16 bytes of offsets per list; writes lists * dim * 4 bytes.
    Ids were range-checked by the wrapper; lanes past a list's end are masked, never read.
    """
    pid_list = tl.program_id(0)
    pid_d = tl.program_id(1)
    start = tl.load(offsets_ptr + pid_list)
    end = tl.load(offsets_ptr + pid_list + 1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_valid = offs_d < dim
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for l0 in range(start, end, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        l_valid = offs_l < end
        rows = tl.load(ids_ptr + offs_l, mask=l_valid, other=0).to(tl.int64)
        vals = tl.load(
            table_ptr + rows[:, None] * stride_table_row + offs_d[None, :],
            mask=l_valid[:, None] & d_valid[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_WEIGHTS:
            w = tl.load(weights_ptr + offs_l, mask=l_valid, other=0.0)
            vals = vals * w[:, None]
        acc += tl.sum(vals, axis=0)
    if MEAN:
        acc = acc / tl.maximum(end - start, 1).to(tl.float32)
    tl.store(out_ptr + pid_list * stride_out_row + offs_d, acc, mask=d_valid)


def launch(table: Any, ids: Any, offsets: Any, weights: Any, mode: str) -> Any:
    """Pool checked torch tensors on one device: the (lists, dim) float32 result of `gather_pool`."""
    n_lists, dim = int(offsets.shape[0]) - 1, int(table.shape[1])
    out = torch.empty((n_lists, dim), dtype=torch.float32, device=table.device)
    if n_lists == 0 or dim == 0:
        return out
    table = rows_contiguous(table)
    ids = ids.contiguous()
    offsets = offsets.to(torch.int64).contiguous()
    if weights is not None:
        weights = weights.to(torch.float32).contiguous()
    blocks = gather_pool_blocks(dim)
    grid = (n_lists, -(-dim // blocks.BLOCK_D))
    _gather_pool_kernel[grid](
        table, ids, offsets, weights if weights is not None else out, out,
        dim,
        table.stride(0), out.stride(0),
        HAS_WEIGHTS=weights is not None, MEAN=mode == "mean",
        BLOCK_L=blocks.BLOCK_L, BLOCK_D=blocks.BLOCK_D, num_warps=blocks.num_warps,
    )  # fmt: skip
    return out
