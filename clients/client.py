"""A small client for freshrec's `recommend` model over Triton's gRPC (KServe v2) protocol."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from clients.closing import ClosedOnExit
from clients.updater_client import FeedbackResult, UpdaterClient
from model_repository import contract as c
from model_repository.canary import ARM_CODES, CANARY

ARMS = {code: arm for arm, code in ARM_CODES.items()}

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Recommendation:
    item_ids: list[int]
    scores: list[float]
    version: int
    arm: str | None = None  # "control" or "canary" (None: a repository built before canaries)

    def to_json(self) -> dict:
        return {
            "version": self.version,
            **({"arm": self.arm} if self.arm == CANARY else {}),
            "items": [{"item_id": i, "score": round(s, 6)} for i, s in zip(self.item_ids, self.scores)],
        }


def triton_client(url: str, *, tls_ca=None) -> grpcclient.InferenceServerClient:
    """A tritonclient gRPC client, over TLS trusting ``tls_ca`` when given."""
    if tls_ca is None:
        return grpcclient.InferenceServerClient(url)
    return grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(tls_ca))


def _tensor(name: str, values: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(values.shape), np_to_triton_dtype(values.dtype))
    tensor.set_data_from_numpy(values)
    return tensor


def recommend_inputs(
    user_id: int | None,
    *,
    k: int | None = None,
    history: Sequence[int] | None = None,
    exclude: Sequence[int] | None = None,
    exclude_seen: bool = False,
    text: str | bytes | None = None,
) -> list[grpcclient.InferInput]:
    """The request tensors for one recommend call (batch dimension of 1). ``user_id`` may be None
    only with ``text`` (text search); ``text`` as bytes is sent as given (UTF-8 expected).

    HISTORY, EXCLUDE and EXCLUDE_SEEN are always sent (empty / False when not asked for): Triton's
    dynamic batcher only batches requests that carry the same inputs, and bench.e2e measured
    1.7-1.8x the throughput at 8 and 32 users with every call padded this way."""
    inputs = []
    if user_id is not None:
        inputs.append(_tensor(c.USER_ID, np.array([[user_id]], dtype=np.int64)))
    if text is not None:
        raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        inputs.append(_tensor(c.QUERY_TEXT, np.array([[raw]], dtype=np.object_)))
    if k is not None:
        inputs.append(_tensor(c.K, np.array([[k]], dtype=np.int32)))
    for name, ids in ((c.HISTORY, history), (c.EXCLUDE, exclude)):
        ids = np.asarray([] if ids is None else ids, dtype=np.int64)
        inputs.append(_tensor(name, ids.reshape(1, -1)))
    inputs.append(_tensor(c.EXCLUDE_SEEN, np.array([[exclude_seen]], dtype=np.bool_)))
    return inputs


class Client(ClosedOnExit):
    """`Client(url).recommend(user_id, k=10, history=None, exclude=None, text=None)`; a context
    manager. `Client(url).recommend(None, text="space opera")` is text search."""

    def __init__(self, url: str = c.DEFAULT_TRITON_URL, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 model: str = c.RECOMMEND, updater_url: str = c.DEFAULT_UPDATER_URL,
                 tls_ca: str | None = None):
        """``tls_ca``: a PEM file of the CA to trust, for a server whose gRPC port serves TLS
        (`freshrec serve --tls-cert`)."""
        self.url = url
        self.timeout_s = timeout_s
        self.model = model
        self.updater_url = updater_url
        self._grpc = triton_client(url, tls_ca=tls_ca)
        self._updater: UpdaterClient | None = None

    def feedback(self, user_id: int, item_id: int, kind: str = "click", **options) -> FeedbackResult:
        """Send one feedback event to the updater sidecar at ``updater_url``; the options are
        UpdaterClient.feedback's (value, event_id, timestamp). Feedback does not go through Triton:
        the updater logs it durably and publishes a version that includes it."""
        if self._updater is None:
            self._updater = UpdaterClient(self.updater_url, timeout_s=self.timeout_s)
        return self._updater.feedback(user_id, item_id, kind, **options)

    def recommend(
        self,
        user_id: int | None,
        k: int = c.DEFAULT_K,
        history: Sequence[int] | None = None,
        exclude: Sequence[int] | None = None,
        *,
        exclude_seen: bool = False,
        text: str | bytes | None = None,
    ) -> Recommendation:
        """Top-k items for a user, best first; with ``text``, blended with (or, for user None,
        searched by) that text. Raises tritonclient's InferenceServerException (status
        INVALID_ARGUMENT naming the field) on bad input."""
        result = self._grpc.infer(
            self.model,
            recommend_inputs(user_id, k=k, history=history, exclude=exclude,
                             exclude_seen=exclude_seen, text=text),
            client_timeout=self.timeout_s,  # every output: ARM only where the model has it
        )
        arm = result.as_numpy(c.ARM)
        return Recommendation(
            item_ids=[int(x) for x in result.as_numpy(c.ITEM_IDS).reshape(-1)],
            scores=[float(x) for x in result.as_numpy(c.SCORES).reshape(-1)],
            version=int(result.as_numpy(c.VERSION).reshape(-1)[0]),
            arm=None if arm is None else ARMS[int(arm.reshape(-1)[0])],
        )

    def is_ready(self) -> bool:
        return bool(self._grpc.is_server_ready() and self._grpc.is_model_ready(self.model))

    def close(self) -> None:
        self._grpc.close()
        if self._updater is not None:
            self._updater.close()
