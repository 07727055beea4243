"""`freshrec serve`'s watch over its two children: tritonserver and the updater, each restarted
when it dies, the other left running.

tritonserver: Triton has crashed under reload churn (SIGSEGV in a soak of publishes, a known
hazard: triton-inference-server/server#2607); a crash used to stop `freshrec serve` and the
updater with it. Now the crash is logged with its exit code, the server is started again on the
same ports (the newest version that verifies serves: model_repository.live_version), the restart
is counted in the updater's state folder for `freshrec status` (updater.supervision), and the
updater keeps running: its publishes fail while Triton is down and are retried (the log keeps
every acknowledged event), and the next one after the restart serves everything. Clients see
failures only while the server restarts.

The updater: a restart recovers from its durable log; Triton serves the last good version meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from freshrec.processes import SetupError, TritonServer, UpdaterExited, UpdaterProcess
from updater.supervision import write_supervisor_state

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.2
RETRY_AFTER_S = 10.0  # a child whose restart failed is tried again this much later


class Supervisor:
    """Starts tritonserver and (optionally) the updater; `check()` restarts whichever died.

    ``make_updater()`` returns a fresh, not yet started UpdaterProcess; None: serve only.
    ``say(message)`` reports to the operator (stderr of `freshrec serve`)."""

    def __init__(self, server: TritonServer, *, make_updater: Callable[[], UpdaterProcess] | None,
                 state_dir: Path, say: Callable[[str], None] = log.warning):
        self.server = server
        self.make_updater = make_updater
        self.updater: UpdaterProcess | None = None
        self.state_dir = Path(state_dir)
        self.say = say
        self.triton_restarts = 0
        self.updater_restarts = 0
        self._retry_triton_at = self._retry_updater_at = 0.0

    def start(self) -> Supervisor:
        """Both children started and ready; SetupError / UpdaterExited if one cannot start."""
        self.server.start()
        self._write_state(last_exit_code=None)
        if self.make_updater is not None:
            try:
                self.updater = self.make_updater().start()
            except BaseException:
                self.server.stop()
                raise
        return self

    def check(self) -> None:
        """Restart a child that died (tritonserver first: the updater talks to it)."""
        now = time.monotonic()
        if not self.server.alive() and now >= self._retry_triton_at:
            self._restart_triton()
        if (self.updater is not None and not self.updater.alive()
                and time.monotonic() >= self._retry_updater_at):
            self._restart_updater()

    def _restart_triton(self) -> None:
        code = self.server.process.returncode if self.server.process is not None else None
        self.say(f"tritonserver exited (code {code}); restarting it on {self.server.grpc_url}, "
                 f"see {self.server.log_path}")
        self.server.stop()  # collects the exit, closes the log, removes its scratch folder
        started = time.monotonic()
        try:
            self.server.start()
        except SetupError as exc:
            self.say(f"tritonserver did not start again: {exc}; retrying in {RETRY_AFTER_S:.0f} s")
            self._retry_triton_at = time.monotonic() + RETRY_AFTER_S
            return
        self.triton_restarts += 1
        self._write_state(last_exit_code=code)
        self.say(f"tritonserver serving again after {time.monotonic() - started:.1f} s "
                 f"(restart {self.triton_restarts})")

    def _restart_updater(self) -> None:
        self.say(f"updater exited (code {self.updater.process.returncode}); restarting, "
                 f"see {self.updater.log_path}")
        self.updater.stop()
        try:
            self.updater = self.make_updater().start()
        except UpdaterExited as exc:  # keep serving; try again later
            self.say(f"the updater did not start: {exc}")
            self._retry_updater_at = time.monotonic() + RETRY_AFTER_S
            return
        self.updater_restarts += 1

    def _write_state(self, *, last_exit_code: int | None) -> None:
        write_supervisor_state(self.state_dir, triton_restarts=self.triton_restarts,
                               last_exit_code=last_exit_code,
                               last_restart_at=time.time() if self.triton_restarts else None)

    def stop(self) -> int | None:
        """The updater first (it talks to Triton), then Triton; returns Triton's exit code."""
        try:
            if self.updater is not None:
                self.updater.stop()
        finally:
            code = self.server.stop()
        return code
