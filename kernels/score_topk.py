"""score_topk: the K best items per query by inner product, without a (queries x items) matrix.

    scores[b, j] = <queries[b], items[ids[b, j]]>,  best first, ties broken by lower id first

Items the caller rules out (a per-query CSR exclusion list, a global bool mask) are never
returned; when fewer than min(k, items) servable items remain, the tail holds id -1 and score
-inf. Items whose score is NaN or -inf are treated the same way (not servable).

Ordering is exact and identical on every path because candidates are compared as one int64 key
per (score, id): the float32 score's bits mapped to an order-preserving int32 in the high half,
(2**32 - 1 - id) in the low half, so a larger key means a better score, or the same score and a
lower id. -0.0 is folded into +0.0 first so the two tie like the floats do.

Paths: CUDA tensors run the Triton kernel `_score_topk_kernel` (streaming per-tile top-K and a
merge); numpy fp32 calls of serving size (at most ORT_MAX_SCORES scores, no item_mask) run one
onnxruntime graph, Gemm -> TopK (`_score_topk_ort`); other numpy arrays and CPU tensors run a
chunked BLAS matmul with a running top-K (`_score_topk_cpu`); `score_topk_reference` is the
plain-torch twin. Importing this module imports neither torch nor triton (nor onnxruntime, until
a call takes that path).
"""

from __future__ import annotations

import base64
import operator
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from kernels._launch import (
    INT_DTYPES,
    MAX_ROWS,
    TABLE_DTYPES,
    ArrayKind,
    KernelInputError,
    array_kind,
    cdiv,
    cpu_chunk_rows,
    dot_in_fp32,
    dot_precision,
    dtype_name,
    is_torch_tensor,
    next_power_of_2,
    prune_score_topk_configs,
    require_csr_offsets,
    require_dtype,
    require_ids_in_range,
    require_shape,
    rows_contiguous,
    score_topk_blocks,
    score_topk_configs,
    triton_jit,
)

tl = None  # triton.language, bound by kernels._launch.bind_triton on the first launch

# Key of an empty slot: below the key of every real (score, id) pair, -inf scores included.
EMPTY_KEY = -(2**63)
_ID_MASK = 2**32 - 1


# ---------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------


@triton_jit
def _order_key(scores, item_ids):
    """(score, id) -> int64 key ordered by score, then by lower id; NaN scores become -inf."""
    scores = tl.where(scores != scores, float("-inf"), scores)
    scores = tl.where(scores == 0.0, 0.0, scores)  # -0.0 and +0.0 must tie
    bits = scores.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) + (0xFFFFFFFF - item_ids.to(tl.int64))


@triton_jit
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


@triton_jit
def _bitonic_sort(x, ROWS: tl.constexpr, LOG_LEN: tl.constexpr, DESCENDING: tl.constexpr):
    """Sort each row of x (ROWS, 2**LOG_LEN): log2(LEN) * (log2(LEN) + 1) / 2 compare-swaps."""
    for s in tl.static_range(1, LOG_LEN + 1):
        for i in tl.static_range(0, s):
            if s < LOG_LEN:
                x = _compare_swap(x, ROWS, 1 << LOG_LEN, s - 1 - i, s, 2)
            else:
                x = _compare_swap(x, ROWS, 1 << LOG_LEN, s - 1 - i, s, DESCENDING)
    return x


@triton_jit
def _bitonic_merge_ascending(x, ROWS: tl.constexpr, LOG_LEN: tl.constexpr):
    """Sort each row of x (ROWS, 2**LOG_LEN) that is already bitonic: log2(LEN) compare-swaps."""
    for i in tl.static_range(0, LOG_LEN):
        x = _compare_swap(x, ROWS, 1 << LOG_LEN, LOG_LEN - 1 - i, LOG_LEN, 0)
    return x


@triton_jit(
    configs=score_topk_configs,
    key=["batch_bucket", "dim", "K_PAD"],
    prune=prune_score_topk_configs,
)
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


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    kind: ArrayKind
    n_queries: int
    n_items: int
    dim: int
    k_out: int  # min(k, items): columns of the result
    exclude_offsets: Any  # (queries + 1,) or None
    exclude_ids: Any  # (nnz,) or None


def _check_args(queries: Any, items: Any, k: Any, exclude: Any, item_mask: Any) -> _Call:
    """Validate one call. Raises KernelInputError naming the argument."""
    if exclude is None:
        excl_offsets = excl_ids = None
    elif isinstance(exclude, (tuple, list)) and len(exclude) == 2:
        excl_offsets, excl_ids = exclude
    else:
        raise KernelInputError("exclude must be a CSR pair (offsets, ids) or None")
    kind = array_kind(
        {
            "queries": queries,
            "items": items,
            "exclude offsets": excl_offsets,
            "exclude ids": excl_ids,
            "item_mask": item_mask,
        }
    )
    n_queries, dim = require_shape(queries, "queries", 2, "a (queries, dim) matrix")
    n_items, item_dim = require_shape(items, "items", 2, "an (items, dim) matrix")
    require_dtype(queries, "queries", TABLE_DTYPES)
    require_dtype(items, "items", TABLE_DTYPES)
    if item_dim != dim:
        raise KernelInputError(f"queries have dim {dim} but items have dim {item_dim}")
    if n_items > MAX_ROWS:
        raise KernelInputError(f"items has {n_items} rows; at most {MAX_ROWS} are supported")
    if isinstance(k, bool):
        raise KernelInputError(f"k must be a positive integer, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise KernelInputError(f"k must be a positive integer, got {k!r}") from None
    if k <= 0:
        raise KernelInputError(f"k must be a positive integer, got {k}")
    if item_mask is not None:
        require_shape(item_mask, "item_mask", 1, "a 1-D bool array with one entry per item")
        require_dtype(item_mask, "item_mask", ("bool",))
        if int(item_mask.shape[0]) != n_items:
            raise KernelInputError(
                f"item_mask must have one entry per item ({n_items}), got {int(item_mask.shape[0])}"
            )
    if excl_ids is not None:
        (n_excluded,) = require_shape(excl_ids, "exclude ids", 1, "a 1-D array of item rows")
        require_dtype(excl_ids, "exclude ids", INT_DTYPES)
        n_lists = require_csr_offsets(excl_offsets, "exclude offsets", n_excluded, "exclude ids")
        if n_lists != n_queries:
            raise KernelInputError(
                f"exclude offsets describe {n_lists} lists but there are {n_queries} queries"
            )
        require_ids_in_range(excl_ids, "exclude ids", n_items)
    return _Call(kind, n_queries, n_items, dim, min(k, n_items), excl_offsets, excl_ids)


# ---------------------------------------------------------------------------------------------
# (score, id) keys, shared by the CPU path and the Triton merge
# ---------------------------------------------------------------------------------------------


def _order_bits(bits: Any) -> Any:
    """int32 float bits -> int32 with the floats' order (its own inverse)."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _encode_keys(scores: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """numpy twin of the kernel's _order_key, for finite or +-inf float32 scores."""
    scores = np.where(scores == 0, np.float32(0), scores).astype(np.float32, copy=False)
    ordered = _order_bits(scores.view(np.int32)).astype(np.int64)
    return (ordered << 32) | (_ID_MASK - item_ids.astype(np.int64, copy=False))


def _decode_keys(keys: Any) -> tuple[Any, Any]:
    """int64 keys (numpy or torch) -> (float32 scores, int64 ids); empty/-inf slots: -inf, -1."""
    if is_torch_tensor(keys):
        import torch

        high, f32 = (keys >> 32).to(torch.int32), torch.float32
    else:
        high, f32 = (keys >> 32).astype(np.int32), np.float32
    scores = _order_bits(high).view(f32)
    ids = _ID_MASK - (keys & _ID_MASK)
    invalid = (keys == EMPTY_KEY) | (scores == float("-inf"))
    scores[invalid] = float("-inf")
    ids[invalid] = -1
    return scores, ids


# ---------------------------------------------------------------------------------------------
# Triton launcher
# ---------------------------------------------------------------------------------------------


def score_topk_triton(queries: Any, items: Any, k: int, *, exclude: Any = None,
                      item_mask: Any = None) -> tuple[Any, Any]:  # fmt: skip
    """Run the Triton kernel on torch tensors of any device (CUDA, or CPU under TRITON_INTERPRET=1).

    Same contract as `score_topk`; k is limited to kernels._launch.MAX_TRITON_TOPK.
    """
    call = _check_args(queries, items, k, exclude, item_mask)
    if not call.kind.is_torch:
        raise KernelInputError("score_topk_triton takes torch tensors; use score_topk for numpy")
    return _launch_triton(call, queries, items, item_mask)


def _launch_triton(call: _Call, queries: Any, items: Any, item_mask: Any) -> tuple[Any, Any]:
    import torch

    device = items.device
    n_queries, n_items, k_out = call.n_queries, call.n_items, call.k_out
    if n_queries == 0 or k_out == 0:
        return (
            torch.empty((n_queries, k_out), dtype=torch.float32, device=device),
            torch.empty((n_queries, k_out), dtype=torch.int64, device=device),
        )
    blocks = score_topk_blocks(n_queries, n_items, call.dim, k_out)
    q = rows_contiguous(queries.to(items.dtype))
    x = rows_contiguous(items)
    part = torch.empty(
        (n_queries, blocks.n_item_progs, blocks.K_PAD), dtype=torch.int64, device=device
    )
    mask = item_mask.contiguous().view(torch.uint8) if item_mask is not None else part
    if call.exclude_ids is not None:
        excl_offsets = call.exclude_offsets.to(torch.int64).contiguous()
        excl_ids, cursor = _sorted_exclusions(
            excl_offsets, call.exclude_ids.to(torch.int64), n_items, blocks.tile_items,
            blocks.n_item_progs,
        )  # fmt: skip
    else:
        excl_offsets = excl_ids = cursor = part
    _score_topk_kernel[lambda meta: (cdiv(n_queries, meta["BLOCK_B"]), blocks.n_item_progs)](
        q, x, mask, excl_ids, excl_offsets, cursor,
        part,
        n_queries, n_items, call.dim, blocks.tiles_per_prog, next_power_of_2(n_queries),
        q.stride(0), x.stride(0), cursor.stride(0), part.stride(0),
        K_PAD=blocks.K_PAD, LOG_K_PAD=blocks.K_PAD.bit_length() - 1,
        BLOCK_N=blocks.BLOCK_N, LOG_BLOCK_N=blocks.BLOCK_N.bit_length() - 1, BLOCK_D=blocks.BLOCK_D,
        HAS_MASK=item_mask is not None, HAS_EXCLUDE=call.exclude_ids is not None,
        DOT_IN_FP32=dot_in_fp32(dtype_name(items)),
        DOT_PRECISION=dot_precision(dtype_name(items)),
    )  # fmt: skip
    # Keys are unique per (score, id), so topk on them is the exact merge, ties included.
    keys = torch.topk(part.view(n_queries, -1), k_out, dim=1).values
    return _decode_keys(keys)


def _sorted_exclusions(
    offsets: Any, ids: Any, n_items: int, range_items: int, n_ranges: int
) -> tuple[Any, Any]:
    """Sort each query's excluded ids; cursor[b, r] = first index of query b's ids >= range r."""
    import torch

    n_queries = offsets.numel() - 1
    rows = torch.repeat_interleave(torch.arange(n_queries, device=ids.device), offsets.diff())
    # One global sort of row * items + id sorts within rows and keeps rows grouped.
    codes = torch.sort(rows * n_items + ids).values
    range_starts = torch.arange(n_ranges, device=ids.device) * range_items
    probes = torch.arange(n_queries, device=ids.device)[:, None] * n_items + range_starts[None, :]
    cursor = torch.searchsorted(codes, probes.contiguous())
    return (codes - rows * n_items).contiguous(), cursor.contiguous()


# ---------------------------------------------------------------------------------------------
# Torch reference twin
# ---------------------------------------------------------------------------------------------


def score_topk_reference(queries: Any, items: Any, k: int, *, exclude: Any = None,
                         item_mask: Any = None) -> tuple[Any, Any]:  # fmt: skip
    """Plain-torch twin of `score_topk`: the full (queries x items) fp32 score matrix, -inf for
    ruled-out items, then a stable descending sort (equal scores keep lower ids first)."""
    import torch

    queries, items = torch.as_tensor(queries), torch.as_tensor(items)
    scores = queries.to(items.dtype).float() @ items.float().T
    scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    if item_mask is not None:
        scores[:, torch.as_tensor(item_mask)] = float("-inf")
    if exclude is not None:
        offsets, ids = (torch.as_tensor(x).long() for x in exclude)
        rows = torch.arange(scores.shape[0], device=scores.device)
        scores[torch.repeat_interleave(rows, offsets.diff().to(scores.device)), ids] = float("-inf")
    k_out = min(k, items.shape[0])
    top_scores, top_ids = torch.sort(scores, dim=1, descending=True, stable=True)
    top_scores, top_ids = top_scores[:, :k_out].contiguous(), top_ids[:, :k_out].contiguous()
    top_ids[top_scores == float("-inf")] = -1
    return top_scores, top_ids


# ---------------------------------------------------------------------------------------------
# CPU path
# ---------------------------------------------------------------------------------------------


def _score_topk_cpu(
    queries: np.ndarray,
    read_items: Callable[[slice], np.ndarray],
    n_items: int,
    k_out: int,
    exclude: tuple[np.ndarray, np.ndarray] | None,
    item_mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Chunked BLAS scores with a running top-K per query (numpy only).

    queries: (B, d) float32; read_items(rows): items[rows] for a slice `rows`, as float32.
    Each chunk of items is read once: one sgemm into a (B x chunk) block that stays in cache,
    ruled-out items set to -inf, then only scores strictly above a query's current threshold
    become candidates (chunks arrive in id order, so an equal score has a higher id and loses
    the tie to a kept one, and a threshold that lags behind is merely loose). Candidates wait
    as int64 keys until about k/2 per query have piled up, then one np.partition per merge,
    vectorised over queries, refreshes the top-K and the thresholds. Past the first chunks few
    scores pass, so the selection costs about one compare per score. Small batches start
    from thresholds taken on a sample of the table (`_sampled_threshold`) and skip the short
    first chunks.
    """
    n_queries = queries.shape[0]
    running = np.full((n_queries, k_out), EMPTY_KEY, dtype=np.int64)
    chunk = cpu_chunk_rows(n_queries)
    excluded = None
    if exclude is not None:
        excl_offsets, excl_ids = exclude
        by_item = np.argsort(excl_ids, kind="stable")
        excl_rows = np.repeat(np.arange(n_queries), np.diff(excl_offsets))[by_item]
        excl_ids = excl_ids[by_item]
        excluded = (excl_rows, excl_ids)
    masked = np.flatnonzero(item_mask) if item_mask is not None else None
    threshold = _sampled_threshold(queries, read_items, n_items, k_out, masked, excluded)
    if threshold is not None:
        first = chunk
    else:
        threshold = np.full(n_queries, -np.inf, dtype=np.float32)
        # Chunks start at 4k rows and double up to `chunk`, so the thresholds firm up before
        # the long chunks arrive: each chunk then brings about k candidates per query, not
        # thousands. (A 2048-row first chunk was up to 2x slower at N=1e5, B=64..256.)
        first = min(chunk, max(64, 4 * k_out))
    # Merging costs O(B * k) plus ~40 us of numpy calls whatever it merges; waiting for
    # B * k / 2 candidates (4 k at least) made B=256, k=100 (245 chunks) 25 % faster and B=1
    # 5 % faster than merging after every chunk.
    merge_at = max(n_queries * k_out // 2, 4 * k_out)
    score_buffer = np.empty(n_queries * chunk, dtype=np.float32)
    hit_buffer = np.empty(n_queries * chunk, dtype=bool)
    pending_rows: list[np.ndarray] = []
    pending_keys: list[np.ndarray] = []
    n_pending = 0
    c0 = 0
    while c0 < n_items:
        c1 = min(n_items, c0 + min(chunk, max(first, c0)))
        scores = score_buffer[: n_queries * (c1 - c0)].reshape(n_queries, c1 - c0)
        hit = hit_buffer[: n_queries * (c1 - c0)].reshape(n_queries, c1 - c0)
        # (B x chunk), not items-major (chunk x B), on the 2-core AMD EPYC (OpenBLAS, no GPU):
        # the items-major sgemm alone was faster at small B (d=32, B=8, N=1e5: 1.10 vs 1.50 ms),
        # but its threshold compare broadcasts a B-long row (83 vs 9 us per 8192 x 8 block),
        # and whole calls lost or tied at B=1..64 (d=32, B=8, k=10: 3.16 vs 2.89 ms).
        np.matmul(queries, read_items(slice(c0, c1)).T, out=scores)
        if masked is not None:
            lo, hi = np.searchsorted(masked, (c0, c1))
            scores[:, masked[lo:hi] - c0] = -np.inf
        if exclude is not None:
            lo, hi = np.searchsorted(excl_ids, (c0, c1))
            scores[excl_rows[lo:hi], excl_ids[lo:hi] - c0] = -np.inf
        # NaN and -inf never pass: NaN compares false, and the threshold is at least -inf.
        # flatnonzero + divmod: 2-D np.nonzero was 20x slower on a (64 x 16384) block.
        hits = np.flatnonzero(np.greater(scores, threshold[:, None], out=hit))
        if hits.size:
            rows, cols = np.divmod(hits, c1 - c0)
            pending_rows.append(rows)
            pending_keys.append(_encode_keys(scores[rows, cols], cols + c0))
            n_pending += hits.size
        c0 = c1
        if n_pending >= merge_at or (c0 >= n_items and n_pending):
            _merge_candidates(
                running, threshold, np.concatenate(pending_rows), np.concatenate(pending_keys)
            )
            pending_rows, pending_keys, n_pending = [], [], 0
    best_first = np.sort(running, axis=1)[:, ::-1]
    return _decode_keys(np.ascontiguousarray(best_first))


# Sampled thresholds apply to batches below this size. Measured on the 2-core AMD EPYC
# development machine (OpenBLAS, no GPU), N=1e5, d=32, with exclusions, median of 30
# alternating calls: B=1 1.5-1.6x, B=8 1.1-1.3x, B=32 1.1x faster than doubling chunks; at
# B=64 and d=64 the two were within 3 % (noise), so B >= 64 keeps the doubling chunks.
CPU_SAMPLE_MAX_QUERIES = 63
# Every 16th item row is scored for the sample (1/16 of the table's sgemm); the sample only
# counts when it holds at least 16 k rows, so its thresholds beat a 4k-row first chunk.
CPU_SAMPLE_STEP = 16
CPU_SAMPLE_MIN_K = 16
# Sample scores are folded into per-query maxima over up to 16 rows before np.partition:
# np.partition (numpy 1.26) took ~10 ns per element, 1.9 ms for B=32 x 6250 sampled scores,
# more than it saved.
CPU_SAMPLE_GROUP = 16


def _sampled_threshold(
    queries: np.ndarray,
    read_items: Callable[[slice], np.ndarray],
    n_items: int,
    k_out: int,
    masked: np.ndarray | None,
    excluded: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray | None:
    """(B,) float32 thresholds below which no top-k score can lie, from every 16th item; or None.

    Scores rows 0, 16, 32, ... of the table (ruled-out ones set to -inf), folds them into
    per-query maxima of up to 16 sampled rows and takes each query's k-th largest maximum v:
    at least k servable items score >= v, so every item of the true top-k does too. The chunk
    sgemm may round an item's score differently from the sample's (another summation order):
    each differs from the exact dot product by at most d * 2**-24 * |x| |q| (Higham,
    "Accuracy and Stability of Numerical Algorithms", eq. 3.5, any order, with a margin for
    the norms' own rounding), so v is lowered by 4 * d * 2**-24 * |q| * max |x| over the
    sampled items scoring >= v. Queries whose v or margin is not finite get -inf (no sampling
    gain, still exact). None when the batch is large or the sample too small to beat doubling
    chunks.
    """
    n_queries, dim = queries.shape
    if n_queries > CPU_SAMPLE_MAX_QUERIES or n_items // CPU_SAMPLE_STEP < CPU_SAMPLE_MIN_K * k_out:
        return None
    step = CPU_SAMPLE_STEP
    sample_items = read_items(slice(0, n_items, step))
    sample = queries @ sample_items.T  # (B, m)
    m = sample.shape[1]
    if masked is not None:
        sample[:, masked[masked % step == 0] // step] = -np.inf
    if excluded is not None:
        rows, ids = excluded
        on = ids % step == 0
        sample[rows[on], ids[on] // step] = -np.inf
    group = max(1, min(CPU_SAMPLE_GROUP, m // (8 * k_out)))
    width = m // group
    # fmax ignores NaN scores; a column of NaN only becomes -inf
    maxima = np.fmax.reduce(sample[:, : group * width].reshape(n_queries, group, width), axis=1)
    np.fmax(maxima, -np.inf, out=maxima)
    kth = np.partition(maxima, width - k_out, axis=1)[:, width - k_out]
    # Norms only of the sampled items scoring >= v (the k behind each v are among them): the
    # norms of all m sampled rows took 160 us at B=1, d=64 (a strided einsum), as long as
    # the whole sample takes now (180 us).
    # An item with a NaN or inf component never scores finite, so it cannot set a finite v.
    # Non-finite norms, bounds and thresholds are expected here and dropped by `usable`.
    with np.errstate(over="ignore", invalid="ignore"):
        finite_kth = np.where(np.isfinite(kth), kth, np.float32(np.nan))
        cols = np.flatnonzero(sample >= finite_kth[:, None]) % m
        at_v = sample_items[cols]
        norms = np.einsum("nd,nd->n", at_v, at_v)
        max_norm = np.sqrt(float(norms.max())) if cols.size else 0.0
        bound = max_norm * np.linalg.norm(queries.astype(np.float64), axis=1)
        loose = kth.astype(np.float64) - 4 * dim * 2.0**-24 * bound
    # bound < 2**120: no partial sum of a sampled item's dot product can overflow fp32
    usable = np.isfinite(loose) & (bound < 2.0**120)
    low = loose.astype(np.float32)
    low = np.where(low > loose, np.nextafter(low, np.float32(-np.inf)), low)  # round down
    # The chunks keep scores strictly above the threshold: one step below v keeps v itself.
    return np.where(usable, np.nextafter(low, np.float32(-np.inf)), np.float32(-np.inf))


def _merge_candidates(
    running: np.ndarray, threshold: np.ndarray, rows: np.ndarray, keys: np.ndarray
) -> None:
    """Merge candidate keys of query `rows` into the running top-K; refresh the thresholds."""
    n_queries, k_out = running.shape
    order = np.argsort(rows, kind="stable")
    rows, keys = rows[order], keys[order]
    counts = np.bincount(rows, minlength=n_queries)
    active = np.flatnonzero(counts)
    width = int(counts.max())
    slot = np.empty(n_queries, dtype=np.intp)
    slot[active] = np.arange(active.size)
    starts = np.cumsum(counts[active]) - counts[active]
    pos = np.arange(rows.size) - np.repeat(starts, counts[active])
    pool = np.full((active.size, k_out + width), EMPTY_KEY, dtype=np.int64)
    pool[:, :k_out] = running[active]
    pool[slot[rows], k_out + pos] = keys
    kept = np.partition(pool, width, axis=1)[:, width:]  # the k_out largest keys
    running[active] = kept
    worst = kept.min(axis=1)
    worst_scores, _ = _decode_keys(worst.copy())
    # A query's threshold stays -inf until it holds k_out real candidates.
    threshold[active] = np.where(worst == EMPTY_KEY, threshold[active], worst_scores)


# ---------------------------------------------------------------------------------------------
# CPU path through onnxruntime (serving-sized numpy calls)
# ---------------------------------------------------------------------------------------------

# numpy fp32 calls whose (B x N) score matrix stays under this many scores (32 MiB) run as one
# onnxruntime graph, Gemm(transB) -> TopK, when onnxruntime is installed. Measured on the 2-core
# AMD EPYC development machine, one thread, N=1e5, d=32, K=10: 360 / 1650 / 5510 / 10840 us at
# B=1 / 8 / 32 / 64 against 660 / 3440 / 7650 / 12790 us for the chunked numpy path: MLAS's sgemm
# runs K=d=32 products about 2x faster than OpenBLAS's (~20 GFLOP/s), and TopK is one pass.
# Larger calls keep the chunked path, which never holds the whole score matrix.
ORT_MAX_SCORES = 2**23
# `ort_topk_graph()` serialised (257 bytes). Embedded so that a serving process pays for
# importing onnxruntime (~30 ms) but not onnx (~60 ms more) on its first call after each reload;
# tests/kernels/test_score_topk.py checks that the two agree.
_ORT_TOPK_GRAPH = base64.b64decode(
    "CA469gEKLQoHcXVlcmllcwoFaXRlbXMSBnNjb3JlcyIER2VtbSoNCgZ0cmFuc0IYAaABAgozCgZzY29yZXMKAWsSCnRv"
    "cF9zY29yZXMSB3RvcF9pZHMiBFRvcEsqCwoEYXhpcxgBoAECEgpzY29yZV90b3BrWhsKB3F1ZXJpZXMSEAoOCAESCgoD"
    "EgFCCgMSAWRaGQoFaXRlbXMSEAoOCAESCgoDEgFOCgMSAWRaDwoBaxIKCggIBxIECgIIAWIeCgp0b3Bfc2NvcmVzEhAK"
    "DggBEgoKAxIBQgoDEgFLYhsKB3RvcF9pZHMSEAoOCAcSCgoDEgFCCgMSAUtCBAoAEBE="
)
_ort_session: Any = None  # None: not built yet; False: onnxruntime is not installed


def ort_topk_graph() -> Any:
    """The onnx ModelProto the onnxruntime path runs: Gemm(queries, items, transB=1) -> TopK."""
    from onnx import TensorProto, helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["queries", "items"], ["scores"], transB=1),
         helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_ids"], axis=1)],
        "score_topk",
        [helper.make_tensor_value_info("queries", f32, ["B", "d"]),
         helper.make_tensor_value_info("items", f32, ["N", "d"]),
         helper.make_tensor_value_info("k", i64, [1])],
        [helper.make_tensor_value_info("top_scores", f32, ["B", "K"]),
         helper.make_tensor_value_info("top_ids", i64, ["B", "K"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_topk_session() -> Any:
    global _ort_session
    if _ort_session is None:
        try:
            import onnxruntime as ort
        except ImportError:
            _ort_session = False
            return _ort_session
        options = ort.SessionOptions()
        # a serving process sets one thread per model instance (OMP_NUM_THREADS); 0 = all cores
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        options.inter_op_num_threads = 1
        _ort_session = ort.InferenceSession(_ORT_TOPK_GRAPH, options,
                                            providers=["CPUExecutionProvider"])
    return _ort_session


def _score_topk_ort(queries: np.ndarray, items: np.ndarray, k_out: int,
                    exclude: tuple[np.ndarray, np.ndarray] | None) -> tuple[Any, Any] | None:
    """The top k_out through onnxruntime, or None when this path cannot give the exact answer.

    ONNX TopK orders equal scores by lower index, as score_topk does. Exclusions are dropped
    afterwards: each query asks for k_out plus the longest exclusion list, so at least k_out
    candidates survive wherever that many servable items exist. -inf scores are dropped the same
    way; TopK ranks NaN above everything, so a NaN in the answer hands the call to the numpy path.
    """
    session = _ort_topk_session()
    if session is False:
        return None
    n_queries, n_items = queries.shape[0], items.shape[0]
    longest = 0
    if exclude is not None and exclude[1].size:
        longest = int(np.diff(exclude[0]).max())
    k_take = min(n_items, k_out + longest)
    top_scores, top_ids = session.run(
        None, {"queries": queries, "items": items, "k": np.array([k_take], dtype=np.int64)})
    if np.isnan(top_scores).any():
        return None
    keep = top_scores > -np.inf
    if longest:
        offsets, ids = exclude
        owners = np.repeat(np.arange(n_queries, dtype=np.int64), np.diff(offsets))
        pairs = np.sort(owners * n_items + ids)  # (query, item) as one int64 each
        got = np.arange(n_queries, dtype=np.int64)[:, None] * n_items + top_ids
        # a sorted search, not np.isin: isin cost ~90 us per call at these sizes
        found = pairs[np.minimum(np.searchsorted(pairs, got), pairs.size - 1)]
        keep &= found != got
    if not keep.all():
        order = np.argsort(~keep, axis=1, kind="stable")  # kept ones first, in rank order
        top_ids = np.take_along_axis(top_ids, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        keep = np.take_along_axis(keep, order, axis=1)
    top_ids, top_scores, keep = top_ids[:, :k_out], top_scores[:, :k_out], keep[:, :k_out]
    top_scores = np.where(top_scores == 0, np.float32(0), top_scores)  # -0.0 comes back as +0.0
    return (np.where(keep, top_scores, np.float32(-np.inf)).astype(np.float32),
            np.where(keep, top_ids, -1).astype(np.int64))


def _run_cpu(call: _Call, queries: Any, items: Any, item_mask: Any) -> tuple[Any, Any]:
    """Feed numpy arrays or CPU tensors to _score_topk_cpu (or, for serving-sized numpy fp32
    calls, to onnxruntime); results in the caller's kind."""
    exclude = None
    if not call.kind.is_torch:
        q = np.ascontiguousarray(queries.astype(items.dtype, copy=False), dtype=np.float32)
        if call.exclude_ids is not None:
            exclude = (
                np.asarray(call.exclude_offsets, dtype=np.int64),
                np.asarray(call.exclude_ids, dtype=np.int64),
            )
        if (items.dtype == np.float32 and item_mask is None
                and call.n_queries * call.n_items <= ORT_MAX_SCORES):
            answer = _score_topk_ort(q, np.ascontiguousarray(items), call.k_out, exclude)
            if answer is not None:
                return answer
        if items.dtype == np.float32:
            read_items = lambda rows: items[rows]  # noqa: E731
        else:
            read_items = lambda rows: items[rows].astype(np.float32)  # noqa: E731
        return _score_topk_cpu(q, read_items, call.n_items, call.k_out, exclude, item_mask)

    import torch

    # numpy's OpenBLAS beat torch's CPU matmul on this path (bench/kernels.py), so tensors are
    # viewed as numpy arrays; bf16 has no numpy dtype and is upcast chunk by chunk.
    q = queries.to(items.dtype).float().contiguous().numpy()
    if items.dtype == torch.float32:
        items_np = items.numpy()
        read_items = lambda rows: items_np[rows]  # noqa: E731
    elif items.dtype == torch.float16:
        items_np = items.numpy()
        read_items = lambda rows: items_np[rows].astype(np.float32)  # noqa: E731
    else:
        read_items = lambda rows: items[rows].float().numpy()  # noqa: E731
    if call.exclude_ids is not None:
        exclude = (call.exclude_offsets.long().numpy(), call.exclude_ids.long().numpy())
    mask = item_mask.numpy() if item_mask is not None else None
    scores, ids = _score_topk_cpu(q, read_items, call.n_items, call.k_out, exclude, mask)
    return torch.from_numpy(scores), torch.from_numpy(ids)


# ---------------------------------------------------------------------------------------------
# Public op
# ---------------------------------------------------------------------------------------------


def score_topk(queries: Any, items: Any, k: int, *, exclude: Any = None,
               item_mask: Any = None) -> tuple[Any, Any]:  # fmt: skip
    """Top-k items per query by inner product, best first, lower id first on equal scores.

    Args:
        queries: (B, d) float32, float16 or bfloat16; cast to the items' dtype before scoring.
        items: (N, d) float32, float16 or bfloat16. Scores accumulate in float32.
        k: number of results per query, > 0; k > N returns N columns.
        exclude: optional CSR pair (offsets (B + 1,), ids (nnz,)) of item rows query b must
            never get: ids[offsets[b]:offsets[b + 1]], each in [0, N).
        item_mask: optional (N,) bool; True means "never serve this item".

    Returns:
        (scores, ids): (B, min(k, N)) float32 and int64. Where fewer servable items remain, the
        tail holds id -1 and score -inf. numpy in, numpy out (without importing torch); torch
        in, torch out on the same device (CUDA runs the Triton kernel).

    Raises:
        KernelInputError: malformed shapes, dtypes, offsets, k, or an id outside the items; on
            CUDA also k > 1024 (the Triton kernel keeps its top-K in registers).
    """
    call = _check_args(queries, items, k, exclude, item_mask)
    if call.kind.is_cuda:
        return _launch_triton(call, queries, items, item_mask)
    if call.kind.is_torch and call.kind.device != "cpu":
        raise KernelInputError(f"items are on {call.kind.device}; score_topk runs on CUDA or CPU")
    if call.n_queries == 0 or call.k_out == 0:
        return _empty_result(call)
    return _run_cpu(call, queries, items, item_mask)


def _empty_result(call: _Call) -> tuple[Any, Any]:
    shape = (call.n_queries, call.k_out)
    scores, ids = np.empty(shape, dtype=np.float32), np.empty(shape, dtype=np.int64)
    if call.kind.is_torch:
        import torch

        return torch.from_numpy(scores), torch.from_numpy(ids)
    return scores, ids
