"""A table with headroom for the trainer (updater.trainer): appends without copying every time."""

from __future__ import annotations

import numpy as np


class Grown:
    """A table with headroom: rows [0, n) are live, capacity doubles when it runs out."""

    def __init__(self, array: np.ndarray, fill):
        self.n = array.shape[0]
        self.fill = fill
        self.data = np.array(array, copy=True)

    def append(self, row) -> int:
        if self.n == self.data.shape[0]:
            grown = np.full((max(2 * self.n, 16), *self.data.shape[1:]), self.fill,
                            dtype=self.data.dtype)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n] = row
        self.n += 1
        return self.n - 1

    def delete(self, row: int) -> None:
        self.data[row : self.n - 1] = self.data[row + 1 : self.n].copy()
        self.n -= 1
        self.data[self.n] = self.fill

    def truncate(self, n: int) -> None:
        self.data[n : self.n] = self.fill
        self.n = n

    @property
    def live(self) -> np.ndarray:
        return self.data[: self.n]
