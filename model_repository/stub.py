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
