"""score_topk's (score, id) keys, shared by the CPU path and the Triton path's merge.

One int64 per candidate: the float32 score's bits mapped to an order-preserving int32 in the
high half, (2**32 - 1 - id) in the low half, so a larger key means a better score, or the same
score and a lower id; -0.0 is folded into +0.0 first so the two tie like the floats do.
Comparing keys instead of (score, id) pairs is what makes every path order ties identically.
The Triton kernel builds the same keys in `_score_topk_triton._order_key`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels._launch import is_torch_tensor

# Key of an empty slot: below the key of every real (score, id) pair, -inf scores included.
EMPTY_KEY = -(2**63)
_ID_MASK = 2**32 - 1


def _order_bits(bits: Any) -> Any:
    """int32 float bits -> int32 with the floats' order (its own inverse)."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def encode_keys(scores: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """numpy twin of the kernel's _order_key, for finite or +-inf float32 scores."""
    scores = np.where(scores == 0, np.float32(0), scores).astype(np.float32, copy=False)
    ordered = _order_bits(scores.view(np.int32)).astype(np.int64)
    return (ordered << 32) | (_ID_MASK - item_ids.astype(np.int64, copy=False))


def decode_keys(keys: Any) -> tuple[Any, Any]:
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
