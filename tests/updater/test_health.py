"""Health: the updater's standard gRPC health service and `freshrec health`, against real
processes (updater.health)."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent import futures

import grpc
import pytest

from clients.channel import probe
from freshrec.child_process import free_port
from updater.health import SERVICES, UpdaterHealth

pytestmark = pytest.mark.integration
FRESHREC = [sys.executable, "-m", "freshrec.cli"]


def test_a_running_updater_is_serving_and_freshrec_health_says_so(stack, start_updater):
    updater = start_updater()
    for service in SERVICES:
        assert probe(updater.url, service=service) == "SERVING", service
    done = subprocess.run(FRESHREC + ["health", "--url", stack.grpc_url, "--updater", updater.url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["healthy"] and report["updater"]["status"] == "SERVING"
    assert report["triton"]["ready"] and all(report["triton"]["models"].values())


def test_freshrec_health_fails_when_a_part_is_down(stack):
    nobody = f"127.0.0.1:{free_port()}"
    done = subprocess.run(FRESHREC + ["health", "--url", stack.grpc_url, "--updater", nobody],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert not report["healthy"] and report["updater"]["status"].startswith("UNREACHABLE")
    assert report["triton"]["ready"]  # the part that is up says so
    done = subprocess.run(FRESHREC + ["health", "--url", nobody, "--no-updater"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and not json.loads(done.stdout)["triton"]["ready"]


def test_the_health_service_follows_its_check_and_starts_not_serving():
    state = {"ok": False}
    health = UpdaterHealth(ready=lambda: (state["ok"], "Triton does not answer"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health.add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        url = f"127.0.0.1:{port}"
        assert probe(url) == "NOT_SERVING"  # before its first check: not recovered yet
        health.check()
        assert probe(url) == "NOT_SERVING"
        state["ok"] = True
        health.check()
        assert all(probe(url, service=s) == "SERVING" for s in SERVICES)
        assert probe(url, service="no.such.Service").startswith("UNREACHABLE: NOT_FOUND")
        health.stop()
        assert probe(url) == "NOT_SERVING"
    finally:
        server.stop(0)
