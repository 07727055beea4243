"""`freshrec serve` runs Triton and the updater; the updater commands talk to it (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clients import Client, UpdaterClient
from freshrec.processes import PROJECT_ROOT, free_port, wait_until
from tests.fixtures.builds import UPDATER

pytestmark = pytest.mark.integration
READY_S = 120.0


def freshrec(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "freshrec.cli", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _updater_child(serve_pid: int) -> int | None:
    children = Path(f"/proc/{serve_pid}/task/{serve_pid}/children").read_text().split()
    for pid in children:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"updater" in cmdline and b"-m" in cmdline:
            return int(pid)
    return None


def test_serve_runs_triton_and_the_updater_and_the_commands_reach_them(builds, tmp_path):
    repository = builds.copy(UPDATER, tmp_path)  # it publishes and rolls back
    grpc_port, updater_port = free_port(), free_port()
    updater = f"127.0.0.1:{updater_port}"
    serve = subprocess.Popen(
        [sys.executable, "-m", "freshrec.cli", "serve", "--repository", str(repository),
         "--grpc-port", str(grpc_port), "--http-port", str(free_port()),
         "--metrics-port", str(free_port()), "--updater-port", str(updater_port)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert "freshrec ready" in serve.stdout.readline()
        with UpdaterClient(updater) as up:
            up.wait_ready(timeout_s=READY_S)
        user_id = 123_456_789
        sent = json.loads(freshrec("feedback", "--user", str(user_id), "--item", "3", "--kind",
                                   "click", "--event-id", "cli-1", "--updater", updater).stdout)
        assert sent["accepted"] == 1 and not sent["duplicate"]
        again = json.loads(freshrec("feedback", "--user", str(user_id), "--item", "3",
                                    "--event-id", "cli-1", "--updater", updater).stdout)
        assert again["accepted"] == 0 and again["duplicate"]
        bad = freshrec("feedback", "--user", "1", "--item", "3", "--kind", "like", "--updater",
                       updater, check=False)
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "kind" in bad.stderr
        published = json.loads(freshrec("publish", "--updater", updater).stdout)
        status = json.loads(freshrec("status", "--updater", updater).stdout)
        assert status["last_published_offset"] >= sent["offset"]
        assert status["serving_versions"]["retrieve"] == status["published_version"] >= 2
        assert published["version"] <= status["published_version"]
        rolled = json.loads(freshrec("rollback", "--to", "1", "--updater", updater).stdout)
        with Client(f"127.0.0.1:{grpc_port}") as client:
            assert client.recommend(1, k=2).version == rolled["version"]

        # kill -9 the updater: serve restarts it, Triton serves throughout
        child = _updater_child(serve.pid)
        assert child is not None
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: _updater_child(serve.pid) not in (None, child), timeout_s=READY_S,
                   what="a restarted updater")
        with UpdaterClient(updater) as up, Client(f"127.0.0.1:{grpc_port}") as client:
            assert up.wait_ready(timeout_s=READY_S)["published_version"] == rolled["version"]
            assert client.recommend(1, k=2).version == rolled["version"]
    finally:
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, out
    assert "freshrec stopped" in out
