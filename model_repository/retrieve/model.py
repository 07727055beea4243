"""Triton python backend: `retrieve`. Template, copied into every version folder; edit it here only.

Request -> Query -> Retriever (model_repository.serving) -> outputs, one response per request in
request order. The user tower runs in numpy from the version's own tower tables; only a version
written before those existed calls the `user_tower` model through BLS. QUERY_TEXT is embedded by
the `text_encoder` model, called through BLS.
"""

import freshrec_paths  # noqa: F401,I001 - first: puts the project on sys.path (see that file)

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repository import contract as c
from model_repository.serving import RequestError, Retriever, decode_query, embed_texts


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.logger = pb_utils.Logger
        self.retriever = Retriever(version_dir, self._tower)
        if not self.retriever.tower_from_tables:
            self.logger.log_warn(
                f"retrieve version {args['model_version']} has no tower tables: the user tower "
                "runs in the user_tower model through BLS, which costs more per request; "
                "rebuild with `freshrec build` to serve it from the version's own tables")
        self.tower_version = int(self.retriever.manifest.meta.get("user_tower_version", -1))
        self.text_version = int(self.retriever.manifest.meta.get("text_encoder_version", -1))
        if self.retriever.tower_from_tables:  # a BLS call cannot run before initialize returns
            self.retriever.warm_up()

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

    def _encode(self, texts):
        request = pb_utils.InferenceRequest(
            model_name=c.TEXT_ENCODER,
            model_version=self.text_version,
            requested_output_names=[c.TEXT_EMB],
            inputs=[pb_utils.Tensor(c.TEXT, np.array([[t.encode()] for t in texts], dtype=object))],
        )
        response = request.exec()
        if response.has_error():
            error = response.error()
            # Triton 2.51 hands a BLS caller the callee's error without its INVALID_ARG code (an
            # integration test saw it fail), so a refusal is recognised by its message, which names TEXT.
            if error.message().startswith(f"{c.TEXT} "):
                raise RequestError(f"{c.QUERY_TEXT} rejected by {c.TEXT_ENCODER}: {error.message()}")
            raise RuntimeError(f"text_encoder (code {error.code()}): {error.message()}")
        return pb_utils.get_output_tensor_by_name(response, c.TEXT_EMB).as_numpy()

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
            text_emb = embed_texts(queries, self._encode)
            refused = [i for i, e in enumerate(text_emb) if isinstance(e, RequestError)]
            for i in refused:
                responses[slots[i]] = _error(str(text_emb[i]), pb_utils.TritonError.INVALID_ARG)
            refused_set = set(refused)
            keep = [i for i in range(len(queries)) if i not in refused_set]
            queries, slots = [queries[i] for i in keep], [slots[i] for i in keep]
            answers = self.retriever.answer(queries, [text_emb[i] for i in keep])
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
