"""A serving stack on free ports for tests and benchmarks: tritonserver, and updaters beside it.

    with serving_stack(repository, models=MODELS, log_dir=tmp, updater=True) as stack:
        Client(stack.grpc_url).recommend(...); UpdaterClient(stack.updater.url).feedback(...)

Every process it started is stopped when the block ends, however it ends; a start-up failure
carries the log tail, and `log_tails()` gives the tails for a failing test's report.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from freshrec.processes import DEFAULT_HOST, DEFAULT_READY_TIMEOUT_S, TritonServer, UpdaterProcess

TRITON_LOG = "tritonserver.log"


class ServingStack:
    """A started tritonserver over `repository` and the updaters started beside it."""

    def __init__(self, triton: TritonServer, *, log_dir: Path):
        self.triton = triton
        self.log_dir = Path(log_dir)
        self.updaters: list[UpdaterProcess] = []  # started since the last stop_updaters()
        self._updaters_started = 0  # names their logs: updater.log, updater-2.log, ...

    @property
    def repository(self) -> Path:
        return self.triton.repository

    @property
    def grpc_url(self) -> str:
        return self.triton.grpc_url

    @property
    def updater(self) -> UpdaterProcess:
        """The updater started last."""
        if not self.updaters:
            raise RuntimeError("this serving stack runs no updater: start_updater() first")
        return self.updaters[-1]

    def start_updater(self, *, args: Sequence[str] = (), env: dict[str, str] | None = None,
                      timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> UpdaterProcess:
        """Start one more updater (on a port it binds itself, its own log in log_dir) and wait
        until it answers. `env` replaces the inherited environment; `args` are extra flags."""
        self._updaters_started += 1
        n = self._updaters_started
        updater = UpdaterProcess(self.repository, self.grpc_url, host=self.triton.host,
                                 log_path=self.log_dir / ("updater.log" if n == 1 else f"updater-{n}.log"),
                                 args=tuple(args), env=env,
                                 triton_metrics_url=f"http://{self.triton.host}:"
                                                    f"{self.triton.metrics_port}/metrics")
        self.updaters.append(updater)
        return updater.start(timeout_s=timeout_s)

    def stop_updaters(self) -> None:
        try:
            for updater in self.updaters:
                updater.stop()
        finally:
            self.updaters.clear()

    def stop(self) -> None:
        """Updaters first (they talk to Triton), then Triton; each is stopped even if one fails."""
        try:
            self.stop_updaters()
        finally:
            self.triton.stop()

    def log_tails(self, lines: int = 40) -> list[tuple[str, str]]:
        """(log file name, its last lines) for every process of this stack that wrote a log."""
        tails = []
        for process in (self.triton, *self.updaters):
            tail = process.log_tail(lines)
            if tail:
                tails.append((process.log_path.name, tail))
        return tails


@contextmanager
def serving_stack(repository: Path, *, models: Sequence[str], log_dir: Path,
                  updater: bool | Sequence[str] = False, host: str = DEFAULT_HOST,
                  ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> Iterator[ServingStack]:
    """Start tritonserver over `repository` with `models` loaded, on free ports, and, if
    `updater` is True or a non-empty list of extra updater flags, an updater beside it; yield the
    stack, stop everything in the end. Logs go to log_dir/tritonserver.log and log_dir/updater*.log."""
    triton = TritonServer(repository, models=tuple(models), host=host, grpc_port=0, http_port=0,
                          metrics_port=0, log_path=Path(log_dir) / TRITON_LOG)
    stack = ServingStack(triton, log_dir=log_dir)
    try:
        triton.start(timeout_s=ready_timeout_s)
        if updater:
            stack.start_updater(args=() if updater is True else updater, timeout_s=ready_timeout_s)
        yield stack
    finally:
        stack.stop()
