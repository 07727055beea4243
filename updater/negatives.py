"""Negative item rows for an event, drawn by hashing (splitmix64) its (seed, offset, draw).

A pure function of the event's offset: replaying the same events from the same tables gives the
same tables, which is what crash recovery relies on (updater.engine), and drawing a handful
costs a few microseconds where seeding a numpy generator per event cost 35.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_SPLITMIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _splitmix64(x: int) -> int:
    """Steele et al.'s finaliser on a 64-bit unsigned int (Python ints, wrapped to 64 bits):
    a handful of negatives per event costs less as ints than as numpy calls."""
    z = (x + _SPLITMIX[0]) & _MASK64
    z = ((z ^ (z >> 30)) * _SPLITMIX[1]) & _MASK64
    z = ((z ^ (z >> 27)) * _SPLITMIX[2]) & _MASK64
    return z ^ (z >> 31)


def draw_negatives(seed: int, offset: int, count: int, n_items: int, item_row: int) -> np.ndarray:
    """``count`` draws of item rows in [0, n_items) other than ``item_row``, deduplicated and
    sorted: a pure function of (seed, offset), so a replay draws the same ones."""
    key = (offset * 1024 ^ seed * 0xD1B54A32D192ED03) & _MASK64
    draws = {_splitmix64((key + j) & _MASK64) % (n_items - 1) for j in range(count)}
    return np.array(sorted(d + (d >= item_row) for d in draws), np.int64)  # never the event's item


def _splitmix64_many(x: np.ndarray) -> np.ndarray:
    """`_splitmix64` on a uint64 array (numpy's uint64 arithmetic wraps as the masks do)."""
    z = x + np.uint64(_SPLITMIX[0])
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_SPLITMIX[1])
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_SPLITMIX[2])
    return z ^ (z >> np.uint64(31))


def draw_negatives_many(seed: int, offsets: np.ndarray, count: int, n_items: np.ndarray,
                        item_rows: np.ndarray) -> np.ndarray:
    """`draw_negatives` for T events at once: (T, count) int64, each row sorted, a draw that
    repeats an earlier one of its row -1 (what `draw_negatives` deduplicates away)."""
    key = ((offsets.astype(np.uint64) * np.uint64(1024))
           ^ np.uint64((seed * 0xD1B54A32D192ED03) & _MASK64))
    draws = _splitmix64_many(key[:, None] + np.arange(count, dtype=np.uint64)[None, :])
    draws = (draws % (n_items.astype(np.uint64) - np.uint64(1))[:, None]).astype(np.int64)
    draws = np.sort(draws + (draws >= item_rows[:, None]), axis=1)
    draws[:, 1:][draws[:, 1:] == draws[:, :-1]] = -1
    return draws
