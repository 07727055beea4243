"""score_topk on the CPU: chunked BLAS scores with a running top-K per query (numpy only).

The path for numpy arrays and CPU tensors that the onnxruntime path does not take: calls too
large to hold their (queries x items) score matrix (over `_score_topk_onnx.ORT_MAX_SCORES`
scores), calls with an item_mask, fp16 tables, answers in which onnxruntime ranked a NaN,
hosts without onnxruntime, and every CPU tensor (numpy's OpenBLAS beat torch's CPU matmul on
this path, bench/kernels.py, so tensors are viewed as numpy arrays). It never holds more than a
(queries x chunk) block of scores, whatever the table size. Imports numpy only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kernels._launch import cpu_chunk_rows
from kernels._score_topk_keys import EMPTY_KEY, decode_keys, encode_keys


def score_topk_cpu(
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
    from thresholds taken on a sample of the table (`sampled_threshold`) and skip the short
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
    threshold = sampled_threshold(queries, read_items, n_items, k_out, masked, excluded)
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
            pending_keys.append(encode_keys(scores[rows, cols], cols + c0))
            n_pending += hits.size
        c0 = c1
        if n_pending >= merge_at or (c0 >= n_items and n_pending):
            _merge_candidates(
                running, threshold, np.concatenate(pending_rows), np.concatenate(pending_keys)
            )
            pending_rows, pending_keys, n_pending = [], [], 0
    best_first = np.sort(running, axis=1)[:, ::-1]
    return decode_keys(np.ascontiguousarray(best_first))


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


def sampled_threshold(
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
    worst_scores, _ = decode_keys(worst.copy())
    # A query's threshold stays -inf until it holds k_out real candidates.
    threshold[active] = np.where(worst == EMPTY_KEY, threshold[active], worst_scores)
