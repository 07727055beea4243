"""`with` for the clients: one definition of "a client used in a with block is closed at its end"."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T", bound="ClosedOnExit")


class ClosedOnExit:
    """Mix-in for a class with ``close()``: ``with Cls(...) as c:`` yields it and closes it after,
    however the block ends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
