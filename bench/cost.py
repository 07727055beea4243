"""What answers and feedback cost in CPU, and in money at a stated price (issue 29).

CPU is read from the processes that do the work (psutil: a process and its live children, user
plus system time), so the load generator's own CPU is never counted:
- a recommendation: tritonserver and its python-backend stubs, over a locust row (bench.e2e);
- a feedback event: the updater (intake, training, publishing) plus tritonserver and its stubs
  (the switches to each published version), while events are sent as fast as one client can;
- the peers, in process (no server, no network: a floor for what serving them would cost):
  FAISS's exact inner-product index over the same item table for the same top-K, and
  implicit's ALS refitted on a log of the same catalogue every 1,000 events (what keeping a
  batch model current costs).

    cost per million = CPU s per 1,000 x 1,000 / 3,600 x price per core-hour
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import psutil

PRICE_PER_CORE_HOUR = 0.04  # USD: about an on-demand cloud vCPU-hour in 2026 (stated, not measured)
FEEDBACK_EVENTS = 20_000
FEEDBACK_BATCH = 100
PEER_QUERIES = 2_000
ALS_LOG_EVENTS = 100_000
ALS_EVERY = 1_000


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


@dataclass(frozen=True)
class Cost:
    what: str
    cpu_s: float
    count: int  # requests or events

    @property
    def per_1000_s(self) -> float:
        return self.cpu_s / self.count * 1000 if self.count else float("nan")

    def per_million(self, price: float = PRICE_PER_CORE_HOUR) -> float:
        return self.per_1000_s * 1000 / 3600 * price

    def row(self, price: float = PRICE_PER_CORE_HOUR) -> list:
        return [self.what, self.count, f"{self.per_1000_s:.3f}", f"{self.per_million(price):.4f}"]


def feedback_cost(updater_url: str, pids: list[int], n_users: int, item_ids: np.ndarray, *,
                  events: int = FEEDBACK_EVENTS, batch: int = FEEDBACK_BATCH,
                  seed: int = 1) -> Cost:
    """``events`` clicks of random users on Zipf-drawn items, ``batch`` a Send, as fast as one
    client sends, then a publish; the CPU of ``pids`` (each with its children) meanwhile."""
    from clients import UpdaterClient

    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.2, size=events) - 1, len(item_ids) - 1)
    users = rng.integers(0, n_users, size=events)
    before = sum(tree_cpu_s(p) for p in pids)
    with UpdaterClient(updater_url) as up:
        for start in range(0, events, batch):
            up.feedback_batch([dict(event_id=f"cost-{seed}-{n}", user_id=int(users[n]),
                                    item_id=int(item_ids[ranks[n]]), kind="click")
                               for n in range(start, min(start + batch, events))])
        up.publish()  # every event trained and served
    return Cost("freshrec feedback: intake, training, publishing (updater + Triton)",
                sum(tree_cpu_s(p) for p in pids) - before, events)


def faiss_cost(item_rows: np.ndarray, k: int, batch: int, *, queries: int = PEER_QUERIES,
               seed: int = 2) -> Cost:
    """FAISS IndexFlatIP (exact, like score_topk) over ``item_rows``: CPU per query in process."""
    import faiss

    index = faiss.IndexFlatIP(item_rows.shape[1])
    index.add(np.ascontiguousarray(item_rows, np.float32))
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(queries, item_rows.shape[1])).astype(np.float32)
    started = time.process_time()
    for start in range(0, queries, batch):
        index.search(q[start:start + batch], k)
    return Cost(f"peer: FAISS IndexFlatIP in process, batch {batch}",
                time.process_time() - started, queries)


def als_cost(n_users: int, n_items: int, *, events: int = ALS_LOG_EVENTS, every: int = ALS_EVERY,
             seed: int = 3) -> Cost:
    """implicit's ALS (bench.peers.ALSPeer) fitted on a log of ``events`` clicks over the same
    catalogue: one refit is what ``every`` new events cost a peer that stays current by
    refitting."""
    import scipy.sparse as sp

    from bench.peers import ALSPeer

    rng = np.random.default_rng(seed)
    items = np.minimum(rng.zipf(1.2, size=events) - 1, n_items - 1)
    users = rng.integers(0, n_users, size=events)
    matrix = sp.csr_matrix((np.ones(events, np.float32), (users, items)),
                           shape=(n_users, n_items))
    matrix.data[:] = 1.0
    started = time.process_time()
    ALSPeer().fit(matrix)
    return Cost(f"peer: ALS refitted every {every:,} events ({events:,}-event log)",
                time.process_time() - started, every)
