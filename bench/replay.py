"""Prequential (test-then-learn) replay of time-ordered events, for bench.quality.

Walk the events after the training cut in time order, in windows of `window_events`. For each
event, first ask the recommender for that user's top K, excluding every item the user has been
seen with so far (training events and earlier replayed events, kept client-side), and score a
hit if the event's item is in it; only then does the window's events go to the recommender as
feedback (`learn`). A window's questions are asked together (`recommend` gets the batch), which
is the same as asking one by one because nothing learns inside a window; the exclusion of each
question is the user's seen set at that event's moment.

Metrics, averaged over scored events (an event whose item the user had already seen cannot be
recommended and is not scored): recall@k = share of events whose item is in the top k (one
relevant item per question, so recall@k is the hit rate); NDCG@10 = 1 / log2(rank + 2) when the
item's 0-based rank is below 10, else 0.

Recommenders implement `Recommender`; this module has the popularity baseline and the served
one (Triton `recommend`, optionally with the updater learning); bench.quality adds ALS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from exporter.data import Interactions

log = logging.getLogger(__name__)

DEFAULT_WINDOW_EVENTS = 1000
DEFAULT_KS = (10, 50)
NDCG_K = 10
SERVED_CONCURRENCY = 8
FEEDBACK_CHUNK = 500


class Recommender(Protocol):
    """What the replay drives. `recommend` answers a batch of questions; `learn` receives a
    window's events (time order) after they were scored."""

    def recommend(self, user_ids: np.ndarray, excludes: Sequence[np.ndarray], k: int
                  ) -> list[np.ndarray]:
        """Per question, up to k item ids, best first, none of them in its exclude list."""
        ...

    def learn(self, events: Interactions) -> None: ...


@dataclass
class ReplayResult:
    """Metrics and costs of one recommender's replay. Seconds are wall time on this machine."""

    metrics: dict[str, float]
    scored: int
    skipped_repeats: int
    windows: int
    recommend_s: float
    learn_s: float
    ranks: list[int] = field(default_factory=list, repr=False)  # -1: not in the top K


def windows_of(events: Interactions, window_events: int) -> list[Interactions]:
    """Consecutive time-ordered slices of `window_events` events (the last may be shorter)."""
    if window_events < 1:
        raise ValueError(f"window_events must be >= 1, got {window_events}")
    return [events.take(slice(start, start + window_events))
            for start in range(0, len(events), window_events)]


def seen_sets(train: Interactions) -> dict[int, set[int]]:
    seen: dict[int, set[int]] = {}
    for user, item in zip(train.user_ids.tolist(), train.item_ids.tolist()):
        seen.setdefault(user, set()).add(item)
    return seen


def metrics_from_ranks(ranks: Sequence[int], *, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """recall@k for each k and ndcg@10 from the 0-based rank of each scored event (-1: missed)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    found = ranks >= 0
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(found & (ranks < k))) if ranks.size else float("nan")
    gains = np.where(found & (ranks < NDCG_K), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    out[f"ndcg@{NDCG_K}"] = float(gains.mean()) if ranks.size else float("nan")
    return out


def replay(train: Interactions, test: Interactions, recommender: Recommender, *,
           window_events: int = DEFAULT_WINDOW_EVENTS, ks: Sequence[int] = DEFAULT_KS,
           scored_windows: Iterable[int] | None = None) -> ReplayResult:
    """Test-then-learn over `test` in windows (module docstring). `scored_windows`: indices of
    the windows whose events are asked and scored (default all); every window is learned."""
    k_max = max(ks)
    seen = seen_sets(train)
    windows = windows_of(test, window_events)
    scored_set = set(range(len(windows))) if scored_windows is None else set(scored_windows)
    ranks: list[int] = []
    skipped = 0
    recommend_s = learn_s = 0.0
    for index, window in enumerate(windows):
        users, targets, excludes = [], [], []
        for user, item in zip(window.user_ids.tolist(), window.item_ids.tolist()):
            user_seen = seen.setdefault(user, set())
            if index in scored_set:
                if item in user_seen:
                    skipped += 1
                else:
                    users.append(user)
                    targets.append(item)
                    excludes.append(np.fromiter(user_seen, dtype=np.int64, count=len(user_seen)))
            user_seen.add(item)
        if users:
            started = time.perf_counter()
            answers = recommender.recommend(np.asarray(users, dtype=np.int64), excludes, k_max)
            recommend_s += time.perf_counter() - started
            if len(answers) != len(users):
                raise ValueError(f"recommend answered {len(answers)} of {len(users)} questions")
            for answer, target in zip(answers, targets):
                hit = np.flatnonzero(np.asarray(answer)[:k_max] == target)
                ranks.append(int(hit[0]) if hit.size else -1)
        started = time.perf_counter()
        recommender.learn(window)
        learn_s += time.perf_counter() - started
        log.info("window %d/%d: %d scored", index + 1, len(windows), len(users))
    return ReplayResult(metrics=metrics_from_ranks(ranks, ks=ks), scored=len(ranks),
                        skipped_repeats=skipped, windows=len(windows), recommend_s=recommend_s,
                        learn_s=learn_s, ranks=ranks)


def top_k_excluding(ranking: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of `ranking` (best first) that are not in `exclude`."""
    head = ranking[: k + len(exclude)]
    return head[~np.isin(head, exclude)][:k]


class PopularityRecommender:
    """Everyone gets the most frequent items of all events learned so far (training included),
    ties by lower id; recounted after each window."""

    def __init__(self, train: Interactions):
        self.counts: dict[int, int] = {}
        self.learn(train)

    def learn(self, events: Interactions) -> None:
        items, counts = np.unique(events.item_ids, return_counts=True)
        for item, count in zip(items.tolist(), counts.tolist()):
            self.counts[item] = self.counts.get(item, 0) + count
        ids = np.fromiter(self.counts, dtype=np.int64, count=len(self.counts))
        freq = np.fromiter(self.counts.values(), dtype=np.int64, count=len(self.counts))
        self.ranking = ids[np.lexsort((ids, -freq))]

    def recommend(self, user_ids, excludes, k):
        return [top_k_excluding(self.ranking, exclude, k) for exclude in excludes]


class ServedRecommender:
    """Asks Triton's `recommend` over gRPC (`SERVED_CONCURRENCY` calls in flight). With an
    `updater_url`, `learn` sends the window as feedback through the updater, then Admin Publish,
    which returns once Triton serves a version holding it; without one, nothing learns (the
    static base model). `feedback_kind` "click" treats every event as a positive interaction,
    as the metrics do."""

    def __init__(self, triton_url: str, *, updater_url: str | None = None,
                 feedback_kind: str = "click", concurrency: int = SERVED_CONCURRENCY):
        from clients import Client, UpdaterClient

        self.client = Client(triton_url)
        self.updater = UpdaterClient(updater_url) if updater_url else None
        self.feedback_kind = feedback_kind
        self.pool = ThreadPoolExecutor(concurrency)
        self.sent = 0
        self.versions_seen: set[int] = set()

    def recommend(self, user_ids, excludes, k):
        def ask(args):
            user, exclude = args
            answer = self.client.recommend(int(user), k=k, exclude=exclude)
            return np.asarray(answer.item_ids, dtype=np.int64), answer.version

        results = list(self.pool.map(ask, zip(user_ids.tolist(), excludes)))
        self.versions_seen.update(version for _, version in results)
        return [items for items, _ in results]

    def learn(self, events: Interactions) -> None:
        if self.updater is None:
            return
        batch = []
        for user, item, value in zip(events.user_ids.tolist(), events.item_ids.tolist(),
                                     events.values.tolist()):
            # deterministic ids: a retried window is not learned twice
            batch.append(dict(event_id=f"replay-{self.sent}", user_id=user, item_id=item,
                              kind=self.feedback_kind, value=value))
            self.sent += 1
        for start in range(0, len(batch), FEEDBACK_CHUNK):
            reply = self.updater.feedback_batch(batch[start:start + FEEDBACK_CHUNK])
            if reply.rejected:
                raise RuntimeError(f"the updater rejected replayed events: {reply.rejected[:3]}")
        self.updater.publish()

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()
        if self.updater is not None:
            self.updater.close()
