"""score_topk on torch tensors through the Triton kernel `_score_topk_kernel`.

The path for CUDA tensors (and, under TRITON_INTERPRET=1, for CPU tensors in the tests): one
program scores a block of queries against a contiguous range of items tile by tile, keeps a
running top-K of (score, id) keys per query in registers (bitonic sort and merge, see
`_score_topk_keys`), and writes only (queries x ranges x K_PAD) keys; one torch.topk over them
merges the ranges. It reads the item table once per query block and never writes the
(queries x items) score matrix; the kernel's docstring counts the bytes it moves.

Importing this module imports torch and triton: `kernels.score_topk` imports it only when a call
takes the Triton path, so numpy callers (the serving model) never pay for either.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kernels._launch import (
    cdiv,
    dot_in_fp32,
    dot_precision,
    dtype_name,
    next_power_of_2,
    prune_score_topk_configs,
    rows_contiguous,
    score_topk_blocks,
    score_topk_configs,
)
from kernels._score_topk_keys import decode_keys


def _autotune_configs() -> list[triton.Config]:
    """score_topk_configs() as triton.Configs: num_warps is a launch option, not a meta-parameter."""
    configs = []
    for config in score_topk_configs():
        meta = dict(config)
        num_warps = meta.pop("num_warps")
        configs.append(triton.Config(meta, num_warps=num_warps))
    return configs


@triton.jit
def _order_key(scores, item_ids):
    """(score, id) -> int64 key ordered by score, then by lower id; NaN scores become -inf."""
    scores = tl.where(scores != scores, float("-inf"), scores)
    scores = tl.where(scores == 0.0, 0.0, scores)  # -0.0 and +0.0 must tie
    bits = scores.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) + (0xFFFFFFFF - item_ids.to(tl.int64))


@triton.jit
def _compare_swap(x, ROWS: tl.constexpr, LEN: tl.constexpr, J: tl.constexpr, S: tl.constexpr,
                  ORDER: tl.constexpr):  # fmt: skip
    """One bitonic step on each row of x (ROWS, LEN): compare-and-swap columns c and c ^ 2**J.

    ORDER 0 puts the smaller key first, 1 the larger, 2 alternates per block of 2**S columns
    (ascending where bit S of the column is 0). Built from min/max over a size-2 axis, so the
    interpreter runs it as a few numpy calls (tl.sort's xor_sum reduces element by element
    there, about 1000x slower).
    """
    INNER: tl.constexpr = 1 << J
    OUTER: tl.constexpr = LEN // (2 * INNER)
    pairs = tl.reshape(x, (ROWS, OUTER, 2, INNER))
    low = tl.min(pairs, axis=2)
    high = tl.max(pairs, axis=2)
    if ORDER == 2:
        # bit S of the column is bit S - J - 1 of the OUTER index
        desc = ((tl.arange(0, OUTER) >> (S - J - 1)) & 1)[None, :, None] != 0
        first = tl.where(desc, high, low)
        second = tl.where(desc, low, high)
    elif ORDER == 1:
        first = high
        second = low
    else:
        first = low
        second = high
    swapped = tl.permute(tl.join(first, second), (0, 1, 3, 2))
    return tl.reshape(swapped, (ROWS, LEN))


@triton.jit
def _bitonic_sort(x, ROWS: tl.constexpr, LOG_LEN: tl.constexpr, DESCENDING: tl.constexpr):
    """Sort each row of x (ROWS, 2**LOG_LEN): log2(LEN) * (log2(LEN) + 1) / 2 compare-swaps."""
    for s in tl.static_range(1, LOG_LEN + 1):
        for i in tl.static_range(0, s):
            if s < LOG_LEN:
                x = _compare_swap(x, ROWS, 1 << LOG_LEN, s - 1 - i, s, 2)
            else:
                x = _compare_swap(x, ROWS, 1 << LOG_LEN, s - 1 - i, s, DESCENDING)
    return x


@triton.jit
def _bitonic_merge_ascending(x, ROWS: tl.constexpr, LOG_LEN: tl.constexpr):
    """Sort each row of x (ROWS, 2**LOG_LEN) that is already bitonic: log2(LEN) compare-swaps."""
    for i in tl.static_range(0, LOG_LEN):
        x = _compare_swap(x, ROWS, 1 << LOG_LEN, LOG_LEN - 1 - i, LOG_LEN, 0)
    return x


@triton.autotune(
    configs=_autotune_configs(),
    key=["batch_bucket", "dim", "K_PAD"],
    prune_configs_by={"early_config_prune": prune_score_topk_configs},
)
@triton.jit
def _score_topk_kernel(
    # pointers
    q_ptr, items_ptr, item_mask_ptr, excl_ids_ptr, excl_offsets_ptr, excl_cursor_ptr,
    part_keys_ptr,
    # sizes
    n_queries, n_items, dim, tiles_per_prog, batch_bucket,
    # strides
    stride_q_row, stride_items_row, stride_cursor_row, stride_part_row,
    # meta-parameters
    K_PAD: tl.constexpr, LOG_K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, LOG_BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr, HAS_MASK: tl.constexpr, HAS_EXCLUDE: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_B queries against one contiguous range of tiles_per_prog * BLOCK_N items.

    Per BLOCK_N tile it computes the (BLOCK_B, BLOCK_N) fp32 scores with tl.dot (fp32 inputs
    in IEEE precision, not TF32; fp16/bf16 natively; fp32 accumulation), masks banned and
    excluded items to -inf, turns scores into (score, id) keys, sorts the tile's keys (bitonic
    network) and merges its best K_PAD into a running ascending top-K_PAD (max of ascending and
    descending rows, then one bitonic merge). Tiles that cannot beat any query's current K-th
    key skip the sort and merge. At the end it writes its (BLOCK_B, K_PAD) keys to
    part_keys[:, pid_n, :]; the wrapper merges the ranges with one topk over the keys.

    Shapes: q (queries, dim) and items (items, dim) of one dtype; item_mask (items,) uint8;
    excl_ids (nnz,) int64, sorted within each query's CSR slice excl_offsets (queries + 1,);
    excl_cursor (queries, ranges) int64: index of each query's first excluded id >= the
    range's first item; part_keys (queries, ranges, K_PAD) int64. Grid (cdiv(queries,
    BLOCK_B), ranges), query blocks fastest so blocks sharing an item range run together.
    Traffic per call: reads items * dim * itemsize once per query block (once from DRAM when
    the blocks of a range meet in L2), queries * dim * itemsize per tile (cached), items bytes
    of mask, each excluded id once; writes queries * ranges * K_PAD * 8 bytes of keys.
    Never forms the (queries x items) score matrix.
    """
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_valid = offs_b < n_queries
    range_start = pid_n * tiles_per_prog * BLOCK_N
    running = tl.full((BLOCK_B, K_PAD), -9223372036854775808, tl.int64)
    if HAS_EXCLUDE:
        cursor = tl.load(
            excl_cursor_ptr + offs_b * stride_cursor_row + pid_n, mask=b_valid, other=0
        )
        excl_end = tl.load(excl_offsets_ptr + offs_b + 1, mask=b_valid, other=0)
    for t in range(0, tiles_per_prog):
        tile_start = range_start + t * BLOCK_N
        if tile_start < n_items:
            offs_n = tile_start + tl.arange(0, BLOCK_N)
            n_valid = offs_n < n_items
            scores = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            for d0 in range(0, dim, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                d_valid = offs_d < dim
                q = tl.load(
                    q_ptr + offs_b[:, None] * stride_q_row + offs_d[None, :],
                    mask=b_valid[:, None] & d_valid[None, :],
                    other=0.0,
                )
                x = tl.load(
                    items_ptr + offs_n[:, None].to(tl.int64) * stride_items_row + offs_d[None, :],
                    mask=n_valid[:, None] & d_valid[None, :],
                    other=0.0,
                )
                if DOT_IN_FP32:  # exact: bf16 products are exact in fp32 (see dot_in_fp32)
                    q = q.to(tl.float32)
                    x = x.to(tl.float32)
                scores = tl.dot(q, tl.trans(x), scores, input_precision=DOT_PRECISION)
            if HAS_MASK:
                banned = tl.load(item_mask_ptr + offs_n, mask=n_valid, other=0) != 0
                scores = tl.where(banned[None, :], float("-inf"), scores)
            if HAS_EXCLUDE:
                # Each query's excluded ids are sorted and this program walks its tiles in
                # order, so the ids falling in this tile are the next few at the cursor.
                tile_end = tile_start + BLOCK_N
                excl = tl.load(excl_ids_ptr + cursor, mask=cursor < excl_end, other=0)
                pending = (cursor < excl_end) & (excl < tile_end)
                while tl.max(pending.to(tl.int32), axis=0) > 0:
                    hit = pending[:, None] & (offs_n[None, :] == excl[:, None])
                    scores = tl.where(hit, float("-inf"), scores)
                    cursor += pending.to(tl.int64)
                    excl = tl.load(excl_ids_ptr + cursor, mask=cursor < excl_end, other=0)
                    pending = (cursor < excl_end) & (excl < tile_end)
            keys = _order_key(scores, offs_n[None, :])
            keys = tl.where(n_valid[None, :], keys, -9223372036854775808)
            best_new = tl.where(b_valid, tl.max(keys, axis=1), -9223372036854775808)
            worst_kept = tl.min(running, axis=1)
            if tl.max((best_new > worst_kept).to(tl.int32), axis=0) > 0:
                tile = _bitonic_sort(keys, BLOCK_B, LOG_BLOCK_N, 1)  # descending
                if BLOCK_N > K_PAD:  # keep the first K_PAD columns (a masked max over a split)
                    split = tl.reshape(tile, (BLOCK_B, BLOCK_N // K_PAD, K_PAD))
                    lead = (tl.arange(0, BLOCK_N // K_PAD) == 0)[None, :, None]
                    tile = tl.max(tl.where(lead, split, -9223372036854775808), axis=1)
                # max(ascending, descending) holds the K_PAD largest of both, as a bitonic row
                running = _bitonic_merge_ascending(tl.maximum(running, tile), BLOCK_B, LOG_K_PAD)
    offs_k = tl.arange(0, K_PAD)
    tl.store(
        part_keys_ptr + offs_b[:, None] * stride_part_row + pid_n * K_PAD + offs_k[None, :],
        running,
        mask=b_valid[:, None],
    )


def launch(queries: Any, items: Any, k_out: int, exclude: tuple[Any, Any] | None,
           item_mask: Any) -> tuple[Any, Any]:  # fmt: skip
    """Top k_out of checked torch tensors on one device: (scores, ids) as in `score_topk`.

    `exclude` is the (offsets, ids) CSR pair or None; k_out = min(k, items) <= MAX_TRITON_TOPK.
    """
    device = items.device
    (n_queries, dim), n_items = queries.shape, items.shape[0]
    if n_queries == 0 or k_out == 0:
        return (
            torch.empty((n_queries, k_out), dtype=torch.float32, device=device),
            torch.empty((n_queries, k_out), dtype=torch.int64, device=device),
        )
    blocks = score_topk_blocks(n_queries, n_items, dim, k_out)
    q = rows_contiguous(queries.to(items.dtype))
    x = rows_contiguous(items)
    part = torch.empty(
        (n_queries, blocks.n_item_progs, blocks.K_PAD), dtype=torch.int64, device=device
    )
    mask = item_mask.contiguous().view(torch.uint8) if item_mask is not None else part
    if exclude is not None:
        excl_offsets = exclude[0].to(torch.int64).contiguous()
        excl_ids, cursor = _sorted_exclusions(
            excl_offsets, exclude[1].to(torch.int64), n_items, blocks.tile_items,
            blocks.n_item_progs,
        )  # fmt: skip
    else:
        excl_offsets = excl_ids = cursor = part
    _score_topk_kernel[lambda meta: (cdiv(n_queries, meta["BLOCK_B"]), blocks.n_item_progs)](
        q, x, mask, excl_ids, excl_offsets, cursor,
        part,
        n_queries, n_items, dim, blocks.tiles_per_prog, next_power_of_2(n_queries),
        q.stride(0), x.stride(0), cursor.stride(0), part.stride(0),
        K_PAD=blocks.K_PAD, LOG_K_PAD=blocks.K_PAD.bit_length() - 1,
        BLOCK_N=blocks.BLOCK_N, LOG_BLOCK_N=blocks.BLOCK_N.bit_length() - 1, BLOCK_D=blocks.BLOCK_D,
        HAS_MASK=item_mask is not None, HAS_EXCLUDE=exclude is not None,
        DOT_IN_FP32=dot_in_fp32(dtype_name(items)),
        DOT_PRECISION=dot_precision(dtype_name(items)),
    )  # fmt: skip
    # Keys are unique per (score, id), so topk on them is the exact merge, ties included.
    keys = torch.topk(part.view(n_queries, -1), k_out, dim=1).values
    return decode_keys(keys)


def _sorted_exclusions(
    offsets: Any, ids: Any, n_items: int, range_items: int, n_ranges: int
) -> tuple[Any, Any]:
    """Sort each query's excluded ids; cursor[b, r] = first index of query b's ids >= range r."""
    n_queries = offsets.numel() - 1
    rows = torch.repeat_interleave(torch.arange(n_queries, device=ids.device), offsets.diff())
    # One global sort of row * items + id sorts within rows and keeps rows grouped.
    codes = torch.sort(rows * n_items + ids).values
    range_starts = torch.arange(n_ranges, device=ids.device) * range_items
    probes = torch.arange(n_queries, device=ids.device)[:, None] * n_items + range_starts[None, :]
    cursor = torch.searchsorted(codes, probes.contiguous())
    return (codes - rows * n_items).contiguous(), cursor.contiguous()
