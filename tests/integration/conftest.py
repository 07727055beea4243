"""A real tritonserver on free ports, serving the session's text-enabled build (tests/fixtures).

The server is started once per session and always stopped. A missing binary is a setup failure
whose message says which command installs it; it is never a skip. A failing test carries the
tail of the server log in its report (tests/conftest.py). The tests only read: version 1 serves
throughout, so the build is the shared one, not a copy.
"""

import pytest

from freshrec.stack import serving_stack
from tests.fixtures.builds import TEXT


@pytest.fixture(scope="session")
def built(builds):
    return builds.get(TEXT)


@pytest.fixture(scope="session")
def server(built):
    with serving_stack(built.repository, models=TEXT.models, log_dir=built.repository.parent) as stack:
        yield stack
