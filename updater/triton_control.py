"""The updater's side of Triton: explicit load_model, which version serves, the probe, and
encoding item titles with the served `text_encoder`."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from model_repository import contract as c

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
PROBE_DEADLINE_S = 5.0


class TritonError(RuntimeError):
    """Triton refused or failed a control or probe call; the message says which."""


class TextRefused(TritonError):
    """text_encoder refused a text as bad input (too many word pieces, ...); the message says why."""


class TritonControl:
    """Thread-safe wrapper of one tritonclient gRPC connection."""

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 control_headers: dict[str, str] | None = None, tls_ca=None):
        """``control_headers``: sent with the model-repository calls (a Triton started with a
        token answers those only with them; updater.access); ``tls_ca``: the CA PEM to trust
        when Triton's gRPC port serves TLS."""
        self.url = url
        self.timeout_s = timeout_s
        self.control_headers = dict(control_headers or {}) or None
        self._lock = threading.Lock()
        self._client = (grpcclient.InferenceServerClient(url) if tls_ca is None else
                        grpcclient.InferenceServerClient(url, ssl=True,
                                                         root_certificates=str(tls_ca)))

    def load(self, model: str) -> None:
        """load_model: Triton rescans the model folder and serves its newest version (policy
        latest 1); the old version keeps serving until the new one is ready."""
        with self._lock:
            try:
                self._client.load_model(model, headers=self.control_headers,
                                        client_timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - tritonclient raises several types
                raise TritonError(f"load_model({model}) failed: {exc}") from exc

    def is_live(self) -> bool:
        with self._lock:
            try:
                return bool(self._client.is_server_live(client_timeout=5.0))
            except Exception:  # noqa: BLE001 - unreachable is the answer
                return False

    def serving_versions(self, models: tuple[str, ...]) -> dict[str, int]:
        """model -> the newest READY version (-1 when none is ready or Triton does not answer)."""
        found = {m: -1 for m in models}
        with self._lock:
            try:
                index = self._client.get_model_repository_index(headers=self.control_headers)
            except Exception as exc:  # noqa: BLE001
                log.warning("repository index from %s failed: %s", self.url, exc)
                return found
        for entry in index.models:
            if entry.name in found and entry.state == "READY" and entry.version.isdigit():
                found[entry.name] = max(found[entry.name], int(entry.version))
        return found

    def answering_version(self, user_id: int) -> int:
        """The retrieve version that answers a real recommend request now (its VERSION output).
        Raises TritonError when the request fails."""
        inputs = [grpcclient.InferInput(c.USER_ID, [1, 1], "INT64"),
                  grpcclient.InferInput(c.K, [1, 1], "INT32")]
        inputs[0].set_data_from_numpy(np.array([[user_id]], dtype=np.int64))
        inputs[1].set_data_from_numpy(np.array([[1]], dtype=np.int32))
        with self._lock:
            try:
                result = self._client.infer(c.RECOMMEND, inputs, client_timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001
                raise TritonError(f"recommend failed: {exc}") from exc
        return int(result.as_numpy(c.VERSION).reshape(-1)[0])

    def probe(self, version: int, user_id: int, *, deadline_s: float = PROBE_DEADLINE_S) -> None:
        """A real recommend request must be answered by `version`, within ``deadline_s``: the
        running retrieve switches to a data-only version within milliseconds, and after a
        load_model the ensemble may route to the old one briefly. Raises TritonError otherwise."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                answered = self.answering_version(user_id)
            except TritonError as exc:
                raise TritonError(f"probe of version {version} failed: {exc}") from exc
            if answered == version:
                return
            if time.monotonic() > deadline:
                raise TritonError(f"probe: version {answered} answered, expected {version}")
            time.sleep(0.002)

    def encode(self, texts: list[str], *, version: int = -1) -> np.ndarray:
        """(len(texts), TEXT_DIM) float32 embeddings from `text_encoder` (one request for all of
        them; the caller keeps batches within MAX_BATCH_SIZE). Raises TextRefused when the model
        refuses the input (its message names TEXT), TritonError for anything else."""
        text = grpcclient.InferInput(c.TEXT, [len(texts), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        with self._lock:
            try:
                result = self._client.infer(c.TEXT_ENCODER, [text], model_version=str(version)
                                            if version >= 0 else "", client_timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001
                message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
                if message.startswith(f"{c.TEXT} "):
                    raise TextRefused(message) from exc
                raise TritonError(f"{c.TEXT_ENCODER} failed: {exc}") from exc
        return np.asarray(result.as_numpy(c.TEXT_EMB), dtype=np.float32)

    def close(self) -> None:
        self._client.close()
