"""bench.intake's Redis-alone row against a real redis-server: every send stored, the CPU and
the script's time per send measured."""

from __future__ import annotations

import numpy as np
import pytest

from bench.intake import _redis_alone


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_the_redis_alone_row_measures_stored_sends(tmp_path, appendfsync):
    row = _redis_alone(np.arange(1, 40), np.arange(1, 25), 60, appendfsync, tmp_path)
    fsync, sends, cpu_us, script_us = row
    assert (fsync, sends) == (appendfsync, 60)
    assert script_us > 0  # Redis's own count of the time inside the intake script
    assert cpu_us > 0
