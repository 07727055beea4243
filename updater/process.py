"""Runs the updater as a child process (`python -m updater`), as `freshrec serve` and the tests do.

A child process, not a thread: the updater imports torch and trains, which must not slow or
endanger the serve loop, and crash tests must be able to SIGKILL it alone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from freshrec.server import die_with_parent
from updater.proto import freshrec_updater_pb2 as pb
from updater.proto import freshrec_updater_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 20.0


class UpdaterExited(RuntimeError):
    """The updater process ended before it was ready; the message holds its log tail."""


class UpdaterProcess:
    """start() waits until Status answers; kill() is SIGKILL; stop() is SIGTERM then SIGKILL."""

    def __init__(self, repository: Path, triton_url: str, *, host: str = "127.0.0.1", port: int,
                 state_dir: Path | None = None, log_path: Path, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):
        self.repository = Path(repository)
        self.triton_url = triton_url
        self.host = host
        self.port = port
        self.state_dir = state_dir
        self.log_path = Path(log_path)
        self.args = tuple(args)
        self.env = env
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "updater", "-v", "--repository", str(self.repository),
               "--triton", self.triton_url, "--host", self.host, "--port", str(self.port)]
        if self.state_dir is not None:
            cmd += ["--state-dir", str(self.state_dir)]
        return cmd + list(self.args)

    def start(self, *, wait: bool = True, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> UpdaterProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        # its own session: a terminal's Ctrl-C reaches `freshrec serve`, which stops it in order
        self.process = subprocess.Popen(self.command(), cwd=PROJECT_ROOT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=die_with_parent)
        if wait:
            self.wait_ready(timeout_s=timeout_s)
        return self

    def wait_ready(self, *, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.url) as channel:
            admin = pb_grpc.AdminStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise UpdaterExited(f"updater exited with code {self.process.returncode}:\n"
                                        f"{self.log_tail()}")
                try:
                    admin.Status(pb.StatusRequest(), timeout=1.0)
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise UpdaterExited(f"updater not ready after {timeout_s:.0f} s:\n"
                                            f"{self.log_tail()}") from None
                    time.sleep(0.1)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, *, timeout_s: float = 60.0) -> int:
        """Wait for the process to end on its own; returns its exit code (-9: SIGKILL)."""
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL, as `kill -9`: no handler runs."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> int | None:
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
