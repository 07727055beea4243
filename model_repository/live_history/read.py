"""What a live-history read returns, whichever store answers it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LiveRead:
    """One batch's read: item ids (int64, most recent last) and the newest event's time per
    user that has a live history, and the newest event time of all (-inf: none yet)."""

    items: dict[int, np.ndarray]
    last_at: dict[int, float]
    clock: float


NOTHING = LiveRead({}, {}, -np.inf)
