"""A real tritonserver and a real updater over a copy of the session's small build.

A copy, not the shared build: the updater publishes new versions into it. Both processes are
stopped in `finally`; a failing test carries the tails of both logs (tests/conftest.py).
"""

from __future__ import annotations

import pytest

from freshrec.stack import serving_stack
from tests.fixtures.builds import SMALL


@pytest.fixture(scope="session")
def stack(builds, tmp_path_factory):
    repository = builds.copy(SMALL, tmp_path_factory.mktemp("loadtest"))
    with serving_stack(repository, models=SMALL.models, log_dir=repository.parent, updater=True) as stack:
        yield stack
