"""Triton python backend: `user_tower`, the exported ONNX tower run by onnxruntime.

Template, copied into every version folder. A batch of requests runs as one onnxruntime call.
"""

import freshrec_paths  # noqa: F401,I001 - first: puts the project on sys.path (see that file)

from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from model_repository import contract as c

ONNX_FILE = "model.onnx"


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_FILE
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # tiny MLP: threads cost more than they save
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        users = [pb_utils.get_input_tensor_by_name(r, c.USER_EMB).as_numpy() for r in requests]
        pools = [pb_utils.get_input_tensor_by_name(r, c.HISTORY_EMB).as_numpy() for r in requests]
        (query,) = self.session.run(
            [c.QUERY],
            {c.USER_EMB: np.concatenate(users).astype(np.float32),
             c.HISTORY_EMB: np.concatenate(pools).astype(np.float32)},
        )
        responses, start = [], 0
        for user in users:
            stop = start + user.shape[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(c.QUERY, query[start:stop])]))
            start = stop
        return responses
