"""Launch arithmetic and input checks shared by every op in `kernels`.

Block sizes, autotune configs, dtype maps, contiguity and the validation errors live here once,
so each op's modules hold only its own kernel, reference, CPU paths and dispatch.

Nothing here imports torch or triton: the serving model imports `kernels` on every reload, and
importing torch there costs about a second per reload (DESIGN.md, "Serving stack"). Torch
tensors are recognised through `sys.modules`: if torch was never imported, no argument can be
a tensor. Only the private `_<op>_triton` modules import triton, and only when a call takes
the Triton path.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

# Floating dtypes a table of embeddings may have, by the name numpy and torch both print.
TABLE_DTYPES = ("float32", "float16", "bfloat16")
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "uint16", "uint32")
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")

# Kernels index rows with int32 tile offsets, and score_topk packs (score, id) into one int64
# key with 32 bits for the id: larger tables would need wider offsets and keys.
MAX_ROWS = 2**31 - 1

# The Triton top-K keeps a sorted register block of K_PAD keys per query; 1024 int64 keys x
# 16 queries is already 128 KiB per program, past which every kernel spills.
MAX_TRITON_TOPK = 1024


class KernelInputError(ValueError):
    """An argument of a kernel call is malformed; the message names the argument."""


# ---------------------------------------------------------------------------------------------
# What kind of array is this (without importing torch)
# ---------------------------------------------------------------------------------------------


def is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


# numpy 1.26 computes dtype.name in Python (~3 us); serving checks a dozen dtypes per request
_NUMPY_DTYPE_NAMES: dict[np.dtype, str] = {}


def dtype_name(x: Any) -> str:
    """'float32', 'bfloat16', 'int64', ... for a numpy array or a torch tensor."""
    if is_torch_tensor(x):
        return str(x.dtype).removeprefix("torch.")
    name = _NUMPY_DTYPE_NAMES.get(x.dtype)
    if name is None:
        name = _NUMPY_DTYPE_NAMES[x.dtype] = np.dtype(x.dtype).name
    return name


@dataclass(frozen=True)
class ArrayKind:
    """Where the arrays of one call live: numpy, or torch on one device."""

    is_torch: bool
    device: str = "cpu"  # torch device type: 'cpu', 'cuda', ...

    @property
    def is_cuda(self) -> bool:
        return self.is_torch and self.device == "cuda"


def array_kind(arrays: dict[str, Any]) -> ArrayKind:
    """One kind for all given (name -> array) arguments, or a KernelInputError naming the odd one.

    None values are skipped (optional arguments).
    """
    kinds: dict[str, ArrayKind] = {}
    for name, x in arrays.items():
        if x is None:
            continue
        if is_torch_tensor(x):
            kinds[name] = ArrayKind(True, x.device.type)
        elif isinstance(x, np.ndarray):
            kinds[name] = ArrayKind(False)
        else:
            raise KernelInputError(
                f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}"
            )
    first_name, first = next(iter(kinds.items()))
    for name, kind in kinds.items():
        if kind != first:
            raise KernelInputError(
                f"{name} is {_describe(kind)} but {first_name} is {_describe(first)}: "
                "pass all arrays of one call as numpy arrays, or as torch tensors on one device"
            )
    devices = {str(x.device) for x in arrays.values() if x is not None and is_torch_tensor(x)}
    if len(devices) > 1:
        raise KernelInputError(f"arrays are on several devices {sorted(devices)}; use one device")
    return first


def _describe(kind: ArrayKind) -> str:
    return f"a torch tensor on {kind.device}" if kind.is_torch else "a numpy array"


# ---------------------------------------------------------------------------------------------
# Validation (works on numpy arrays and torch tensors alike)
# ---------------------------------------------------------------------------------------------


def require_shape(x: Any, name: str, ndim: int, what: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in x.shape)
    if len(shape) != ndim:
        raise KernelInputError(f"{name} must be {what}, got shape {shape}")
    return shape


def require_dtype(x: Any, name: str, allowed: tuple[str, ...]) -> str:
    got = dtype_name(x)
    if got not in allowed:
        raise KernelInputError(f"{name} must have dtype in {list(allowed)}, got {got}")
    return got


def require_ids_in_range(ids: Any, name: str, n_rows: int) -> None:
    """Every id in [0, n_rows): an id outside is an error, never a read past the table."""
    if int(ids.shape[0]) == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= n_rows:
        bad = lo if lo < 0 else hi
        n_bad = int(((ids < 0) | (ids >= n_rows)).sum())
        raise KernelInputError(
            f"{name} holds id {bad}, outside the table's rows [0, {n_rows}); "
            f"{n_bad} of {int(ids.shape[0])} ids are out of range"
        )


def require_csr_offsets(offsets: Any, name: str, n_values: int, values_name: str) -> int:
    """Check CSR offsets against the flat array they index; return the number of lists.

    Offsets start at 0, never decrease and end at len(values), so every list is a slice of
    `values` and no slice reads past it.
    """
    require_shape(offsets, name, 1, "a 1-D CSR offsets array of length (lists + 1)")
    require_dtype(offsets, name, INT_DTYPES)
    if int(offsets.shape[0]) == 0:
        raise KernelInputError(f"{name} must have length (lists + 1) >= 1, got an empty array")
    if int(offsets[0]) != 0:
        raise KernelInputError(f"{name} must start at 0, got {int(offsets[0])}")
    if int(offsets.shape[0]) > 1:
        steps = offsets[1:] < offsets[:-1]
        if bool(steps.any()):
            first = int(np.flatnonzero(_to_numpy(steps))[0])
            raise KernelInputError(
                f"{name} must not decrease, but {name}[{first + 1}]={int(offsets[first + 1])} "
                f"< {name}[{first}]={int(offsets[first])}"
            )
    if int(offsets[-1]) != n_values:
        raise KernelInputError(
            f"{name}[-1] must equal len({values_name})={n_values}, got {int(offsets[-1])}"
        )
    return int(offsets.shape[0]) - 1


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if is_torch_tensor(x) else np.asarray(x)


# ---------------------------------------------------------------------------------------------
# Contiguity
# ---------------------------------------------------------------------------------------------


def rows_contiguous(x: Any) -> Any:
    """A view or copy whose last dimension has unit stride (kernels take row strides only)."""
    if is_torch_tensor(x):
        return x if x.dim() == 0 or x.stride(-1) == 1 else x.contiguous()
    return x if x.strides[-1] == x.itemsize else np.ascontiguousarray(x)


# ---------------------------------------------------------------------------------------------
# Launch arithmetic
# ---------------------------------------------------------------------------------------------


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def device_kind() -> str:
    """'interpreter' or 'cuda': which family of launch configs applies."""
    return "interpreter" if interpreting() else "cuda"


def dot_in_fp32(items_dtype: str) -> bool:
    """Upcast tl.dot operands to fp32 for this table dtype?

    Only bf16 under the interpreter: it stores bf16 as uint16 and its tl.dot multiplies the raw
    bit patterns (triton-lang/triton#11584, not fixed upstream as of triton 3.9). The upcast is
    exact (bf16 x bf16 products fit fp32), so scores match the compiled bf16 dot's fp32
    accumulation; compiled kernels keep the native bf16 dot.
    """
    return items_dtype == "bfloat16" and device_kind() == "interpreter"


def dot_precision(items_dtype: str) -> str | None:
    """tl.dot input precision: IEEE for fp32 tables (Triton's default there is TF32, which
    rounds inputs to 10 mantissa bits and would reorder near-ties); the default otherwise."""
    return "ieee" if items_dtype == "float32" or dot_in_fp32(items_dtype) else None


# tl.dot needs every block dimension >= 16.
MIN_DOT_BLOCK = 16


@dataclass(frozen=True)
class GatherPoolBlocks:
    BLOCK_L: int  # ids per step of a list
    BLOCK_D: int  # embedding columns per program
    num_warps: int


def gather_pool_blocks(dim: int) -> GatherPoolBlocks:
    """One program per (list, BLOCK_D columns); lists are walked BLOCK_L ids at a time."""
    block_d = min(next_power_of_2(max(dim, 1)), 256)
    if device_kind() == "interpreter":
        # Each interpreted op is a numpy call over the whole block: few, wide steps are fastest.
        return GatherPoolBlocks(BLOCK_L=32, BLOCK_D=block_d, num_warps=1)
    return GatherPoolBlocks(BLOCK_L=16, BLOCK_D=block_d, num_warps=4 if block_d >= 128 else 2)


@dataclass(frozen=True)
class ScoreTopkBlocks:
    K_PAD: int  # running top-K width per query: a power of two >= k
    BLOCK_N: int  # items per tile; >= K_PAD so a sorted tile can be cut to K_PAD columns
    BLOCK_D: int  # embedding columns per tl.dot step
    tiles_per_prog: int  # consecutive tiles one program walks
    n_item_progs: int  # programs along the items axis (grid axis 1)

    @property
    def tile_items(self) -> int:
        """Items one program covers."""
        return self.BLOCK_N * self.tiles_per_prog


def score_topk_blocks(
    n_queries: int, n_items: int, dim: int, k: int, *, kind: str | None = None
) -> ScoreTopkBlocks:
    """Tile and grid sizes for the streaming top-K kernel on `kind` (default: device_kind()).

    The items axis is split into contiguous ranges, one per program along grid axis 1, so each
    item row is read by one program per query block; the number of ranges trades parallelism
    against the (queries x ranges x K_PAD) partial keys the merge has to read.
    """
    if k > MAX_TRITON_TOPK:
        raise KernelInputError(
            f"k={k} exceeds the Triton kernel's limit of {MAX_TRITON_TOPK} (its running top-K "
            "lives in registers); ask for fewer results or run on CPU"
        )
    k_pad = next_power_of_2(k)
    block_d = min(max(next_power_of_2(dim), MIN_DOT_BLOCK), 128)
    if (kind or device_kind()) == "interpreter":
        # Interpreted ops cost per call, not per element: wide tiles, few programs.
        block_n = max(k_pad, 64)
        target_progs = 2
    else:
        block_n = max(k_pad, 128 if dim <= 128 else 64)
        # About four programs per SM on an H100 (132 SMs) keeps every SM busy through the tail
        # (32: a typical autotuned BLOCK_B; the estimate only sizes the grid).
        query_blocks = cdiv(max(n_queries, 1), 32)
        target_progs = max(1, 528 // query_blocks)
    n_tiles = max(1, cdiv(n_items, block_n))
    n_progs = min(n_tiles, target_progs)
    tiles_per_prog = cdiv(n_tiles, n_progs)
    n_progs = cdiv(n_tiles, tiles_per_prog)
    return ScoreTopkBlocks(k_pad, block_n, block_d, tiles_per_prog, n_progs)


def cpu_chunk_rows(n_queries: int) -> int:
    """Item rows per chunk of the CPU top-K: a (queries x chunk) fp32 score block of about 4 MiB.

    Measured on the 2-core development machine (numpy/OpenBLAS, d=64, N=1e6): 16384 rows was
    fastest at B=64 and 4096 at B=256, i.e. the block that stays in L2/L3 between the sgemm
    writing it and the threshold filter reading it; B=1 is a gemv and wants long chunks
    (262144 rows beat 32768 by 20 %: fewer per-chunk numpy calls).
    """
    return int(min(max(2**20 // max(n_queries, 1), 4096), 262144))


def score_topk_configs(kind: str | None = None) -> list[dict[str, int]]:
    """Autotune candidates for the top-K kernel on `kind` (default: device_kind()), keyed on
    batch bucket, dim and K_PAD."""
    if (kind or device_kind()) == "interpreter":
        return [{"BLOCK_B": MIN_DOT_BLOCK, "num_warps": 4}]
    # More queries per program means fewer re-reads of the item table (the bytes that bound
    # this kernel), fewer means less register pressure from the (BLOCK_B, K_PAD) running keys.
    return [
        {"BLOCK_B": 16, "num_warps": 4},
        {"BLOCK_B": 32, "num_warps": 4},
        {"BLOCK_B": 32, "num_warps": 8},
        {"BLOCK_B": 64, "num_warps": 8},
    ]


# Running keys a program may hold: BLOCK_B x K_PAD int64 of 16384 is 128 KiB, half an SM's
# register file; larger configs would spill every merge to local memory.
MAX_RUNNING_KEYS = 16384


def prune_score_topk_configs(configs: list[Any], named_args: dict, **kwargs: Any) -> list[Any]:
    """Autotune pruning (triton's early_config_prune): drop configs whose running keys spill."""
    fits = [c for c in configs if c.kwargs["BLOCK_B"] * kwargs["K_PAD"] <= MAX_RUNNING_KEYS]
    return fits or [min(configs, key=lambda c: c.kwargs["BLOCK_B"])]
