"""score_topk through onnxruntime: one graph, Gemm(queries, items, transB=1) -> TopK.

The path for serving-sized numpy calls: fp32 items, no item_mask, and a (B x N) score matrix of
at most ORT_MAX_SCORES scores. Measured on the 2-core AMD EPYC development machine, one thread,
N=1e5, d=32, K=10: 360 / 1650 / 5510 / 10840 us at B=1 / 8 / 32 / 64 against 660 / 3440 / 7650 /
12790 us for the chunked numpy path (`_score_topk_cpu`): MLAS's sgemm runs K=d=32 products about
2x faster than OpenBLAS's (~20 GFLOP/s), and TopK is one pass. Larger calls keep the chunked
path, which never holds the whole score matrix. Without onnxruntime installed every call goes
there too.

Importing this module imports numpy only; onnxruntime is imported on the first call.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# numpy fp32 calls whose (B x N) score matrix stays under this many scores (32 MiB) run here.
ORT_MAX_SCORES = 2**23
# `ort_topk_graph()` serialised (257 bytes), shipped as package data so that a serving process
# pays for importing onnxruntime (~30 ms) but not onnx (~60 ms more) on its first call after
# each reload; tests/kernels/test_score_topk.py checks that the two agree.
ORT_TOPK_GRAPH_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "score_topk.onnx")
_ort_session: Any = None  # None: not built yet; False: onnxruntime is not installed


def ort_topk_graph() -> Any:
    """The onnx ModelProto the onnxruntime path runs: Gemm(queries, items, transB=1) -> TopK."""
    from onnx import TensorProto, helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["queries", "items"], ["scores"], transB=1),
         helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_ids"], axis=1)],
        "score_topk",
        [helper.make_tensor_value_info("queries", f32, ["B", "d"]),
         helper.make_tensor_value_info("items", f32, ["N", "d"]),
         helper.make_tensor_value_info("k", i64, [1])],
        [helper.make_tensor_value_info("top_scores", f32, ["B", "K"]),
         helper.make_tensor_value_info("top_ids", i64, ["B", "K"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_topk_session() -> Any:
    global _ort_session
    if _ort_session is None:
        try:
            import onnxruntime as ort
        except ImportError:
            _ort_session = False
            return _ort_session
        options = ort.SessionOptions()
        # a serving process sets one thread per model instance (OMP_NUM_THREADS); 0 = all cores
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        options.inter_op_num_threads = 1
        _ort_session = ort.InferenceSession(ORT_TOPK_GRAPH_PATH, options,
                                            providers=["CPUExecutionProvider"])
    return _ort_session


def score_topk_ort(queries: np.ndarray, items: np.ndarray, k_out: int,
                   exclude: tuple[np.ndarray, np.ndarray] | None) -> tuple[Any, Any] | None:
    """The top k_out through onnxruntime, or None when this path cannot give the exact answer.

    ONNX TopK orders equal scores by lower index, as score_topk does. Exclusions are dropped
    afterwards: each query asks for k_out plus the longest exclusion list, so at least k_out
    candidates survive wherever that many servable items exist. -inf scores are dropped the same
    way; TopK ranks NaN above everything, so a NaN in the answer hands the call to the numpy path.
    """
    session = _ort_topk_session()
    if session is False:
        return None
    n_queries, n_items = queries.shape[0], items.shape[0]
    longest = 0
    if exclude is not None and exclude[1].size:
        longest = int(np.diff(exclude[0]).max())
    k_take = min(n_items, k_out + longest)
    top_scores, top_ids = session.run(
        None, {"queries": queries, "items": items, "k": np.array([k_take], dtype=np.int64)})
    if np.isnan(top_scores).any():
        return None
    keep = top_scores > -np.inf
    if longest:
        offsets, ids = exclude
        owners = np.repeat(np.arange(n_queries, dtype=np.int64), np.diff(offsets))
        pairs = np.sort(owners * n_items + ids)  # (query, item) as one int64 each
        got = np.arange(n_queries, dtype=np.int64)[:, None] * n_items + top_ids
        # a sorted search, not np.isin: isin cost ~90 us per call at these sizes
        found = pairs[np.minimum(np.searchsorted(pairs, got), pairs.size - 1)]
        keep &= found != got
    if not keep.all():
        order = np.argsort(~keep, axis=1, kind="stable")  # kept ones first, in rank order
        top_ids = np.take_along_axis(top_ids, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        keep = np.take_along_axis(keep, order, axis=1)
    top_ids, top_scores, keep = top_ids[:, :k_out], top_scores[:, :k_out], keep[:, :k_out]
    top_scores = np.where(top_scores == 0, np.float32(0), top_scores)  # -0.0 comes back as +0.0
    return (np.where(keep, top_scores, np.float32(-np.inf)).astype(np.float32),
            np.where(keep, top_ids, -1).astype(np.int64))
