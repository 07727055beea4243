"""Triton python backend: `text_encoder`, UTF-8 TEXT -> word pieces -> ONNX MiniLM -> TEXT_EMB.

Template, copied into every version folder; edit it here only. Tokenising and the onnxruntime
session live in model_repository.text_encoding; a batch of valid texts runs as one session call.
"""

import freshrec_paths  # noqa: F401,I001 - first: puts the project on sys.path (see that file)

from pathlib import Path

import triton_python_backend_utils as pb_utils

from model_repository import contract as c
from model_repository.serving import RequestError, decode_text
from model_repository.text_encoding import TextEncoderRuntime


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.runtime = TextEncoderRuntime.from_version(version_dir)
        self.runtime.encode(["warm up"])  # the first onnxruntime call allocates; not a request's

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, counts, slots = [], [], []
        for slot, request in enumerate(requests):
            try:
                raw = pb_utils.get_input_tensor_by_name(request, c.TEXT).as_numpy().reshape(-1)
                mine = [decode_text(value, c.TEXT) for value in raw]
                self.runtime.tokenize(mine)  # the word-piece limit, per request
            except RequestError as exc:
                responses[slot] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
                continue
            texts.extend(mine)
            counts.append(len(mine))
            slots.append(slot)
        try:
            emb = self.runtime.encode(texts)
        except Exception as exc:  # noqa: BLE001 - every failure must become a response
            pb_utils.Logger.log_error(f"text_encoder failed: {exc!r}")
            for slot in slots:
                responses[slot] = _error("internal error", pb_utils.TritonError.INTERNAL)
            return responses
        start = 0
        for slot, count in zip(slots, counts):
            responses[slot] = pb_utils.InferenceResponse(
                [pb_utils.Tensor(c.TEXT_EMB, emb[start:start + count])])
            start += count
        return responses
