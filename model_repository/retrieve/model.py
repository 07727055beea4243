"""Triton python backend: `retrieve`. Template, copied into every version folder; edit it here only.

Requests -> model_repository.serving.answer_requests (decode, check, Retriever) -> one response
per request in request order. Each user's live history (model_repository.live_history) is read
on every batch. Newer data-only versions are switched to between batches by a
watcher thread (model_repository.live_version), with no Triton reload. The user tower runs in
numpy from the version's own tables (only versions written before those call `user_tower`
through BLS); QUERY_TEXT is embedded by `text_encoder`, called through BLS.
"""

import freshrec_paths  # noqa: F401,I001 - first: puts the project on sys.path (see that file)

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from model_repository import contract as c
from model_repository.canary import ARM_CODES, CANARY, CONTROL
from model_repository.impressions import ImpressionWriter, records
from model_repository.live_history import LiveStoreReader
from model_repository.live_version import VersionWatcher, newest_good_version
from model_repository.serving import Answer, RequestError, Retriever, answer_requests
from model_repository.stub import RetrieveMetrics, bls_call, log_to_triton, responses


def _packer(with_arm: bool):
    """Answer -> response; ARM only where the config declares it (repositories built before
    canaries have none)."""
    def pack(answer):
        tensors = [pb_utils.Tensor(c.ITEM_IDS, answer.item_ids.reshape(1, -1)),
                   pb_utils.Tensor(c.SCORES, answer.scores.reshape(1, -1)),
                   pb_utils.Tensor(c.VERSION, np.array([[answer.version]], dtype=np.int64))]
        if with_arm:
            arm = _arm(answer, canary_versions)
            tensors.append(pb_utils.Tensor(c.ARM, np.array([[arm]], dtype=np.int32)))
        return pb_utils.InferenceResponse(tensors)

    canary_versions = set()
    return pack, canary_versions


def _arm(answer, canary_versions) -> int:
    return ARM_CODES[CANARY if answer.version in canary_versions else CONTROL]


def _user_id(inputs):
    """A request's USER_ID, or None when it has none (a text search)."""
    values = inputs.get(c.USER_ID)
    return int(values.reshape(-1)[0]) if values is not None and values.size else None


class TritonPythonModel:
    def initialize(self, args):
        log_to_triton()
        model_dir = Path(args["model_repository"])
        self.live_history = LiveStoreReader(model_dir)
        outputs = {o["name"] for o in json.loads(args["model_config"]).get("output", [])}
        self._pack, self._canary_versions = _packer(c.ARM in outputs)
        self.impressions = ImpressionWriter(model_dir)
        self.metrics = RetrieveMetrics(c.RETRIEVE)
        self.part_seconds: dict[str, float] = {}  # the batch's, filled by its Retrievers
        # switch times, appended by the watcher thread and observed by execute: metrics are
        # only touched from the thread that runs execute
        self._switches: list[float] = []
        first = newest_good_version(model_dir, at_most=int(args["model_version"]))
        self.watcher = VersionWatcher(model_dir, self._open(first), self._open,
                                      on_switch=self._switches.append).start()

    def _open(self, version_dir):
        holder = []  # the Retriever, for its own meta's user_tower / text_encoder versions
        retriever = Retriever(version_dir, lambda u, h: self._tower(holder[0], u, h),
                              live_history=self.live_history)
        holder.append(retriever)
        if retriever.tower_from_tables:  # a BLS call cannot run before initialize returns
            retriever.warm_up()
        # timed from here on: the watcher thread's warm-up is not a batch's (and must not
        # touch the dict execute reads)
        retriever.part_seconds = self.part_seconds
        return retriever

    @staticmethod
    def _tower(retriever, user_emb, history_emb):
        inputs = {c.USER_EMB: user_emb, c.HISTORY_EMB: history_emb}
        return bls_call(c.USER_TOWER, retriever.meta.user_tower_version, inputs, c.QUERY)

    @staticmethod
    def _encoder(retriever):
        def encode(texts):
            inputs = {c.TEXT: np.array([[t.encode()] for t in texts], dtype=object)}
            version = retriever.meta.text_encoder_version or -1
            try:
                return bls_call(c.TEXT_ENCODER, version, inputs, c.TEXT_EMB,
                                refusal_prefix=f"{c.TEXT} ")
            except RequestError as exc:
                raise RequestError(f"{c.QUERY_TEXT} rejected by {c.TEXT_ENCODER}: {exc}") from None
        return encode

    def execute(self, requests):
        started = time.perf_counter()
        self.part_seconds.clear()
        inputs = [{t.name(): t.as_numpy() for t in r.inputs()} for r in requests]
        control, canary = self.watcher.current, self.watcher.canary
        if canary is None:
            outcomes = answer_requests(control, inputs, self._encoder(control))
        else:  # each request from its user's arm; a request with no user id is the control's
            split, retriever = canary
            self._canary_versions.add(retriever.version)
            users = [_user_id(one) for one in inputs]
            in_canary = split.in_canary([u if u is not None else 0 for u in users])
            outcomes = [None] * len(inputs)
            for arm_retriever, wanted in ((control, False), (retriever, True)):
                slots = [i for i, u in enumerate(users)
                         if u is not None and bool(in_canary[i]) == wanted
                         or u is None and not wanted]
                if slots:
                    answered = answer_requests(arm_retriever, [inputs[i] for i in slots],
                                               self._encoder(arm_retriever))
                    for i, outcome in zip(slots, answered):
                        outcomes[i] = outcome
        self._record(inputs, outcomes)
        replies = responses(outcomes, self._pack, model=c.RETRIEVE)
        self.metrics.executed(len(requests), time.perf_counter() - started, self.part_seconds)
        while self._switches:
            self.metrics.switched(self._switches.pop())
        return replies

    def _record(self, inputs, outcomes):
        """Each answer to a request naming a user, as an impression (model_repository.impressions);
        before the responses go, so an impression is on disk before its user can act on it."""
        shown = [(user, outcome) for user, outcome in zip(map(_user_id, inputs), outcomes)
                 if user is not None and isinstance(outcome, Answer)]
        if shown:
            now = time.time()
            self.impressions.write(records(
                [now] * len(shown), [u for u, _ in shown], [a.version for _, a in shown],
                [_arm(a, self._canary_versions) for _, a in shown],
                [a.item_ids for _, a in shown]))

    def finalize(self):
        self.impressions.close()
        self.watcher.stop()
        self.live_history.close()
