"""Comparison helpers for kernel tests: every failure says how many elements differ and where.

`assert_close` compares two arrays elementwise with (atol, rtol); `assert_topk_match` compares a
top-K result with the reference tie-aware, the way faiss' `check_ref_knn_with_draws` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SHOW_WORST = 5


def as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; float() also covers bf16, which numpy lacks
        x = x.detach().cpu()
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def assert_close(got: Any, want: Any, *, atol: float, rtol: float, name: str = "result") -> None:
    """Elementwise |got - want| <= atol + rtol * |want|; NaN and inf must agree exactly.

    On failure the message gives the count of mismatches and the worst few with index, got,
    want, absolute and relative error.
    """
    got, want = as_numpy(got).astype(np.float64), as_numpy(want).astype(np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape} != expected {want.shape}")
    both_nan = np.isnan(got) & np.isnan(want)
    same_inf = np.isinf(got) & np.isinf(want) & (np.sign(got) == np.sign(want))
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want)
        ok = (err <= atol + rtol * np.abs(want)) | both_nan | same_inf
    if ok.all():
        return
    bad = np.argwhere(~ok)
    bad_err = np.nan_to_num(err[~ok], nan=np.inf)
    lines = [
        f"{name}: {len(bad)} of {got.size} elements differ (atol={atol}, rtol={rtol}); worst:"
    ]
    for i in np.argsort(-bad_err, kind="stable")[:SHOW_WORST]:
        idx = tuple(int(v) for v in bad[i])
        g, w = got[idx], want[idx]
        rel = abs(g - w) / abs(w) if w not in (0, np.inf, -np.inf) else float("nan")
        lines.append(f"  at {idx}: got {g!r}, want {w!r}, abs err {abs(g - w):.3g}, rel {rel:.3g}")
    raise AssertionError("\n".join(lines))


def assert_topk_match(
    got_scores: Any,
    got_ids: Any,
    want_scores: Any,
    want_ids: Any,
    all_scores: Any,
    *,
    atol: float,
    rtol: float,
) -> None:
    """Top-K agreement that survives ties (STYLE rule 8).

    Scores must match with tolerance. Ids are compared per run of reference scores equal within
    tolerance: each run must hold the same *set* of ids, except the last run of a row, which K
    may cut anywhere: there every returned id must only score like the boundary. Rows padded
    with id -1 must be padded at the same places. `all_scores` is the reference (B, N) score
    matrix with -inf for ruled-out items, used to score ids the reference did not return.
    """
    got_scores, want_scores = as_numpy(got_scores), as_numpy(want_scores)
    got_ids, want_ids = as_numpy(got_ids), as_numpy(want_ids)
    all_scores = as_numpy(all_scores).astype(np.float64)
    assert_close(got_scores, want_scores, atol=atol, rtol=rtol, name="top-k scores")
    if got_ids.shape != want_ids.shape:
        raise AssertionError(f"top-k ids: shape {got_ids.shape} != expected {want_ids.shape}")
    problems = []
    for row in range(got_ids.shape[0]):
        problems += [f"row {row}: {p}" for p in _row_problems(
            got_ids[row], want_ids[row], want_scores[row].astype(np.float64), all_scores[row],
            atol, rtol,
        )]  # fmt: skip
    if problems:
        shown = "\n  ".join(problems[:SHOW_WORST])
        raise AssertionError(f"top-k ids: {len(problems)} problems; first:\n  {shown}")


def _row_problems(got, want, want_scores, row_scores, atol, rtol) -> list[str]:
    problems = []
    if not np.array_equal(got == -1, want == -1):
        problems.append(f"padding (id -1) at {np.flatnonzero(got == -1)}, want at "
                        f"{np.flatnonzero(want == -1)}")  # fmt: skip
        return problems
    valid = got != -1
    real = got[valid]
    if len(np.unique(real)) != len(real):
        problems.append(f"duplicate ids in {real.tolist()}")
    if np.any(np.isneginf(row_scores[real])):
        problems.append(f"returned ruled-out ids {real[np.isneginf(row_scores[real])].tolist()}")
    if problems or np.array_equal(got, want):
        return problems
    n = int(valid.sum())
    start = 0
    while start < n:  # runs of equal (within tolerance) reference scores
        end = start + 1
        while end < n and abs(want_scores[end] - want_scores[start]) <= atol + rtol * abs(
            want_scores[start]
        ):
            end += 1
        if end < n:
            if set(got[start:end].tolist()) != set(want[start:end].tolist()):
                problems.append(
                    f"positions {start}:{end} (score ~{want_scores[start]:.6g}) hold ids "
                    f"{sorted(got[start:end].tolist())}, want {sorted(want[start:end].tolist())}"
                )
        else:  # the last run, which k may cut: returned ids must score like the boundary
            boundary = want_scores[start]
            far = [
                int(i)
                for i in got[start:end]
                if not abs(row_scores[i] - boundary) <= atol + rtol * abs(boundary)
            ]
            if far:
                problems.append(f"ids {far} in the last tie run do not score ~{boundary:.6g}")
        start = end
    return problems
