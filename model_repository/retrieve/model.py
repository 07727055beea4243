"""Triton python backend: `retrieve`. Template, copied into every version folder; edit it here only.

Request -> Query -> Retriever (model_repository.serving) -> outputs, one response per request in
request order. The user tower runs in the `user_tower` model, called through BLS.
"""

import os
import site
import sys

# The stub ignores PYTHONPATH; `freshrec serve` puts the project's paths in FRESHREC_PYTHONPATH.
for _path in reversed(os.environ.get("FRESHREC_PYTHONPATH", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        site.addsitedir(_path)
        sys.path.remove(_path)
        sys.path.insert(0, _path)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from model_repository import contract as c  # noqa: E402
from model_repository.serving import RequestError, Retriever, decode_query  # noqa: E402


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.logger = pb_utils.Logger
        self.retriever = Retriever(version_dir, self._tower)
        self.tower_version = int(self.retriever.manifest.meta.get("user_tower_version", -1))

    def _tower(self, user_emb, history_emb):
        request = pb_utils.InferenceRequest(
            model_name=c.USER_TOWER,
            model_version=self.tower_version,
            requested_output_names=[c.QUERY],
            inputs=[pb_utils.Tensor(c.USER_EMB, user_emb), pb_utils.Tensor(c.HISTORY_EMB, history_emb)],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"user_tower: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, c.QUERY).as_numpy()

    def execute(self, requests):
        responses = [None] * len(requests)
        queries, slots = [], []
        for slot, request in enumerate(requests):
            try:
                query = decode_query({t.name(): t.as_numpy() for t in request.inputs()})
                self.retriever.check(query)
            except RequestError as exc:
                responses[slot] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
                continue
            queries.append(query)
            slots.append(slot)
        try:
            answers = self.retriever.answer(queries)
        except Exception as exc:  # noqa: BLE001 - every failure must become a response
            self.logger.log_error(f"retrieve failed: {exc!r}")
            answers = [None] * len(queries)
        for slot, answer in zip(slots, answers):
            if answer is None:
                responses[slot] = _error("internal error", pb_utils.TritonError.INTERNAL)
                continue
            responses[slot] = pb_utils.InferenceResponse([
                pb_utils.Tensor(c.ITEM_IDS, answer.item_ids.reshape(1, -1)),
                pb_utils.Tensor(c.SCORES, answer.scores.reshape(1, -1)),
                pb_utils.Tensor(c.VERSION, np.array([[answer.version]], dtype=np.int64)),
            ])
        return responses
