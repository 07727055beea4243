"""The process launchers: waits under a deadline, tritonserver's retry on new ports after another
process took one of its ports, and the serving stack stopping what it started."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from freshrec import processes
from freshrec.child_process import ChildProcess, free_port, listening_ports, wait_until
from freshrec.processes import SetupError, TritonServer
from freshrec.stack import serving_stack


def test_wait_until_returns_the_first_truthy_value():
    calls = iter([None, 0, "ready"])
    assert wait_until(lambda: next(calls), timeout_s=5, what="it", interval_s=0) == "ready"


def test_wait_until_names_what_it_waited_for_as_described_at_the_deadline():
    state = {"n": 0}

    def never():
        state["n"] += 1
        return False

    with pytest.raises(TimeoutError, match=r"waiting for the thing \(asked [1-9]"):
        wait_until(never, timeout_s=0.05, interval_s=0.01, what=lambda: f"the thing (asked {state['n']})")


def test_wait_until_lets_an_error_of_the_predicate_through_at_once():
    def dead():
        raise RuntimeError("child exited")

    with pytest.raises(RuntimeError, match="child exited"):
        wait_until(dead, timeout_s=60, what="never")


@pytest.fixture
def held_port():
    """A port another process (this one) listens on, as a collision finds it."""
    with socket.socket() as sock:
        sock.bind((processes.DEFAULT_HOST, 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.integration
@pytest.mark.parametrize("taken", [0, 1, 2], ids=["grpc", "http", "metrics"])
def test_triton_starts_on_new_ports_when_another_process_took_one(taken, held_port, tmp_path, monkeypatch):
    picks = iter([held_port if n == taken else free_port() for n in range(3)])
    # TritonServer.start picks its ports through the name freshrec.processes imported
    monkeypatch.setattr(processes, "free_port", lambda host: next(picks, None) or free_port(host))
    (tmp_path / "repository").mkdir()
    with TritonServer(tmp_path / "repository", grpc_port=0, http_port=0, metrics_port=0,
                      log_path=tmp_path / "tritonserver.log") as server:
        assert held_port not in server.ports
        assert set(server.ports) <= listening_ports(server.process.pid)
    assert server.log_path.read_text(errors="replace").count("Started GRPCInferenceService") >= 1


@pytest.mark.integration
def test_triton_refuses_a_port_given_explicitly_that_is_in_use(held_port, tmp_path):
    (tmp_path / "repository").mkdir()
    server = TritonServer(tmp_path / "repository", grpc_port=held_port, http_port=0, metrics_port=0)
    with pytest.raises(SetupError, match=f"port 127.0.0.1:{held_port} is in use"):
        server.start()


@pytest.mark.integration
def test_a_stack_that_fails_to_start_says_why_and_leaves_nothing_running(tmp_path):
    repository = tmp_path / "repository"
    repository.mkdir()
    with pytest.raises(SetupError, match="exited with code") as caught:
        with serving_stack(repository, models=("no_such_model",), log_dir=tmp_path):
            pass
    assert "no_such_model" in str(caught.value)  # the log tail names the model it could not load


def test_a_childs_cpu_seconds_count_its_work_not_its_sleep(tmp_path):
    import sys
    import time

    child = ChildProcess(log_path=tmp_path / "child.log")
    child._make_workdir()
    busy = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
    child._spawn([sys.executable, "-c", busy + "time.sleep(30)"], env={})
    try:
        wait_until(lambda: child.cpu_s() >= 0.4, timeout_s=20, what="the child's busy loop")
        spent = child.cpu_s()
        assert 0.4 <= spent < 5.0
        time.sleep(0.3)  # the child sleeps now
        assert child.cpu_s() - spent < 0.1
        ran = child.run_time_s()  # the nanosecond clock agrees with the tick one
        assert abs(ran - child.cpu_s()) < 0.1
        time.sleep(0.05)
        assert 0.0 <= child.run_time_s() - ran < 0.01
    finally:
        child.stop()


def test_the_updater_runs_numpy_on_one_blas_thread():
    """OpenBLAS's idle workers spin between the updater's tiny per-event calls: set before numpy
    is imported (as `python -m updater` and `freshrec updater` do), one thread is what it gets."""
    import json
    import os
    import subprocess
    import sys

    from updater.settings import BLAS_THREAD_VARS, one_blas_thread

    pytest.importorskip("threadpoolctl")  # installed with implicit (the dev extra)
    env = {"OMP_NUM_THREADS": "3"}
    one_blas_thread(env)
    assert env == {**dict.fromkeys(BLAS_THREAD_VARS, "1"), "OMP_NUM_THREADS": "3"}  # kept
    probe = ("from updater.settings import one_blas_thread; one_blas_thread(); import numpy, "
             "json, threadpoolctl; print(json.dumps([p['num_threads'] for p in "
             "threadpoolctl.threadpool_info() if p['user_api'] == 'blas']))")
    clean = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARS}
    out = subprocess.run([sys.executable, "-c", probe], env=clean, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert json.loads(out.stdout) == [1]


def test_starting_a_child_runs_no_fork_handlers(tmp_path):
    """A child starts by vfork, not fork: fork() would run gRPC's atfork handlers with the GIL
    held, which can hang the parent for good (grpc/grpc#37259). Python's own before-fork hooks
    run on exactly the fork() path, so they count it."""
    import os
    import sys

    forks = []
    os.register_at_fork(before=lambda: forks.append(1))
    child = ChildProcess(log_path=tmp_path / "child.log")
    child._make_workdir()
    child._spawn([sys.executable, "-c", "import time; time.sleep(30)"], env={})
    try:
        assert forks == []
        # the pid is the command itself (setpriv execs it in place), so signals reach it (its
        # cmdline reads empty until the exec is done: a loaded machine takes a moment)
        cmdline = Path(f"/proc/{child.process.pid}/cmdline")
        deadline = time.monotonic() + 10
        while "time.sleep(30)" not in cmdline.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "time.sleep(30)" in cmdline.read_text()
    finally:
        child.stop()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv (Linux)")
def test_a_child_gets_sigterm_when_its_parent_is_killed(tmp_path):
    import os
    import subprocess
    import sys

    parent = ("import sys, time\nfrom pathlib import Path\n"
              "from freshrec.child_process import ChildProcess\n"
              "child = ChildProcess(log_path=Path(sys.argv[1]))\n"
              "child._spawn(['sleep', '60'], env={'PATH': '/usr/bin:/bin'})\n"
              "print(child.process.pid, flush=True)\ntime.sleep(60)\n")
    with subprocess.Popen([sys.executable, "-c", parent, str(tmp_path / "child.log")],
                          stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1]) as started:
        pid = int(started.stdout.readline())
        assert Path(f"/proc/{pid}").exists()
        started.kill()  # kill -9: no handler of the parent runs
        started.wait()

    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie until reaped by init counts as gone: it ended
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")

    wait_until(gone, timeout_s=10, what=f"child {pid} to end after its parent was killed")
