"""A real tritonserver and a real updater over a small repository of this package's own.

Its own repository, not tests/integration's: the updater publishes new versions into it, and the
integration tests assume version 1 serves. Both processes are stopped in `finally`; a failing
test carries the tails of both logs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.build import build
from freshrec.server import TritonServer, free_port
from tests.integration.conftest import MODELS, SMALL_DATA, SMALL_TRAIN
from updater.process import UpdaterProcess

_logs: list[Path] = []


@pytest.fixture(scope="session")
def loadtest_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("loadtest-build")
    return build(out, synthetic=True, synthetic_kwargs=SMALL_DATA, config=SMALL_TRAIN,
                 progress=False, tensorrt=False, text_encoder=False)


@pytest.fixture(scope="session")
def triton(loadtest_build):
    repository = loadtest_build.repository
    server = TritonServer(repository, models=MODELS, grpc_port=0, http_port=0, metrics_port=0,
                          log_path=repository.parent / "tritonserver.log")
    server.start()
    _logs.append(server.log_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def updater(loadtest_build, triton):
    repository = loadtest_build.repository
    port = free_port()
    process = UpdaterProcess(repository, triton.grpc_url, port=port,
                             state_dir=repository.parent / "updater",
                             log_path=repository.parent / "updater.log")
    _logs.append(process.log_path)
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for path in _logs:
            if Path(path).exists():
                tail = "\n".join(Path(path).read_text(errors="replace").splitlines()[-40:])
                report.sections.append((f"log tail: {Path(path).name}", tail))
