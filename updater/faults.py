"""Crash points for the crash tests: `FRESHREC_UPDATER_CRASH_AT=<point>` makes the updater
SIGKILL itself when it reaches that point, as `kill -9` would. Unset (always, in production),
each check is one dictionary look-up."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

CRASH_ENV = "FRESHREC_UPDATER_CRASH_AT"
# mid_batch: half of a batch of events applied, nothing published
# before_rename: a complete, fsynced temporary version folder exists, not yet renamed
# after_rename: the new version is visible on disk, Triton not yet told to load it
# after_load: the new version answers (switched to, or loaded), not yet recorded as current
CRASH_POINTS = ("mid_batch", "before_rename", "after_rename", "after_load")
# a push's (Admin.Push): its base replayed and its user_tower version written and loaded, its
# retrieve version not yet written
MID_PUSH = "mid_push"
# corrupt_once: flip a byte of a shard of the next published version after its rename
FAULT_ENV = "FRESHREC_UPDATER_FAULT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        log.warning("crash point %s reached: SIGKILL", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def take_fault(name: str) -> bool:
    """True once if the FAULT_ENV names this fault (then it is cleared)."""
    if os.environ.get(FAULT_ENV) == name:
        del os.environ[FAULT_ENV]
        return True
    return False
