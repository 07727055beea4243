"""Triton python backend: `user_tower`, the exported ONNX tower run by onnxruntime.

Template, copied into every version folder. A batch of requests runs as one onnxruntime call.
The inputs are the ONNX graph's own (a pooled or a sequence tower: model_repository.contract).
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
        self.input_names = [i.name for i in self.session.get_inputs()]

    def execute(self, requests):
        inputs = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                  for name in self.input_names}
        (query,) = self.session.run(
            [c.QUERY],
            {name: np.concatenate(parts).astype(np.float32) for name, parts in inputs.items()},
        )
        responses, start = [], 0
        for user in inputs[c.USER_EMB]:
            stop = start + user.shape[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(c.QUERY, query[start:stop])]))
            start = stop
        return responses
