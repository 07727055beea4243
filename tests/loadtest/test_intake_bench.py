"""bench.intake's Redis-alone rows against a real redis-server: every send stored (through
freshrec's intake and as a peer's plain log), the CPU and the time inside Redis per send."""

from __future__ import annotations

import numpy as np
import pytest

from bench.intake import INTAKE_SCRIPT, PEER_LOG, _redis_alone


@pytest.mark.parametrize("writes", [INTAKE_SCRIPT, PEER_LOG])
@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_the_redis_alone_row_measures_stored_sends(tmp_path, appendfsync, writes):
    # _redis_alone raises unless the stream holds every send
    row = _redis_alone(np.arange(1, 40), np.arange(1, 25), 60, appendfsync, tmp_path, writes=writes)
    fsync, written, sends, cpu_us, inside_us = row
    assert (fsync, written, sends) == (appendfsync, writes, 60)
    assert inside_us > 0  # Redis's own count of the time inside the script or the XADDs
    assert cpu_us > 0
