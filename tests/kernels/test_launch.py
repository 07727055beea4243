"""Launch arithmetic: tiles cover every item, blocks fit the kernel's constraints, limits hold."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kernels import KernelInputError
from kernels._launch import (
    MAX_RUNNING_KEYS,
    MAX_TRITON_TOPK,
    MIN_DOT_BLOCK,
    cpu_chunk_rows,
    next_power_of_2,
    prune_score_topk_configs,
    score_topk_blocks,
    score_topk_configs,
)


@pytest.mark.parametrize("kind", ["interpreter", "cuda"])
@pytest.mark.parametrize(
    "n_queries, n_items, dim, k",
    [(1, 1, 1, 1), (7, 257, 100, 10), (256, 10**8, 128, 100), (64, 5, 16, 1024), (3, 10**6, 300, 7)],
)
def test_score_topk_blocks_cover_items(kind, n_queries, n_items, dim, k):
    blocks = score_topk_blocks(n_queries, n_items, dim, k, kind=kind)
    assert blocks.K_PAD == next_power_of_2(k) >= k
    assert blocks.BLOCK_N >= max(blocks.K_PAD, MIN_DOT_BLOCK)
    assert blocks.BLOCK_D >= MIN_DOT_BLOCK
    for size in (blocks.K_PAD, blocks.BLOCK_N, blocks.BLOCK_D):
        assert size & (size - 1) == 0, "block sizes are powers of two"
    covered = blocks.tile_items * blocks.n_item_progs
    assert covered >= n_items, "every item belongs to some program's range"
    assert covered - blocks.tile_items < max(n_items, 1), "no program gets only padding"


def test_k_above_the_triton_limit_is_an_error():
    with pytest.raises(KernelInputError, match=f"limit of {MAX_TRITON_TOPK}"):
        score_topk_blocks(1, 10**6, 64, MAX_TRITON_TOPK + 1)


@pytest.mark.parametrize("k_pad", [1, 128, 1024])
def test_autotune_pruning_keeps_configs_that_fit(k_pad):
    configs = [SimpleNamespace(kwargs={"BLOCK_B": c["BLOCK_B"]}) for c in score_topk_configs("cuda")]
    kept = prune_score_topk_configs(configs, {}, K_PAD=k_pad)
    assert kept, "at least one config survives"
    fitting = [c for c in configs if c.kwargs["BLOCK_B"] * k_pad <= MAX_RUNNING_KEYS]
    assert kept == (fitting or [min(configs, key=lambda c: c.kwargs["BLOCK_B"])])


def test_interpreter_uses_one_config():
    assert len(score_topk_configs("interpreter")) == 1


@pytest.mark.parametrize("n_queries", [0, 1, 64, 256, 10**5])
def test_cpu_chunk_rows_bounds(n_queries):
    rows = cpu_chunk_rows(n_queries)
    assert 4096 <= rows <= 262144
    assert n_queries * rows * 4 <= max(4 * 2**20, n_queries * 4096 * 4)
