"""One child process at a time, started, watched and stopped the same way (freshrec.processes
subclasses it for tritonserver, the updater and redis-server).

A ChildProcess runs in its own session (a terminal's Ctrl-C reaches the parent, which stops its
children in order), gets SIGTERM when the parent dies (with_parent_death_signal), appends its output to a
log whose tail goes into every failure message, is polled for readiness under a deadline while
checking it is still alive, and stops with a signal, then SIGKILL after a grace period. start()
after stop() runs a fresh child, so a supervisor can restart it. Also here: free ports, and the
one wait loop with a deadline (wait_until) that tests and benchmarks share.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from model_repository.contract import DEFAULT_HOST

log = logging.getLogger(__name__)

POLL_S = 0.1

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], *, timeout_s: float, what: str | Callable[[], str],
               interval_s: float = POLL_S) -> T:
    """Call `predicate` until it returns something truthy and return that. After `timeout_s`,
    TimeoutError naming `what` (a callable is asked then, so it can describe the last state).
    An exception from `predicate` ends the wait at once: a dead child fails fast."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {described}")
        time.sleep(interval_s)


def with_parent_death_signal(cmd: list[str]) -> list[str]:
    """`cmd` run so that it gets SIGTERM when the process that started it dies: a killed test run
    or `kill -9` of `freshrec serve` leaves no orphaned server holding ports. util-linux's setpriv
    sets prctl(PR_SET_PDEATHSIG) and then execs `cmd` in place (same pid). Not a Popen preexec_fn:
    one makes Python fork() rather than vfork(), and fork() runs gRPC's atfork handlers while this
    process holds the GIL, which can hang the parent for good (grpc/grpc#37259; it hung CI in
    tests/updater/test_live.py). Without setpriv (not Linux), children are stopped explicitly."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else list(cmd)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on now. Another process may take it before ours binds it: prefer a
    child that binds port 0 itself (the updater), or retry on collision (TritonServer.start)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def listening_ports(pid: int) -> set[int] | None:
    """The TCP ports process `pid` itself listens on, from Linux /proc; None where there is none."""
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.is_dir():
        return None
    inodes = set()
    try:
        fds = list(fd_dir.iterdir())
    except OSError:  # it ended meanwhile
        return set()
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:  # sl local_address(HEXIP:HEXPORT) rem_address st(0A: LISTEN) ... inode
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class ChildProcess:
    """One child at a time, its output appended to `log_path`. Subclasses set what to run
    (start), how to tell it is ready (a probe for _wait_ready), the stop signal and grace."""

    name = "child"
    stop_signal = signal.SIGTERM
    stop_grace_s = 20.0
    error: type[Exception] = RuntimeError  # raised when it exits or is not ready in time

    def __init__(self, *, log_path: Path | None):
        self.log_path = Path(log_path) if log_path else None
        self._log_in_workdir = log_path is None  # then each run logs in its own scratch folder
        self.process: subprocess.Popen | None = None
        self._log = None
        self._log_start = 0  # where this run's output begins in the log
        self._workdir: Path | None = None

    def _make_workdir(self) -> Path:
        """A fresh scratch folder for this run, removed by stop()."""
        self._workdir = Path(tempfile.mkdtemp(prefix=f"freshrec-{self.name}-"))
        return self._workdir

    def _spawn(self, cmd: list[str], *, env: dict[str, str], cwd: Path | None = None) -> None:
        if self._log_in_workdir:
            self.log_path = self._workdir / f"{self.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.tell()
        log.info("starting %s (log %s)", self.name, self.log_path)
        self.process = subprocess.Popen(with_parent_death_signal(cmd), cwd=cwd, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_ready(self, probe: Callable[[], bool], *, timeout_s: float) -> None:
        """Poll `probe` (False: not yet) until it passes; `error` with the log tail if the child
        exits first or the deadline passes."""
        def ready() -> bool:
            if not self.alive():
                raise self.error(f"{self.name} exited with code {self.process.returncode}:\n"
                                 f"{self.log_tail()}")
            return probe()

        try:
            wait_until(ready, timeout_s=timeout_s, what=f"{self.name} to be ready")
        except TimeoutError as exc:
            raise self.error(f"{exc}:\n{self.log_tail()}") from None

    def _ready_or_stopped(self, *, timeout_s: float) -> None:
        """Wait for the subclass's `_ready` probe; a child that fails it is stopped, then raised."""
        try:
            self._wait_ready(self._ready, timeout_s=timeout_s)
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_s(self) -> float:
        """CPU seconds (user + system, every thread) the running child has used so far, from
        Linux's /proc (what bench.quality charges the updater for learning)."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # after the command name: state is field 3
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def run_time_s(self) -> float:
        """On-CPU seconds of the child's live threads, to the nanosecond (Linux's per-thread
        schedstat): for intervals far shorter than `cpu_s`'s clock tick, such as one request.
        Threads that have exited are not in it; use it on children whose threads live as long as
        they do (redis-server), and `cpu_s` for totals."""
        total_ns = 0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended while we listed them
        return total_ns / 1e9

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def output_since_start(self) -> str:
        """What this run (not an earlier one appending to the same log) has written."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(self._log_start)
            return handle.read().decode(errors="replace")

    def wait_exit(self, *, timeout_s: float = 60.0) -> int:
        """Wait for the child to end on its own; returns its exit code (-9: SIGKILL)."""
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL, as `kill -9`: no handler runs."""
        if self.alive():
            self.process.kill()
            self.process.wait()

    def stop(self) -> int | None:
        """stop_signal, then SIGKILL after stop_grace_s. Returns the exit code (None: never ran)."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(self.stop_signal)
                try:
                    self.process.wait(timeout=self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        self._after_exit()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code

    def _after_exit(self) -> None:
        """What a subclass must clean up once its child has ended (before the workdir goes)."""

    def start(self):
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
