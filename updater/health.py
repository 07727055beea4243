"""The standard gRPC health service on the updater's port (grpc.health.v1, issue 29).

NOT_SERVING until the updater has recovered its log and model and reaches Triton; then each
CHECK_EVERY_S it asks whether Triton is live and its engine thread runs, and says SERVING or
NOT_SERVING for the server ("") and for each of its services (freshrec.updater.v1.Feedback,
freshrec.updater.v1.Admin). Kubernetes' gRPC probes, grpc_health_probe and `freshrec health` read
it the standard way.
"""

from __future__ import annotations

import logging
import threading

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from updater.proto import freshrec_updater_pb2 as pb

log = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0
SERVICES = ("", *(s.full_name for s in pb.DESCRIPTOR.services_by_name.values()))
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class UpdaterHealth:
    """The servicer, and the thread that keeps its answer current."""

    def __init__(self, *, ready):
        """``ready()``: (bool, why not) - the updater's own test, asked each CHECK_EVERY_S."""
        self.servicer = health.HealthServicer()
        self.ready = ready
        self.serving = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="updater-health", daemon=True)
        self._set(NOT_SERVING)

    def add_to(self, server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    def _set(self, status) -> None:
        for service in SERVICES:
            self.servicer.set(service, status)

    def check(self) -> bool:
        ok, why = self.ready()
        if ok != self.serving:
            log.warning("health: %s", "SERVING" if ok else f"NOT_SERVING ({why})")
        self.serving = ok
        self._set(SERVING if ok else NOT_SERVING)
        return ok

    def start(self) -> UpdaterHealth:
        self.check()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(CHECK_EVERY_S):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a failed check is NOT_SERVING, never a dead thread
                log.exception("health check failed")
                self._set(NOT_SERVING)

    def stop(self) -> None:
        self._stop.set()
        self._set(NOT_SERVING)
        self.servicer.enter_graceful_shutdown()
