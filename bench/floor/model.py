"""Triton python backend: `floor`, the empty model bench.e2e measures beside `recommend`.

Same inputs and outputs as `recommend` (its config is `configs.retrieve_config()` renamed); it
answers every request with the same constant top-K and does no per-request work beyond packing,
so its throughput is what tritonserver and the python backend cost by themselves on this host.
"""

import freshrec_paths  # noqa: F401,I001 - first: puts the project on sys.path (see that file)

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repository import contract as c


class TritonPythonModel:
    def initialize(self, args):
        version = int(args["model_version"])
        self.item_ids = np.arange(c.DEFAULT_K, dtype=np.int64).reshape(1, -1)
        self.scores = np.zeros((1, c.DEFAULT_K), dtype=np.float32)
        self.version = np.array([[version]], dtype=np.int64)

    def execute(self, requests):
        # a fresh response per request: the python backend forbids reusing one
        return [pb_utils.InferenceResponse([
            pb_utils.Tensor(c.ITEM_IDS, self.item_ids),
            pb_utils.Tensor(c.SCORES, self.scores),
            pb_utils.Tensor(c.VERSION, self.version),
        ]) for _ in requests]
