"""Channels to the updater as its access asks (updater.access on the server side): TLS when
given the CA to trust, and the bearer token on every call when given one; and the standard gRPC
health probe over such a channel."""

from __future__ import annotations

from pathlib import Path

import grpc

from model_repository import contract as c


def _pem(path: Path | str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {path}: {exc.strerror}") from None


class _TokenMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                     grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the token to every call (works on plain and TLS channels alike)."""

    def __init__(self, token: str):
        self._pair = (c.AUTH_HEADER, c.AUTH_SCHEME + token)

    def _with_token(self, details):
        return _Details(details.method, details.timeout,
                        [*(details.metadata or ()), self._pair], details.credentials,
                        getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._with_token(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = (credentials, wait_for_ready,
                                                                   compression)


def channel(url: str, *, token: str | None = None, tls_ca: Path | str | None = None,
            options=()) -> grpc.Channel:
    """A channel to the updater: TLS when ``tls_ca`` names the CA to trust, the token on every
    call when given."""
    if tls_ca is not None:
        ch = grpc.secure_channel(url, grpc.ssl_channel_credentials(_pem(tls_ca, "--tls-ca")),
                                 options=list(options))
    else:
        ch = grpc.insecure_channel(url, options=list(options))
    return grpc.intercept_channel(ch, _TokenMetadata(token)) if token else ch


def probe(url: str, *, service: str = "", timeout_s: float = 5.0, tls_ca=None) -> str:
    """Ask a gRPC server's standard health service: "SERVING", "NOT_SERVING", "UNKNOWN",
    "SERVICE_UNKNOWN", or "UNREACHABLE: <why>" (``tls_ca``: the CA PEM of a TLS port)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with channel(url, tls_ca=tls_ca) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"UNREACHABLE: {exc.code().name} {exc.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
