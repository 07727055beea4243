"""`freshrec serve` runs Triton and the updater; the updater commands talk to it (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clients import Client, UpdaterClient
from freshrec.child_process import free_port, wait_until
from freshrec.processes import PROJECT_ROOT
from tests.fixtures.builds import UPDATER
from updater.settings import DEFAULT_MAX_NEW_USERS_PER_MIN

pytestmark = pytest.mark.integration
READY_S = 120.0


def freshrec(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "freshrec.cli", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _child(serve_pid: int, is_it) -> int | None:
    """The pid of serve's child whose argv passes ``is_it``."""
    children = Path(f"/proc/{serve_pid}/task/{serve_pid}/children").read_text().split()
    for pid in children:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        if is_it(argv):
            return int(pid)
    return None


def _updater_child(serve_pid: int) -> int | None:
    return _child(serve_pid, lambda argv: b"updater" in argv and b"-m" in argv)


def _triton_child(serve_pid: int) -> int | None:
    return _child(serve_pid, lambda argv: argv[0].endswith(b"tritonserver"))


def _serve(repository: Path, grpc_port: int, updater_port: int) -> subprocess.Popen:
    serve = subprocess.Popen(
        [sys.executable, "-m", "freshrec.cli", "serve", "--repository", str(repository),
         "--grpc-port", str(grpc_port), "--http-port", str(free_port()),
         "--metrics-port", str(free_port()), "--updater-port", str(updater_port)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = serve.stdout.readline()
    assert "freshrec ready" in line, line + (serve.stdout.read() if serve.poll() is not None else "")
    return serve


def test_serve_runs_triton_and_the_updater_and_the_commands_reach_them(builds, tmp_path):
    repository = builds.copy(UPDATER, tmp_path)  # it publishes and rolls back
    grpc_port, updater_port = free_port(), free_port()
    updater = f"127.0.0.1:{updater_port}"
    serve = _serve(repository, grpc_port, updater_port)
    try:
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
        # an item the serving catalogue does not know: refused, and no trace of it (issue 27)
        unknown = freshrec("feedback", "--user", "1", "--item", "999999999", "--kind", "purchase",
                           "--updater", updater, check=False)
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr, unknown.stderr
        assert "item_id: item 999999999 is not in the serving catalogue" in unknown.stderr
        published = json.loads(freshrec("publish", "--updater", updater).stdout)
        status = json.loads(freshrec("status", "--updater", updater).stdout)
        assert status["last_published_offset"] >= sent["offset"]
        assert status["serving_versions"]["retrieve"] == status["published_version"] >= 2
        assert status["items"] == status["catalogue_items"] and not status["catalogue_grows"]
        assert status["max_new_users_per_min"] == DEFAULT_MAX_NEW_USERS_PER_MIN
        assert status["new_users_last_min"] == 1  # user_id's row
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


def test_serve_restarts_a_killed_tritonserver_under_load_and_keeps_the_updater(builds, tmp_path):
    repository = builds.copy(UPDATER, tmp_path)
    grpc_port, updater_port = free_port(), free_port()
    url, updater = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{updater_port}"
    serve = _serve(repository, grpc_port, updater_port)
    answered, failed, stop = [], [], threading.Event()

    def ask():  # one client thread hammering recommend throughout
        with Client(url, timeout_s=5.0) as client:
            while not stop.is_set():
                try:
                    client.recommend(1, k=3)
                    answered.append(time.monotonic())
                except Exception:  # noqa: BLE001 - failures are expected while it restarts
                    failed.append(time.monotonic())
                    time.sleep(0.05)

    asker = threading.Thread(target=ask)
    try:
        with UpdaterClient(updater) as up:
            up.wait_ready(timeout_s=READY_S)
        updater_pid, triton_pid = _updater_child(serve.pid), _triton_child(serve.pid)
        stubs = Path(f"/proc/{triton_pid}/task/{triton_pid}/children").read_text().split()
        assert stubs  # one python backend stub per loaded model
        asker.start()
        wait_until(lambda: len(answered) > 20, timeout_s=READY_S, what="answers under load")
        killed_at = time.monotonic()
        os.kill(triton_pid, signal.SIGKILL)
        wait_until(lambda: failed and answered[-1] > failed[-1] > killed_at, timeout_s=READY_S,
                   what="answers again after the kill")
        back_s = answered[-1] - killed_at
        print(f"answers again {back_s:.1f} s after SIGKILL of tritonserver "
              f"({len([t for t in failed if t > killed_at])} failed requests meanwhile)")
        assert _triton_child(serve.pid) not in (None, triton_pid)
        # the killed server's stubs do not outlive it (they are re-parented, not killed, by a
        # SIGKILL of their server): the supervisor reaps them
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in stubs),
                   timeout_s=READY_S, what="the killed server's stubs to be gone")
        assert _updater_child(serve.pid) == updater_pid  # the updater kept running
        with UpdaterClient(updater) as up, Client(url) as client:
            # counted once the supervisor has seen the new server ready, which can be a poll
            # after the first answer
            wait_until(lambda: up.status()["triton_restarts"] == 1, timeout_s=READY_S,
                       what="the restart to be counted")
            sent = up.feedback(987_654, 3, "click")
            published = up.publish()  # publishing works against the restarted server
            assert published["feedback_offset"] >= sent.last_offset
            assert client.recommend(987_654, k=2).version == published["version"]
    finally:
        stop.set()
        if asker.is_alive():
            asker.join()
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, out
    assert "tritonserver exited (code -9); restarting it" in out
    assert "freshrec stopped (tritonserver exit code 0, restarted 1 times after crashes)" in out
