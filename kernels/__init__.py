"""Compute kernels of freshrec: embedding-bag pooling and fused score + top-K.

    gather_pool(table, ids, offsets, weights=None, *, mode="sum") -> (lists, dim) float32
    score_topk(queries, items, k, *, exclude=None, item_mask=None) -> (scores, ids)

numpy arrays run the numpy CPU path and never import torch or triton (the serving model imports
this package on every reload); torch tensors run the Triton kernel on CUDA and the CPU path on
CPU. `*_reference` are the plain-torch twins; `*_triton` run the Triton-language kernel on any
torch device (the tests use them on CPU under TRITON_INTERPRET=1).
"""

from kernels._launch import KernelInputError
from kernels.gather_pool import gather_pool, gather_pool_reference, gather_pool_triton
from kernels.score_topk import score_topk, score_topk_reference, score_topk_triton

__all__ = [
    "KernelInputError",
    "gather_pool",
    "gather_pool_reference",
    "gather_pool_triton",
    "score_topk",
    "score_topk_reference",
    "score_topk_triton",
]
