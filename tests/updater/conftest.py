"""Real tritonserver + real updater processes over a small repository built for these tests.

The repository is this package's own (the session fixtures of tests/integration assume version 1
serves), built once per module by the real exporter; Triton runs for the module; updaters are
subprocesses (`python -m updater`) so that `kill -9` is a real SIGKILL. Everything is stopped in
`finally`; a failing test carries the tails of both logs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.build import build
from exporter.train import TrainConfig
from freshrec.server import TritonServer, free_port
from model_repository import contract as c
from updater import faults
from updater.process import UpdaterProcess

SMALL_DATA = dict(n_users=200, n_items=150, n_events=6_000, n_categories=5, seed=3)
SMALL_TRAIN = TrainConfig(dim=16, epochs=2, seed=3)
MODELS = (c.USER_TOWER, c.RETRIEVE, c.RECOMMEND)

_logs: list[Path] = []


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    out = tmp_path_factory.mktemp("updater-build")
    return build(out, synthetic=True, synthetic_kwargs=SMALL_DATA, config=SMALL_TRAIN,
                 progress=False, tensorrt=False).repository


@pytest.fixture(scope="module")
def triton(repository):
    server = TritonServer(repository, models=MODELS, grpc_port=0, http_port=0, metrics_port=0,
                          log_path=repository.parent / "tritonserver.log")
    server.start()
    _logs.append(server.log_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_updater(repository, triton):
    """start_updater(**kwargs) -> a started UpdaterProcess; all are stopped after the test."""
    started: list[UpdaterProcess] = []

    def _start(*, wait=True, extra_env=None, args=()):
        env = {k: v for k, v in os.environ.items() if k not in (faults.CRASH_ENV, faults.FAULT_ENV)}
        env.update(extra_env or {})
        port = free_port()
        proc = UpdaterProcess(repository, triton.grpc_url, port=port,
                              state_dir=repository.parent / "updater",
                              log_path=repository.parent / f"updater-{port}.log", args=args, env=env)
        started.append(proc)
        _logs.append(proc.log_path)
        return proc.start(wait=wait)

    try:
        yield _start
    finally:
        for proc in started:
            proc.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for path in _logs[-3:]:
            if Path(path).exists():
                tail = "\n".join(Path(path).read_text(errors="replace").splitlines()[-40:])
                report.sections.append((f"log tail: {Path(path).name}", tail))
