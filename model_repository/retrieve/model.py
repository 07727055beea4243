"""Triton python backend: `retrieve`. Template, copied into every version folder; edit it here only.

Requests -> model_repository.serving.answer_requests (decode, check, Retriever) -> one response
per request in request order. Each user's live history (model_repository.live_history) is read
on every batch. Newer data-only versions are switched to between batches by a
watcher thread (model_repository.live_version), with no Triton reload. The user tower runs in
numpy from the version's own tables (only versions written before those call `user_tower`
through BLS); QUERY_TEXT is embedded by `text_encoder`, called through BLS.
"""

import freshrec_paths  # noqa: F401,I001 - first: puts the project on sys.path (see that file)

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repository import contract as c
from model_repository.live_history import LiveStoreReader
from model_repository.live_version import VersionWatcher, newest_good_version
from model_repository.serving import RequestError, Retriever, answer_requests
from model_repository.stub import bls_call, log_to_triton, responses


def _pack(answer):
    return pb_utils.InferenceResponse([
        pb_utils.Tensor(c.ITEM_IDS, answer.item_ids.reshape(1, -1)),
        pb_utils.Tensor(c.SCORES, answer.scores.reshape(1, -1)),
        pb_utils.Tensor(c.VERSION, np.array([[answer.version]], dtype=np.int64)),
    ])


class TritonPythonModel:
    def initialize(self, args):
        log_to_triton()
        model_dir = Path(args["model_repository"])
        self.live_history = LiveStoreReader(model_dir)
        first = newest_good_version(model_dir, at_most=int(args["model_version"]))
        self.watcher = VersionWatcher(model_dir, self._open(first), self._open).start()

    def _open(self, version_dir):
        retriever = Retriever(version_dir, self._tower, live_history=self.live_history)
        if retriever.tower_from_tables:  # a BLS call cannot run before initialize returns
            retriever.warm_up()
        return retriever

    def _tower(self, user_emb, history_emb):
        inputs = {c.USER_EMB: user_emb, c.HISTORY_EMB: history_emb}
        return bls_call(c.USER_TOWER, self.watcher.current.meta.user_tower_version, inputs, c.QUERY)

    def _encode(self, texts):
        inputs = {c.TEXT: np.array([[t.encode()] for t in texts], dtype=object)}
        version = self.watcher.current.meta.text_encoder_version or -1
        try:
            return bls_call(c.TEXT_ENCODER, version, inputs, c.TEXT_EMB, refusal_prefix=f"{c.TEXT} ")
        except RequestError as exc:
            raise RequestError(f"{c.QUERY_TEXT} rejected by {c.TEXT_ENCODER}: {exc}") from None

    def execute(self, requests):
        inputs = [{t.name(): t.as_numpy() for t in r.inputs()} for r in requests]
        outcomes = answer_requests(self.watcher.current, inputs, self._encode)
        return responses(outcomes, _pack, model=c.RETRIEVE)

    def finalize(self):
        self.watcher.stop()
        self.live_history.close()
