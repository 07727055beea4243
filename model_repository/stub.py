"""Python-backend glue for the model.py templates (imported only inside the stub): outcomes ->
responses, and BLS calls to other models.

One response per request, in request order (python_backend's contract): a result is packed by
the model's own ``pack``; a RequestError becomes INVALID_ARG with its message, which names the
field (gRPC clients see INVALID_ARGUMENT); any other exception becomes INTERNAL, and its
traceback goes to the server log once per distinct exception, since one failure of a batch is
every request's outcome.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

import triton_python_backend_utils as pb_utils

from model_repository.serving import RequestError


def error_response(message: str, code) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def responses(outcomes: list, pack: Callable, *, model: str) -> list:
    """``outcomes``: per request a result or an exception (see serving.answer_requests)."""
    logged: set[int] = set()
    out = []
    for outcome in outcomes:
        if isinstance(outcome, RequestError):
            out.append(error_response(str(outcome), pb_utils.TritonError.INVALID_ARG))
        elif isinstance(outcome, Exception):
            if id(outcome) not in logged:
                logged.add(id(outcome))
                pb_utils.Logger.log_error(f"{model} failed:\n" + "".join(
                    traceback.format_exception(type(outcome), outcome, outcome.__traceback__)))
            out.append(error_response("internal error", pb_utils.TritonError.INTERNAL))
        else:
            out.append(pack(outcome))
    return out


def bls_call(model: str, version: int, inputs: dict, output: str, *, refusal_prefix: str | None = None):
    """Run ``model`` (version -1: the newest) on ``inputs`` (name -> numpy array) and return the
    ``output`` tensor as numpy. A callee error raises RuntimeError with its message, or
    RequestError when the message starts with ``refusal_prefix``: Triton 2.51 hands a BLS caller
    the callee's error without its INVALID_ARG code (an integration test saw it fail), so a
    refusal of the caller's input is known by its message."""
    response = pb_utils.InferenceRequest(
        model_name=model, model_version=version, requested_output_names=[output],
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()]).exec()
    if response.has_error():
        error = response.error()
        if refusal_prefix is not None and error.message().startswith(refusal_prefix):
            raise RequestError(error.message())
        raise RuntimeError(f"{model} (code {error.code()}): {error.message()}")
    return pb_utils.get_output_tensor_by_name(response, output).as_numpy()


class _TritonLogHandler(logging.Handler):
    """Python logging -> the server log (the stub's own log queue, safe from any thread)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


def log_to_triton(level: int = logging.INFO) -> None:
    """Send this project's module loggers (model_repository.*, kernels.*) to the server log;
    idempotent. Without it a stub's logging goes nowhere below WARNING."""
    for name in ("model_repository", "kernels"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _TritonLogHandler) for h in logger.handlers):
            handler = _TritonLogHandler()
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = False


RETRIEVE_PARTS = ("live_read", "tower", "score_topk")
_SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
_BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


class RetrieveMetrics:
    """retrieve's custom metrics, on Triton's metrics port beside its own (python_backend's
    pb_utils.MetricFamily). Labels: the model and the part, never a user or an item:

        freshrec_retrieve_batch_seconds            histogram: a batch's time in execute (what
                                                   each request of it waited there)
        freshrec_retrieve_part_seconds{part}       histogram: a batch's seconds in live_read,
                                                   tower and score_topk

    Each is observed once per batch: every observation is a message to Triton's process, so
    one per request would cost a batch of 64 as many round trips.
        freshrec_retrieve_batch_size               histogram: requests per execute
        freshrec_retrieve_switch_seconds           histogram: verifying and opening a new
                                                   version before switching to it
    """

    def __init__(self, model: str):
        histogram = pb_utils.MetricFamily.HISTOGRAM
        self._families = [  # kept: a Metric must not outlive its family
            pb_utils.MetricFamily(name=name, description=doc, kind=histogram)
            for name, doc in (
                ("freshrec_retrieve_batch_seconds", "a batch's time in retrieve's execute"),
                ("freshrec_retrieve_part_seconds", "a batch's seconds in one part of retrieve"),
                ("freshrec_retrieve_batch_size", "requests per retrieve execute"),
                ("freshrec_retrieve_switch_seconds", "verifying and opening a new version"))]
        seconds, part, batch, switch = self._families
        labels = {"model": model}
        self.seconds = seconds.Metric(labels=labels, buckets=_SECONDS_BUCKETS)
        self.parts = {name: part.Metric(labels={**labels, "part": name}, buckets=_SECONDS_BUCKETS)
                      for name in RETRIEVE_PARTS}
        self.batch = batch.Metric(labels=labels, buckets=_BATCH_BUCKETS)
        self.switch = switch.Metric(labels=labels, buckets=_SECONDS_BUCKETS)

    def executed(self, requests: int, seconds: float, parts: dict[str, float]) -> None:
        self.batch.observe(float(requests))
        self.seconds.observe(seconds)
        for name, spent in parts.items():
            if name in self.parts:
                self.parts[name].observe(spent)

    def switched(self, seconds: float) -> None:
        self.switch.observe(seconds)
