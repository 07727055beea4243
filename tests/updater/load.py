"""Recommend calls under way while a test publishes, pushes or rolls back."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

from clients import Client


@dataclass
class Load:
    failures: list = field(default_factory=list)  # repr of every failed call
    seen: set = field(default_factory=set)  # the VERSIONs that answered
    served: int = 0


@contextlib.contextmanager
def recommend_load(grpc_url: str, user_ids, *, threads: int = 4):
    """``threads`` clients asking recommend for ``user_ids`` in turn until the block ends."""
    load, stop = Load(), threading.Event()

    def hammer(seed):
        with Client(grpc_url) as client:
            n = 0
            while not stop.is_set():
                try:
                    load.seen.add(client.recommend(user_ids[(seed + n) % len(user_ids)], k=5).version)
                    load.served += 1
                except Exception as exc:  # noqa: BLE001 - any failure is the finding
                    load.failures.append(repr(exc))
                n += 1

    running = [threading.Thread(target=hammer, args=(s,)) for s in range(threads)]
    for t in running:
        t.start()
    try:
        yield load
    finally:
        stop.set()
        for t in running:
            t.join()
