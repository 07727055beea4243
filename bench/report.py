"""Shared pieces of freshrec's benchmark tables: machine header, timing, memory bandwidth, table.

Every benchmark prints one table per question with the peers measured in the same run, so the
ratios stay meaningful on a noisy or shared machine:

    header = machine_header(["method: ..."])
    times = time_side_by_side({"ours": f, "torch": g}, warmup=1, repeat=5)
    print_table(["N", "ours ms", ...], rows)

Timings are medians of `repeat` calls after `warmup` calls. Candidates are timed round-robin
(ours, peer, ours, peer, ...) rather than one after the other, so background load hits each of
them alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

# The bandwidth probe must dwarf the last-level cache (32 MiB on the development machine).
BANDWIDTH_PROBE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Timing:
    """Seconds: the median and the 20 % / 80 % quantiles of the timed calls."""

    median_s: float
    p20_s: float
    p80_s: float

    @property
    def ms(self) -> float:
        return self.median_s * 1e3


def timing(samples: list[float]) -> Timing:
    """Median and 20 % / 80 % quantiles of per-call seconds."""
    q = np.quantile(samples, [0.2, 0.8])
    return Timing(statistics.median(samples), float(q[0]), float(q[1]))


def time_side_by_side(
    candidates: dict[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeat: int = 5,
    sync: Callable[[], None] | None = None,
    pause_s: float = 0.0,
) -> dict[str, Timing]:
    """Median wall time of each candidate, timed round-robin after `warmup` calls each.

    `sync` (e.g. torch.cuda.synchronize) runs before each clock read for asynchronous devices.
    `pause_s` sleeps before each timed call, so worker threads a previous candidate left
    spin-waiting (OpenMP in torch and FAISS) are idle again and don't steal cores.
    """
    sync = sync or (lambda: None)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, fn in candidates.items():
            if pause_s:
                time.sleep(pause_s)
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: timing(s) for name, s in samples.items()}


@dataclass(frozen=True)
class Bandwidth:
    """Best read bandwidth measured on this machine, and the probe that reached it."""

    bytes_per_s: float
    probe: str
    all_probes: dict[str, float]

    @property
    def gb_per_s(self) -> float:
        return self.bytes_per_s / 1e9

    def describe(self) -> str:
        probes = ", ".join(f"{name} {v / 1e9:.1f}" for name, v in self.all_probes.items())
        return f"{self.gb_per_s:.1f} GB/s (best of: {probes} GB/s)"


def host_memory_bandwidth(*, repeat: int = 5) -> Bandwidth:
    """Host memory bandwidth, the best of three numpy probes over arrays far beyond the cache.

    sum: one thread streams one array; copy: read + write bytes (counted both); dot: a BLAS dot of
    two arrays, the only probe here that reads on every core. Taking the best keeps the
    "fraction of bandwidth" column honest: an op can only look good against a fast probe.
    """
    n = BANDWIDTH_PROBE_BYTES // 4
    a = np.ones(n, dtype=np.float32)
    b = np.ones(n, dtype=np.float32)
    out = np.empty_like(a)
    half = n // 2
    probes = {
        "sum": (lambda: a.sum(), a.nbytes),
        "copy": (lambda: np.copyto(out, a), 2 * a.nbytes),
        "dot": (lambda: a[:half] @ b[:half], a.nbytes),
    }
    times = time_side_by_side({k: fn for k, (fn, _) in probes.items()}, repeat=repeat)
    rates = {k: probes[k][1] / times[k].median_s for k in probes}
    best = max(rates, key=rates.get)
    return Bandwidth(rates[best], best, rates)


def read_probe(x: Any) -> Callable[[], Any]:
    """A call that reads every byte of array `x` once, as fast as this machine reads memory.

    numpy: a BLAS dot of the first half of x's bytes with the second half (two streams, every
    core: the fastest of the host probes above); torch CUDA: a sum. Timed next to an op that
    reads the same array, it gives that op's bandwidth floor in the same moment, which matters
    on a shared machine whose bandwidth drifts by 1.5x from minute to minute.
    """
    if hasattr(x, "is_cuda") and x.is_cuda:
        return lambda: x.sum()
    flat = np.asarray(x).reshape(-1).view(np.float32)
    half = flat.size // 2
    return lambda: flat[:half] @ flat[half : 2 * half]


def device_memory_bandwidth(device: str, *, repeat: int = 5) -> Bandwidth:
    """Device memory bandwidth from a large torch copy (read + write bytes) on `device`."""
    import torch

    n = 4 * BANDWIDTH_PROBE_BYTES // 4
    a = torch.ones(n, dtype=torch.float32, device=device)
    out = torch.empty_like(a)
    times = time_side_by_side(
        {"copy": lambda: out.copy_(a), "sum": lambda: a.sum()},
        repeat=repeat,
        sync=torch.cuda.synchronize,
    )
    rates = {"copy": 2 * a.nbytes / times["copy"].median_s, "sum": a.nbytes / times["sum"].median_s}
    best = max(rates, key=rates.get)
    return Bandwidth(rates[best], best, rates)


def machine_header(extra: Sequence[str] = ()) -> str:
    """Lines naming the machine and software versions, then `extra` lines (dtypes, method...)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    lines = [
        f"machine: {cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, "
        f"{platform.system()} {platform.release()}",
        f"python {platform.python_version()}, numpy {np.__version__}",
    ]
    return "\n".join(lines + list(extra))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under headers, right-aligned, as a markdown-compatible table (no final newline)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.rjust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under headers, right-aligned, as a markdown-compatible table."""
    print(format_table(headers, rows))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: not measured
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
