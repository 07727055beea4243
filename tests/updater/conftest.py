"""A real tritonserver over a copy of the session's updater build, and real updater processes.

A copy per module: the updater publishes into it, and other folders' tests read their builds
untouched. Triton runs for the module; each test starts its updaters (`python -m updater`
subprocesses, so that `kill -9` is a real SIGKILL) through `start_updater`, which stops them when
the test ends. Everything is stopped in `finally`; a failing test carries the log tails
(tests/conftest.py).
"""

from __future__ import annotations

import os

import pytest

from freshrec.stack import serving_stack
from tests.fixtures.builds import UPDATER
from updater import faults


@pytest.fixture(scope="module")
def stack(builds, tmp_path_factory):
    repository = builds.copy(UPDATER, tmp_path_factory.mktemp("updater"))
    with serving_stack(repository, models=UPDATER.models, log_dir=repository.parent) as stack:
        yield stack


@pytest.fixture(scope="module")
def repository(stack):
    return stack.repository


@pytest.fixture
def start_updater(stack):
    """start_updater(extra_env=..., args=...) -> a started UpdaterProcess, with no fault armed
    unless extra_env arms one; all are stopped when the test ends."""

    def _start(*, extra_env=None, args=()):
        env = {k: v for k, v in os.environ.items() if k not in (faults.CRASH_ENV, faults.FAULT_ENV)}
        env.update(extra_env or {})
        return stack.start_updater(args=args, env=env)

    try:
        yield _start
    finally:
        stack.stop_updaters()
