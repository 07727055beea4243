"""Triton python backend: `text_encoder`, UTF-8 TEXT -> word pieces -> ONNX MiniLM -> TEXT_EMB.

Template, copied into every version folder; edit it here only. Tokenising, the onnxruntime
session and the batch logic live in model_repository.text_encoding.
"""

import freshrec_paths  # noqa: F401,I001 - first: puts the project on sys.path (see that file)

from pathlib import Path

import triton_python_backend_utils as pb_utils

from model_repository import contract as c
from model_repository.stub import responses
from model_repository.text_encoding import TextEncoderRuntime, encode_requests


def _pack(emb):
    return pb_utils.InferenceResponse([pb_utils.Tensor(c.TEXT_EMB, emb)])


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.runtime = TextEncoderRuntime.from_version(version_dir)
        self.runtime.encode(["warm up"])  # the first onnxruntime call allocates; not a request's

    def execute(self, requests):
        texts = [pb_utils.get_input_tensor_by_name(r, c.TEXT).as_numpy() for r in requests]
        return responses(encode_requests(self.runtime, texts), _pack, model=c.TEXT_ENCODER)
