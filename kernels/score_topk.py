"""score_topk: the K best items per query by inner product, without a (queries x items) matrix.

    scores[b, j] = <queries[b], items[ids[b, j]]>,  best first, ties broken by lower id first

Items the caller rules out (a per-query CSR exclusion list, a global bool mask) are never
returned; when fewer than min(k, items) servable items remain, the tail holds id -1 and score
-inf. Items whose score is NaN or -inf are treated the same way (not servable).

Ordering is exact and identical on every path because candidates are compared as one int64 key
per (score, id) (`kernels._score_topk_keys`): a larger key means a better score, or the same
score and a lower id.

This module checks arguments, holds the plain-torch twin `score_topk_reference` and dispatches;
each path lives in a private module beside it, whose docstring says when it wins:
  CUDA tensors                            -> `_score_topk_triton` (Triton kernel, streaming
                                             per-tile top-K and a merge)
  numpy fp32, serving size, no item_mask  -> `_score_topk_onnx` (onnxruntime Gemm -> TopK)
  other numpy arrays and CPU tensors      -> `_score_topk_cpu` (chunked BLAS, running top-K)
Importing this module imports neither torch nor triton (nor onnxruntime, until a call takes
that path): `_score_topk_triton` is imported only when a call runs the Triton kernel.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels import _score_topk_cpu, _score_topk_onnx
from kernels._launch import (
    INT_DTYPES,
    MAX_ROWS,
    TABLE_DTYPES,
    ArrayKind,
    KernelInputError,
    array_kind,
    require_csr_offsets,
    require_dtype,
    require_ids_in_range,
    require_shape,
)

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    kind: ArrayKind
    n_queries: int
    n_items: int
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
    return _Call(kind, n_queries, n_items, min(k, n_items), excl_offsets, excl_ids)


# ---------------------------------------------------------------------------------------------
# Triton path
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
    # Imported here, not at the top: it imports torch and triton, which numpy callers never need.
    from kernels import _score_topk_triton

    exclude = None if call.exclude_ids is None else (call.exclude_offsets, call.exclude_ids)
    return _score_topk_triton.launch(queries, items, call.k_out, exclude, item_mask)


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
# CPU paths
# ---------------------------------------------------------------------------------------------


def _run_cpu(call: _Call, queries: Any, items: Any, item_mask: Any) -> tuple[Any, Any]:
    """Feed numpy arrays or CPU tensors to the chunked CPU path (or, for serving-sized numpy
    fp32 calls, to onnxruntime); results in the caller's kind."""
    exclude = None
    if not call.kind.is_torch:
        q = np.ascontiguousarray(queries.astype(items.dtype, copy=False), dtype=np.float32)
        if call.exclude_ids is not None:
            exclude = (
                np.asarray(call.exclude_offsets, dtype=np.int64),
                np.asarray(call.exclude_ids, dtype=np.int64),
            )
        if (items.dtype == np.float32 and item_mask is None
                and call.n_queries * call.n_items <= _score_topk_onnx.ORT_MAX_SCORES):
            # looked up on the module at call time, so tests can spy on the path taken
            answer = _score_topk_onnx.score_topk_ort(
                q, np.ascontiguousarray(items), call.k_out, exclude
            )
            if answer is not None:
                return answer
        if items.dtype == np.float32:
            read_items = lambda rows: items[rows]  # noqa: E731
        else:
            read_items = lambda rows: items[rows].astype(np.float32)  # noqa: E731
        return _score_topk_cpu.score_topk_cpu(
            q, read_items, call.n_items, call.k_out, exclude, item_mask
        )

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
    scores, ids = _score_topk_cpu.score_topk_cpu(
        q, read_items, call.n_items, call.k_out, exclude, mask
    )
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
