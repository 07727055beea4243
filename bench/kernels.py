"""Kernel benchmarks: score_topk against torch matmul + topk and FAISS IndexFlatIP, side by side.

    python -m bench.kernels            # N in {1e5, 1e6} (+ 1e7, 1e8 on a GPU), d {64, 128},
                                       # B {1, 64, 256}, K {10, 100}
    python -m bench.kernels --quick    # about a minute: d=64, K=100
    python -m bench.kernels --serving  # serving-sized CPU calls: N=1e5, d=64, B {1, 8, 32, 64}

Each row times, round-robin on the same data: our op (numpy arrays -> the CPU path; CUDA
tensors -> the Triton kernel), torch `topk(queries @ items.T)`, FAISS `IndexFlatIP.search`, and
a plain read of the item table (bench.report.read_probe), the bandwidth floor of any op that
reads the table once. Columns: our speed-up over the faster peer; our effective bandwidth (table
bytes / our time); "read GB/s", the floor's bandwidth at that moment; "of BW" = floor time / our
time (1.0 = we run at memory speed); "x floor" = its inverse. A gather_pool table follows.
Timings never gate tests.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from typing import Any, Callable

import numpy as np

import kernels
from bench.report import (
    Bandwidth,
    Timing,
    device_memory_bandwidth,
    host_memory_bandwidth,
    machine_header,
    print_table,
    read_probe,
    time_side_by_side,
    timing,
)

# The development machine has 24 GiB: a (B x N) fp32 score matrix for the torch peer must fit
# next to the table with room to spare.
MAX_PEER_SCORE_BYTES = 4 * 2**30

# Measured here: a 1.5 ms score_topk call took 3.4-5.8 ms right after a FAISS search, whose
# OpenMP threads keep spinning on both cores for a while. A pause before each call removes it:
# 0.02-0.05 s is enough; 0.25 s let caches and thread pools go cold (+0.5-1 ms per call).
PAUSE_S = 0.05

TOPK_HEADERS = [
    "N", "d", "B", "K", "ours ms", "torch ms", "faiss ms", "vs best peer", "GB/s", "read GB/s",
    "of BW", "x floor",
]  # fmt: skip


def _ratio(ours: float, peers: list[float]) -> float:
    measured = [p for p in peers if not math.isnan(p)]
    return min(measured) / ours if measured else float("nan")


def topk_rows_cpu(
    sizes: list[int], dims: list[int], batches: list[int], ks: list[int], *, repeat: int
) -> list[list[Any]]:  # fmt: skip
    """fp32 numpy tables on the host: ours (numpy path), torch CPU, FAISS CPU."""
    import faiss

    rows = []
    rng = np.random.default_rng(0)
    for n, d in itertools.product(sizes, dims):
        items = rng.standard_normal((n, d), dtype=np.float32)
        index = faiss.IndexFlatIP(d)
        index.add(items)
        for b, k in itertools.product(batches, ks):
            queries = rng.standard_normal((b, d), dtype=np.float32)
            times = time_side_by_side(
                _cpu_candidates(queries, items, index, k), repeat=repeat, pause_s=PAUSE_S
            )
            rows.append(_topk_row(n, d, b, k, times, items.nbytes))
    return rows


def _cpu_candidates(queries: np.ndarray, items: np.ndarray, index: Any, k: int) -> dict:
    import torch

    queries_t, items_t = torch.from_numpy(queries), torch.from_numpy(items)
    candidates: dict[str, Callable[[], Any]] = {
        "ours": lambda: kernels.score_topk(queries, items, k),
        "faiss": lambda: index.search(queries, k),
        "read": read_probe(items),
    }
    if len(queries) * len(items) * 4 <= MAX_PEER_SCORE_BYTES:
        candidates["torch"] = lambda: torch.topk(queries_t @ items_t.T, k, dim=1)
    return candidates


def topk_rows_cuda(
    sizes: list[int], dims: list[int], batches: list[int], ks: list[int], *, repeat: int
) -> list[list[Any]]:  # fmt: skip
    """fp16 tables on the GPU: ours (Triton kernel) and torch; FAISS here is CPU-only (n/a)."""
    import torch

    rows = []
    for n, d in itertools.product(sizes, dims):
        items = torch.randn(n, d, device="cuda", dtype=torch.float16)
        for b, k in itertools.product(batches, ks):
            queries = torch.randn(b, d, device="cuda", dtype=torch.float16)
            times = time_side_by_side(
                _cuda_candidates(queries, items, k), repeat=repeat, sync=torch.cuda.synchronize,
                pause_s=PAUSE_S,
            )
            nbytes = items.numel() * items.element_size()
            rows.append(_topk_row(n, d, b, k, times, nbytes))
        items = None
        torch.cuda.empty_cache()
    return rows


def _cuda_candidates(queries: Any, items: Any, k: int) -> dict:
    import torch

    free_bytes, _ = torch.cuda.mem_get_info()
    candidates: dict[str, Callable[[], Any]] = {
        "ours": lambda: kernels.score_topk(queries, items, k),
        "read": read_probe(items),
    }
    # torch's peer materialises (B x N) fp16 scores, then an fp32 copy for topk.
    if len(queries) * len(items) * 6 < free_bytes // 2:
        candidates["torch"] = lambda: torch.topk((queries @ items.T).float(), k, dim=1)
    return candidates


def _topk_row(n, d, b, k, times, table_bytes) -> list[Any]:
    ours = times["ours"].median_s
    torch_s = times["torch"].median_s if "torch" in times else float("nan")
    faiss_s = times["faiss"].median_s if "faiss" in times else float("nan")
    floor = times["read"].median_s
    return [
        f"{n:.0e}", d, b, k, ours * 1e3, torch_s * 1e3, faiss_s * 1e3,
        _ratio(ours, [torch_s, faiss_s]), table_bytes / ours / 1e9, table_bytes / floor / 1e9,
        floor / ours, ours / floor,
    ]  # fmt: skip


SERVING_BATCHES = [1, 8, 32, 64]
SERVING_KS = [10, 100]
SERVING_ROUNDS = 10


def serving_rows(*, repeat: int, n_items: int = 100_000, dim: int = 64) -> list[list[Any]]:
    """Calls the size a serving process makes: numpy arrays on the host, each query excluding
    20-50 random items (CSR), against torch topk(q @ items.T) with the same exclusions."""
    import torch

    rng = np.random.default_rng(2)
    items = rng.standard_normal((n_items, dim), dtype=np.float32)
    items_t = torch.from_numpy(items)
    rows = []
    for b, k in itertools.product(SERVING_BATCHES, SERVING_KS):
        queries = rng.standard_normal((b, dim), dtype=np.float32)
        lengths = rng.integers(20, 51, b)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = rng.integers(0, n_items, int(offsets[-1])).astype(np.int64)
        queries_t = torch.from_numpy(queries)
        query_of = torch.from_numpy(np.repeat(np.arange(b), lengths))
        ids_t = torch.from_numpy(ids)

        def torch_peer(q=queries_t, r=query_of, i=ids_t, k=k):
            scores = q @ items_t.T
            scores[r, i] = float("-inf")
            return torch.topk(scores, k, dim=1)

        times = _time_in_blocks({
            "ours": lambda q=queries, o=offsets, i=ids, k=k: kernels.score_topk(
                q, items, k, exclude=(o, i)
            ),
            "torch": torch_peer,
        }, repeat=repeat)  # fmt: skip
        ours, peer = times["ours"], times["torch"]
        rows.append([
            b, k, ours.median_s * 1e6, ours.p20_s * 1e6, ours.p80_s * 1e6,
            ours.median_s * 1e6 / b, peer.median_s * 1e6, peer.median_s / ours.median_s,
        ])  # fmt: skip
    return rows


def _time_in_blocks(candidates: dict[str, Callable[[], Any]], *, repeat: int,
                    rounds: int = SERVING_ROUNDS) -> dict[str, Timing]:  # fmt: skip
    """Per-call times, each candidate called back to back in blocks (as a busy server calls
    it), the blocks of the candidates alternating for `rounds` rounds; the first call of each
    block is a warm-up. Alternating single calls measured the neighbour instead: right after
    a torch call its spinning OpenMP threads held a core and our B=8 call took 10.5 ms, not
    4.2 ms; a 0.05 s pause let the 25.6 MB table fall out of cache (B=1: 3.7 ms, not 1.4 ms)."""
    per_block = max(1, repeat // rounds)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            fn()
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return {name: timing(s) for name, s in samples.items()}


def gather_pool_rows(*, repeat: int, bandwidth: Bandwidth, device: str) -> list[list[Any]]:
    """256 histories of ~50 ids from a 1e6 x 64 table: ours against torch embedding_bag."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    rows = []
    for dtype in (torch.float32, torch.float16):
        table = torch.randn(1_000_000, 64, dtype=dtype, device=device)
        lengths = torch.from_numpy(rng.integers(0, 100, 256))
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(device)
        ids = torch.from_numpy(rng.integers(0, 1_000_000, int(lengths.sum()))).to(device)
        weights = torch.rand(len(ids), device=device)
        candidates: dict[str, Callable[[], Any]] = {
            "ours": lambda t=table, o=offsets, i=ids, w=weights: kernels.gather_pool(t, i, o, w),
            "torch": lambda t=table, o=offsets, i=ids, w=weights: F.embedding_bag(
                i, t, o[:-1], mode="sum", per_sample_weights=w.to(t.dtype)
            ),
        }
        if device == "cpu" and dtype == torch.float32:
            np_args = (table.numpy(), ids.numpy(), offsets.numpy(), weights.numpy())
            candidates["ours (numpy)"] = lambda a=np_args: kernels.gather_pool(*a)
        sync = torch.cuda.synchronize if device == "cuda" else None
        # No pause here (no FAISS): a paused torch wakes its sleeping thread pool each call
        # (0.05 ms warm vs 6 ms after a 0.25 s pause), and serving calls come back to back.
        times = time_side_by_side(candidates, repeat=repeat, sync=sync)
        moved = len(ids) * 64 * table.element_size()
        for name, t in times.items():
            rows.append([
                str(dtype).removeprefix("torch."), name, t.ms,
                times["torch"].median_s / t.median_s, moved / t.median_s / 1e9,
                moved / t.median_s / bandwidth.bytes_per_s,
            ])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kernels", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="d=64, K=100 only (about a minute)")
    parser.add_argument(
        "--serving", action="store_true",
        help="only the serving-sized CPU table: N=1e5, d=64, B {1, 8, 32, 64}, K {10, 100}",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per candidate")
    args = parser.parse_args(argv)
    if args.serving:
        serving_main(args.repeat or 100)
        return

    import faiss
    import torch

    cuda = torch.cuda.is_available()
    repeat = args.repeat or (5 if args.quick else 7)
    sizes = [100_000, 1_000_000]
    dims = [64] if args.quick else [64, 128]
    ks = [100] if args.quick else [10, 100]
    batches = [1, 64, 256]

    host_bw = host_memory_bandwidth()
    print(machine_header([
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__}"
        f" ({faiss.omp_get_max_threads()} threads), triton path: "
        + ("CUDA " + torch.cuda.get_device_name() if cuda else "not measured (no GPU)"),
        f"host memory bandwidth (start of run): {host_bw.describe()}",
        f"method: 1 warm-up call each, then median of {repeat} calls, candidates timed round-robin"
        f" with a {PAUSE_S} s pause before each call",
    ]))  # fmt: skip
    print()
    print("## score_topk, host: fp32 items, numpy arrays -> CPU path "
          "(torch: topk(q @ items.T); faiss: IndexFlatIP.search)")  # fmt: skip
    print_table(TOPK_HEADERS, topk_rows_cpu(sizes, dims, batches, ks, repeat=repeat))
    if cuda:
        device_bw = device_memory_bandwidth("cuda")
        print()
        print(f"## score_topk, CUDA: fp16 items, Triton kernel; device bandwidth "
              f"{device_bw.describe()}; faiss column n/a (faiss-cpu)")  # fmt: skip
        gpu_sizes = sizes + ([10_000_000] if args.quick else [10_000_000, 100_000_000])
        print_table(TOPK_HEADERS, topk_rows_cuda(gpu_sizes, dims, batches, ks, repeat=repeat))
    device = "cuda" if cuda else "cpu"
    print()
    print(f"## gather_pool on {device}: 256 lists of 0-99 ids (weighted sum), 1e6 x 64 table; "
          "peer torch.nn.functional.embedding_bag")  # fmt: skip
    print_table(
        ["dtype", "impl", "ms", "vs torch", "GB/s", "of BW"],
        gather_pool_rows(repeat=repeat, bandwidth=device_bw if cuda else host_bw, device=device),
    )


def serving_main(repeat: int) -> None:
    import torch

    print(machine_header([
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); ours: numpy arrays -> "
        "the CPU path",
        f"method: median (and 20/80 % quantiles) of {repeat} calls, made back to back in "
        f"{SERVING_ROUNDS} blocks per candidate, ours and torch blocks alternating, the first "
        "call of each block untimed (bench.kernels._time_in_blocks)",
    ]))  # fmt: skip
    print()
    print("## score_topk, serving-sized calls: N=1e5 fp32 items, d=64, 20-50 excluded ids per "
          "query (torch: scores[query, excluded] = -inf, then topk(q @ items.T))")  # fmt: skip
    print_table(
        ["B", "K", "ours us", "p20 us", "p80 us", "ours us/query", "torch us", "vs torch"],
        serving_rows(repeat=repeat),
    )


if __name__ == "__main__":
    main()
