"""Who may call the updater (issue 29): a bearer token for Admin (and, with a flag, Feedback),
and TLS for its port.

    the token:  --token-file PATH (its first line), else the FRESHREC_TOKEN environment variable;
                never logged, never on a command line `freshrec serve` builds (it travels in the
                child's environment); compared in constant time (hmac.compare_digest)
    callers:    metadata "authorization: Bearer <token>" (clients.channel: UpdaterClient(
                token=...); every `freshrec` command reads the same file or variable)
    TLS:        --tls-cert and --tls-key (PEM) on the updater; clients trust --tls-ca

An updater bound to anything but loopback refuses to start without a token. The health service
needs no token (probes carry none); without one, Admin answers UNAUTHENTICATED and says how to
give it.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

import grpc

from model_repository import contract as c

TOKEN_ENV, HEADER, SCHEME = c.TOKEN_ENV, c.AUTH_HEADER, c.AUTH_SCHEME
ADMIN = "/freshrec.updater.v1.Admin/"
FEEDBACK = "/freshrec.updater.v1.Feedback/"


class AccessError(ValueError):
    """A setting that would leave the updater open or cannot be read; names the flag."""


def triton_control_secret(token: str) -> str:
    """The value of Triton's control header for this token: derived from it (HMAC-SHA256), so
    tritonserver's command line, which other users of the host can read, never shows the token."""
    return hmac.new(token.encode(), b"freshrec triton model control", "sha256").hexdigest()


def triton_control_headers(token: str | None) -> dict[str, str]:
    """The header the updater sends with its Triton control calls over gRPC (none without a
    token): Triton expects a restricted protocol's key prefixed "triton-grpc-protocol-" there
    (over HTTP the key itself)."""
    if not token:
        return {}
    return {f"triton-grpc-protocol-{c.TRITON_CONTROL_HEADER}": triton_control_secret(token)}


def triton_restriction_flags(token: str | None) -> list[str]:
    """tritonserver flags that close its control APIs on both ports to calls without the
    header (inference, metadata and health stay open)."""
    if not token:
        return []
    rule = f"{c.TRITON_RESTRICTED}:{c.TRITON_CONTROL_HEADER}={triton_control_secret(token)}"
    return [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_file: Path | str | None = None, *, environ=os.environ) -> str | None:
    """The token from ``token_file`` (its first line) or FRESHREC_TOKEN; None when neither."""
    if token_file:
        try:
            lines = Path(token_file).read_text().splitlines()
        except OSError as exc:
            raise AccessError(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise AccessError(f"--token-file: {token_file} has no token on its first line")
        return token
    token = environ.get(TOKEN_ENV, "").strip()
    return token or None


def require_token_off_loopback(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise AccessError(f"--host {host} is not loopback: the updater needs a token there "
                          f"(--token-file PATH or the {TOKEN_ENV} environment variable), so "
                          "strangers cannot publish, roll back, push or forget")


def read_pem(path: Path | str | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AccessError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def server_credentials(cert: Path | str | None, key: Path | str | None):
    """grpc.ssl_server_credentials from PEM files, or None when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise AccessError("--tls-cert and --tls-key go together: give both")
    return grpc.ssl_server_credentials([(read_pem(key, "--tls-key"), read_pem(cert, "--tls-cert"))])


class TokenInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for a call to a protected service without the token."""

    def __init__(self, token: str, *, feedback: bool = False):
        self._expected = (SCHEME + token).encode()
        self._protected = (ADMIN, FEEDBACK) if feedback else (ADMIN,)

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(self._protected):
            return handler
        given = next((v for k, v in details.invocation_metadata if k == HEADER), "")
        if hmac.compare_digest(given.encode(), self._expected):
            return handler
        why = ("no token sent" if not given else "the token is wrong") + (
            f": send 'authorization: Bearer <token>' (freshrec commands read --token-file or "
            f"{TOKEN_ENV})")
        return _denied(handler, why)


def _denied(handler, why: str):
    def deny(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    def deny_streaming(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        yield  # pragma: no cover - abort raises

    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}
    kind = (handler.request_streaming, handler.response_streaming)
    return make[kind](deny_streaming if handler.response_streaming else deny,
                      request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)
