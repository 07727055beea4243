"""Test-wide set-up. TRITON_INTERPRET must be set before `kernels` (and triton) is first imported,
so Triton-language kernels run on the CPU interpreter here; a CUDA host can set it to 0.

Also here: the session's build cache (`builds`), and the one report hook that puts the log tails
of the serving stacks a failing test used into its report."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402 - after TRITON_INTERPRET, which the imports below must see

from freshrec.stack import ServingStack  # noqa: E402
from tests.fixtures.builds import BuildCache  # noqa: E402

LOG_TAIL_LINES = 60


@pytest.fixture(scope="session")
def builds(tmp_path_factory) -> BuildCache:
    """builds.get(spec) builds once per session; builds.copy(spec, dest) for a private copy."""
    return BuildCache(tmp_path_factory.mktemp("builds"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    # funcargs holds every fixture the test used, directly or through other fixtures
    stacks = {id(v): v for v in getattr(item, "funcargs", {}).values() if isinstance(v, ServingStack)}
    for stack in stacks.values():
        for name, tail in stack.log_tails(LOG_TAIL_LINES):
            report.sections.append((f"log tail: {name}", tail))
