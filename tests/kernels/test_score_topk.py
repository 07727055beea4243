"""score_topk against its torch reference: Triton kernel (interpreter / CUDA) and the CPU path."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from kernels import (
    KernelInputError,
    _score_topk_cpu,
    _score_topk_onnx,
    score_topk,
    score_topk_reference,
    score_topk_triton,
)
from kernels._score_topk_cpu import CPU_SAMPLE_MAX_QUERIES
from tests.kernels.checks import assert_close, assert_topk_match
from tests.kernels.impls import IMPLS, from_numpy, run

# Tolerances from measurement: worst |got - want| over SHAPES was 1.1e-5 (fp32), 2.3e-5 (fp16)
# and 5.7e-6 (bf16) for scores up to ~40 in magnitude, on the interpreter and the CPU path alike:
# every path multiplies the same rounded inputs and accumulates in fp32, so only the summation
# order differs. atol is set ~4x above the worst case.
DTYPE_TOL = [
    pytest.param(torch.float32, 1e-4, 1e-5, id="fp32"),
    pytest.param(torch.float16, 1e-4, 1e-5, id="fp16"),
    pytest.param(torch.bfloat16, 1e-4, 1e-5, id="bf16"),
]

# A covering set, not the cartesian product: the interpreter runs every tl op as numpy calls
# (about 0.1-0.5 s per case here), so each shape carries one or two awkward features.
SHAPES = [
    # (B, N, d, k)
    pytest.param(1, 300, 64, 1, id="B1-K1"),  # one query (15 padded rows), K=1, N % tile != 0
    pytest.param(7, 257, 100, 10, id="B7-d100"),  # d=100: masked columns; ragged last tile
    pytest.param(64, 190, 16, 100, id="B64-K100"),  # 4 query blocks; K_PAD 128 > 64-item tile
    pytest.param(7, 90, 128, 100, id="Kgt-N"),  # K > N: N columns come back
    pytest.param(7, 700, 64, 10, id="B7-multi-tile"),  # tiles that merge and tiles that skip
]


def _inputs(B, N, d, dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, d, generator=g).to(dtype), torch.randn(N, d, generator=g).to(dtype)


def _all_scores(queries, items, exclude=None, item_mask=None):
    """(B, N) reference scores, -inf where ruled out: the full ranking from the reference."""
    scores, ids = score_topk_reference(
        queries, items, items.shape[0], exclude=exclude, item_mask=item_mask
    )
    full = torch.full((queries.shape[0], items.shape[0]), float("-inf"))
    valid = ids >= 0
    rows = torch.arange(queries.shape[0])[:, None].expand_as(ids)
    full[rows[valid], ids[valid]] = scores[valid]
    return full


def _check(impl, queries, items, k, *, atol=1e-4, rtol=1e-5, exclude=None, item_mask=None):
    got = run(impl, score_topk, score_topk_triton, queries, items, k,
              exclude=exclude, item_mask=item_mask)  # fmt: skip
    want = score_topk_reference(queries, items, k, exclude=exclude, item_mask=item_mask)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64
    assert got[0].shape == (queries.shape[0], min(k, items.shape[0]))
    all_scores = _all_scores(queries, items, exclude, item_mask)
    assert_topk_match(*got, *want, all_scores, atol=atol, rtol=rtol)
    return got, want


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOL)
@pytest.mark.parametrize("B, N, d, k", SHAPES)
def test_matches_reference(impl, B, N, d, k, dtype, atol, rtol):
    queries, items = _inputs(B, N, d, dtype)
    _check(impl, queries, items, k, atol=atol, rtol=rtol)


def _random_exclude(B, N, max_len, g):
    lengths = torch.randint(0, max_len + 1, (B,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return offsets, torch.randint(0, N, (int(offsets[-1]),), generator=g)


@pytest.mark.parametrize("impl", IMPLS)
def test_exclusions_and_mask(impl):
    """Random per-query exclusions (duplicates included) and a global mask, over 2 item ranges."""
    g = torch.Generator().manual_seed(1)
    queries, items = _inputs(9, 333, 32, torch.float32, seed=1)
    exclude = _random_exclude(9, 333, 60, g)
    item_mask = torch.rand(333, generator=g) < 0.25
    _check(impl, queries, items, 20, exclude=exclude, item_mask=item_mask)


@pytest.mark.parametrize("impl", IMPLS)
def test_lower_id_first_on_ties(impl):
    """The ordering promise, exactly: scores on a coarse grid are exact in any summation order
    (multiples of 1/8, small integers), and values in {-2..2} force many equal scores."""
    g = torch.Generator().manual_seed(2)
    queries = torch.randint(-2, 3, (5, 24), generator=g).float()
    items = torch.randint(-2, 3, (400, 24), generator=g).float() / 8
    # Duplicated rows spread over the id range: equal scores whose ids are far apart.
    items[[7, 150, 301, 399]] = items[42].clone()
    exclude = _random_exclude(5, 400, 30, g)
    for k in (1, 37, 128):
        got, want = _check(impl, queries, items, k, atol=0.0, rtol=0.0, exclude=exclude)
        assert torch.equal(got[0], want[0]), "scores differ on an exact grid"
        assert torch.equal(got[1], want[1]), f"k={k}: ids differ from lower-id-first order"


CPU_IMPLS = [p for p in IMPLS if p.values[0].startswith("cpu")]


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_cpu_path_across_many_chunks(impl):
    """The CPU path's doubling chunks, lagging thresholds and batched merges, with equal scores
    straddling chunk boundaries: 20000 items on the coarse grid, exact against the reference."""
    g = torch.Generator().manual_seed(6)
    queries = torch.randint(-2, 3, (5, 8), generator=g).float()
    items = torch.randint(-2, 3, (20_000, 8), generator=g).float() / 8
    exclude = _random_exclude(5, 20_000, 500, g)
    item_mask = torch.rand(20_000, generator=g) < 0.1
    for k in (1, 50, 1500):  # 1500 > the Triton kernel's limit: the CPU path has none
        got, want = _check(impl, queries, items, k, atol=0.0, rtol=0.0, exclude=exclude,
                           item_mask=item_mask)  # fmt: skip
        assert torch.equal(got[1], want[1]), f"k={k}: ids differ from lower-id-first order"


# Batches below CPU_SAMPLE_MAX_QUERIES start from sampled thresholds; 6000 items give a
# 375-row sample, enough for k <= 23 (CPU_SAMPLE_MIN_K * k rows).
SAMPLED_N = 6000
SAMPLED_BATCHES = [
    pytest.param(1, id="B1"),
    pytest.param(7, id="B7"),
    pytest.param(CPU_SAMPLE_MAX_QUERIES, id="B-last-sampled"),
    pytest.param(CPU_SAMPLE_MAX_QUERIES + 1, id="B-first-unsampled"),
]


def _few_rows_inputs(B, N, d, n_rows, g):
    """Items drawn from n_rows distinct grid rows: each query's best score is shared by about
    N / n_rows items, many of them sampled, so the sampled k-th score is the true k-th score."""
    queries = torch.randint(1, 3, (B, d), generator=g).float()
    rows = torch.randint(-2, 3, (n_rows, d), generator=g).float() / 8
    return queries, rows[torch.randint(0, n_rows, (N,), generator=g)]


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("B", SAMPLED_BATCHES)
def test_cpu_sampled_thresholds_keep_ties_exact(impl, B):
    """Sampled rows (every 16th id) tie with the rows between them, so a threshold one float
    step too high would drop the lower ids; exclusions and the mask hit sampled rows too."""
    g = torch.Generator().manual_seed(7)
    queries, items = _few_rows_inputs(B, SAMPLED_N, 12, 16, g)
    queries[0] = 0  # every score 0: no rounding margin, the threshold must still keep v itself
    exclude = _random_exclude(B, SAMPLED_N, 50, g)
    exclude = (exclude[0], torch.where(torch.rand(len(exclude[1]), generator=g) < 0.5,
                                       exclude[1] // 16 * 16, exclude[1]))  # fmt: skip
    item_mask = torch.rand(SAMPLED_N, generator=g) < 0.1
    for k in (1, 10, 23):
        got, want = _check(impl, queries, items, k, atol=0.0, rtol=0.0, exclude=exclude,
                           item_mask=item_mask)  # fmt: skip
        assert torch.equal(got[1], want[1]), f"k={k}: ids differ from lower-id-first order"


def _sampled_threshold(queries, items, k, *, exclude=None, item_mask=None):
    excluded = None
    if exclude is not None:
        offsets, ids = (x.numpy() for x in exclude)
        excluded = (np.repeat(np.arange(len(queries)), np.diff(offsets)), ids)
    masked = np.flatnonzero(item_mask.numpy()) if item_mask is not None else None
    items_np = items.numpy()
    return _score_topk_cpu.sampled_threshold(queries.numpy(), lambda rows: items_np[rows], len(items), k,
                                  masked, excluded)  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_cpu_sampled_threshold_is_below_the_kth_score(seed):
    """The invariant the sampled path rests on, on float data (scores rounded differently by
    every summation order): each threshold lies below the reference's k-th best score."""
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(9, 48, generator=g) * torch.rand(9, 1, generator=g) * 10
    items = torch.randn(SAMPLED_N, 48, generator=g)
    exclude = _random_exclude(9, SAMPLED_N, 400, g)
    item_mask = torch.rand(SAMPLED_N, generator=g) < 0.3
    k = 20
    threshold = _sampled_threshold(queries, items, k, exclude=exclude, item_mask=item_mask)
    assert threshold is not None and np.isfinite(threshold).all(), "the sample was not used"
    want, _ = score_topk_reference(queries, items, k, exclude=exclude, item_mask=item_mask)
    kth = want[:, -1].numpy()
    assert (threshold < kth).all(), f"thresholds {threshold} not below k-th scores {kth}"
    assert _sampled_threshold(queries[:1].expand(CPU_SAMPLE_MAX_QUERIES + 1, -1).contiguous(),
                              items, k) is None, "large batches keep the doubling chunks"  # fmt: skip


def _cpu_topk(queries, items, k, read_items):
    return _score_topk_cpu.score_topk_cpu(queries.numpy(), read_items, len(items), k, None, None)


@pytest.mark.parametrize("B", [1, 7])
def test_cpu_sampled_threshold_allows_for_rounding(B):
    """The chunk sgemm may round a sampled item's score below the sample's value. Simulated:
    sampled rows (strided reads) come back scaled by 1 + 2**-21, which moves scores by less
    than the margin (4 * d * 2**-24 * |x| |q|); without it the tied best items would be lost."""
    g = torch.Generator().manual_seed(9)
    queries, items = _few_rows_inputs(B, SAMPLED_N, 16, 8, g)
    items_np = items.numpy()

    def read_items(rows):
        if rows.step in (None, 1):
            return items_np[rows]
        return items_np[rows] * np.float32(1 + 2**-21)

    for k in (1, 10):
        got = _cpu_topk(queries, items, k, read_items)
        want = score_topk_reference(queries, items, k)
        assert np.array_equal(got[1], want[1].numpy()), f"k={k}: ids differ"


def test_cpu_sampled_threshold_skips_nan_scores(monkeypatch):
    """A NaN sampled score must not count as one of the k best: with one sampled row per
    maximum (group 1), 3 NaN rows would otherwise lift the threshold above the 8th to 10th
    best items."""
    monkeypatch.setattr(_score_topk_cpu, "CPU_SAMPLE_GROUP", 1)
    g = torch.Generator().manual_seed(10)
    queries = torch.rand(3, 16, generator=g) + 0.5
    items = torch.rand(SAMPLED_N, 16, generator=g)
    items[torch.arange(8) * 32] += 1.0  # 8 sampled items well above the rest
    items[[16, 48, 80]] = float("nan")
    for k in (10, 20):
        got, want = _check("cpu-numpy", queries, items, k)
        assert torch.equal(got[1], want[1]), f"k={k}: ids differ"


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_cpu_sampled_path_with_nan_inf_and_few_servable_items(impl):
    """NaN and inf rows among the sampled ones, and queries left with fewer than k servable
    items: the thresholds fall back to -inf there and the result pads with -1 / -inf."""
    queries, items = _inputs(4, SAMPLED_N, 16, torch.float32, seed=8)
    items[[0, 32, 64]] = float("nan")
    items[48, 3] = float("inf")  # +inf or -inf score, by the sign of each query's column 3
    items[160, 0] = 3e19  # its squared norm overflows fp32: margins of inf, no sampling gain
    item_mask = torch.zeros(SAMPLED_N, dtype=torch.bool)
    keep = torch.tensor([5, 16, 17, 2000])
    ids = torch.tensor([i for i in range(SAMPLED_N) if i not in set(keep.tolist())])
    offsets = torch.tensor([0, len(ids), len(ids), len(ids), len(ids)])  # query 0: 4 items left
    for k in (1, 10):
        got, _ = _check(impl, queries, items, k, exclude=(offsets, ids), item_mask=item_mask)
        assert not torch.isin(got[1], torch.tensor([0, 32, 64])).any()
        if k == 10:
            assert (got[1][0, 4:] == -1).all() and set(got[1][0, :4].tolist()) == set(keep.tolist())
    item_mask[100:] = True  # 100 servable items, 7 of them sampled: thresholds of -inf
    got, _ = _check(impl, queries, items, 10, item_mask=item_mask)
    assert (got[1] >= 0).sum() > 0


TRITON_IMPLS = [p for p in IMPLS if p.values[0].startswith("triton")]


@pytest.mark.parametrize("impl", TRITON_IMPLS)
def test_triton_k_limit_is_an_error(impl):
    queries, items = _inputs(2, 2000, 16, torch.float32)
    with pytest.raises(KernelInputError, match="k=1025 exceeds the Triton kernel's limit"):
        run(impl, score_topk, score_topk_triton, queries, items, 1025)


@pytest.mark.parametrize("impl", IMPLS)
def test_every_item_excluded_or_masked(impl):
    """Fewer servable items than k: the tail is id -1 / score -inf, whole rows when none remain."""
    queries, items = _inputs(3, 50, 16, torch.float32, seed=3)
    # query 0: every item excluded; query 1: nothing; query 2: all but items 4, 9, 49
    kept = {4, 9, 49}
    ids = torch.cat([torch.arange(50), torch.tensor([i for i in range(50) if i not in kept])])
    offsets = torch.tensor([0, 50, 50, len(ids)])
    got, _ = _check(impl, queries, items, 10, exclude=(offsets, ids))
    assert (got[1][0] == -1).all() and torch.isneginf(got[0][0]).all()
    assert (got[1][1] >= 0).all()
    assert sorted(got[1][2][:3].tolist()) == sorted(kept) and (got[1][2][3:] == -1).all()

    all_masked = torch.ones(50, dtype=torch.bool)
    got, _ = _check(impl, queries, items, 7, item_mask=all_masked)
    assert (got[1] == -1).all() and torch.isneginf(got[0]).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_scores_are_not_served(impl):
    queries, items = _inputs(4, 80, 16, torch.float32, seed=4)
    items[[3, 40]] = float("nan")
    got, _ = _check(impl, queries, items, 80)
    assert not torch.isin(got[1], torch.tensor([3, 40])).any()
    assert (got[1][:, -2:] == -1).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_query_batch(impl):
    queries, items = _inputs(0, 30, 16, torch.float32)
    scores, ids = run(impl, score_topk, score_topk_triton, queries, items, 5)
    assert scores.shape == ids.shape == (0, 5)


def _bad_calls():
    q, x = np.zeros((2, 8), np.float32), np.zeros((10, 8), np.float32)
    offs, ids = np.array([0, 1, 2]), np.array([3, 4])
    return [
        ("k must be a positive", (q, x, 0), {}),
        ("k must be a positive", (q, x, -3), {}),
        ("k must be a positive", (q, x, 2.5), {}),
        ("queries have dim 8 but items have dim 4", (q, x[:, :4], 3), {}),
        ("items must have dtype", (q, x.astype(np.float64), 3), {}),
        ("queries must be a", (q[0], x, 3), {}),
        ("exclude ids holds id 10", (q, x, 3), {"exclude": (offs, np.array([3, 10]))}),
        ("exclude ids holds id -1", (q, x, 3), {"exclude": (offs, np.array([-1, 2]))}),
        ("exclude offsets must start at 0", (q, x, 3), {"exclude": (np.array([1, 1, 2]), ids)}),
        ("exclude offsets must not decrease", (q, x, 3),
         {"exclude": (np.array([0, 2, 1, 2]), ids)}),  # fmt: skip
        (r"exclude offsets\[-1\] must equal", (q, x, 3), {"exclude": (np.array([0, 1, 1]), ids)}),
        ("describe 1 lists but there are 2 queries", (q, x, 3),
         {"exclude": (np.array([0, 2]), ids)}),  # fmt: skip
        ("exclude must be a CSR pair", (q, x, 3), {"exclude": ids}),
        ("item_mask must have dtype", (q, x, 3), {"item_mask": np.zeros(10, np.int8)}),
        ("item_mask must have one entry per item", (q, x, 3), {"item_mask": np.zeros(9, bool)}),
    ]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("match, args, kwargs", _bad_calls())
def test_bad_input_is_an_error(impl, match, args, kwargs):
    kwargs = {k: from_numpy(v) for k, v in kwargs.items()}
    with pytest.raises(KernelInputError, match=match):
        run(impl, score_topk, score_topk_triton, *from_numpy(args), **kwargs)


def test_mixed_array_kinds_are_an_error():
    q, x = np.zeros((2, 8), np.float32), torch.zeros(10, 8)
    with pytest.raises(KernelInputError, match="items is a torch tensor on cpu but queries is"):
        score_topk(q, x, 3)


def test_fp16_numpy_queries_round_to_the_items_dtype():
    """Queries are cast to the items' dtype first, on every path (here: numpy fp16 items)."""
    queries, items = _inputs(3, 64, 16, torch.float32, seed=5)
    got = score_topk(queries.numpy(), items.half().numpy(), 5)
    want = score_topk_reference(queries, items.half(), 5)
    assert_close(got[0], want[0], atol=1e-4, rtol=1e-5, name="scores")


# --- the onnxruntime path (numpy fp32 calls with at most ORT_MAX_SCORES scores) ---------------


def test_ort_graph_is_the_shipped_one():
    assert onnx.load(_score_topk_onnx.ORT_TOPK_GRAPH_PATH) == _score_topk_onnx.ort_topk_graph()


def test_ort_graph_ships_as_package_data():
    """An installed wheel holds the graph only if pyproject's package-data names it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["kernels"]
    name = Path(_score_topk_onnx.ORT_TOPK_GRAPH_PATH).name
    assert any(fnmatch(name, pattern) for pattern in patterns), (name, patterns)


def _grid(B, N, d, seed):
    """Integer-valued rows: every summation order gives the same scores, and ties abound."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, size=(B, d)).astype(np.float32),
            rng.integers(-2, 3, size=(N, d)).astype(np.float32))


def _spy_ort(monkeypatch):
    calls = []
    real = _score_topk_onnx.score_topk_ort

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(_score_topk_onnx, "score_topk_ort", spy)
    return calls


@pytest.mark.parametrize("B, N, k, n_excluded", [
    (1, 50, 5, 0), (6, 300, 10, 40), (3, 40, 40, 7), (5, 12, 30, 12), (8, 2000, 100, 150)])
def test_ort_path_matches_the_reference_exactly(monkeypatch, B, N, k, n_excluded):
    """Ties (lower id first), exclusion lists longer than k and with repeats, k >= N, and
    queries whose every item is excluded: ids and scores equal the reference's exactly."""
    calls = _spy_ort(monkeypatch)
    queries, items = _grid(B, N, 6, seed=B + N)
    rng = np.random.default_rng(k)
    lengths = rng.integers(0, n_excluded + 1, size=B)
    lengths[0] = n_excluded
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, N, size=int(offsets[-1]))
    if n_excluded >= N:
        ids[: N] = np.arange(N)  # query 0 has nothing left to serve
    got = score_topk(queries, items, k, exclude=(offsets, ids))
    want = score_topk_reference(torch.from_numpy(queries), torch.from_numpy(items), k,
                                exclude=(torch.from_numpy(offsets), torch.from_numpy(ids)))
    assert calls and calls[0] is not None, "the call did not take the onnxruntime path"
    np.testing.assert_array_equal(got[1], want[1].numpy())
    np.testing.assert_array_equal(got[0], want[0].numpy())


def test_ort_path_drops_minus_inf_and_hands_nan_to_the_numpy_path(monkeypatch):
    calls = _spy_ort(monkeypatch)
    queries, items = _grid(2, 60, 4, seed=3)
    queries = np.abs(queries) + 1  # every column positive: the sign of a score is the item's
    items[:50] = -np.inf  # 50 items score -inf: only 10 are servable
    got = score_topk(queries, items, 15)
    assert calls[-1] is not None
    assert (got[1][:, :10] >= 50).all() and (got[1][:, 10:] == -1).all()
    assert np.isneginf(got[0][:, 10:]).all()
    items[55, 0] = np.nan
    got = score_topk(queries, items, 5)
    assert calls[-1] is None  # onnxruntime ranked the NaN first: the numpy path answered
    assert 55 not in got[1]


def test_large_calls_and_hosts_without_onnxruntime_take_the_chunked_path(monkeypatch):
    calls = _spy_ort(monkeypatch)
    queries, items = _grid(4, 500, 8, seed=4)
    want = score_topk_reference(torch.from_numpy(queries), torch.from_numpy(items), 7)
    monkeypatch.setattr(_score_topk_onnx, "ORT_MAX_SCORES", 4 * 500 - 1)
    got = score_topk(queries, items, 7)
    assert not calls
    np.testing.assert_array_equal(got[1], want[1].numpy())
    monkeypatch.setattr(_score_topk_onnx, "ORT_MAX_SCORES", 4 * 500)
    monkeypatch.setattr(_score_topk_onnx, "_ort_session", False)  # onnxruntime not installed
    got = score_topk(queries, items, 7)
    assert calls == [None]
    np.testing.assert_array_equal(got[1], want[1].numpy())
