"""Prequential (test-then-learn) replay of time-ordered events, for bench.quality.

Walk the events after the training cut in time order, in windows of `window_events`. For each
event, first ask the recommender for that user's top K, excluding every item the user has been
seen with so far (training events and earlier replayed events, kept client-side), and score a
hit if the event's item is in it. Then learning, in one of two ways:
- windowed (a plain `Recommender`): a window's questions are asked together, then the whole
  window goes to `learn`; the same as asking one by one, because nothing learns inside a window.
- streamed (a `StreamingRecommender`, e.g. freshrec online): each event is also handed to `send`
  right after its question, before its user's next one (freshrec: a Feedback.SendEach session,
  whose reply to each send comes once the user's live history holds it), and `learn` still closes
  each window (freshrec: Admin.Publish of the row updates). Events go in time order, in runs in
  which no user appears twice (`distinct_user_runs`): a run's questions are asked together, then
  the run is sent. That is the same as ask, send, ask, send, ... one event at a time, since
  between two `learn`s an answer depends only on its own user's events, and every earlier event of
  that user was sent in an earlier run.

Metrics, averaged over scored events (an event whose item the user had already seen cannot be
recommended and is not scored): recall@k = share of events whose item is in the top k (one
relevant item per question, so recall@k is the hit rate); NDCG@10 = 1 / log2(rank + 2) when the
item's 0-based rank is below 10, else 0.

This module has the popularity baseline and the served recommenders (Triton `recommend`: static,
static with app-sent history, and online with the updater learning); bench.peers adds the
retrained matrix peers, bench.sasrec the sequential one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from exporter.data import Interactions
from model_repository.scoring import trend_counts

log = logging.getLogger(__name__)

DEFAULT_WINDOW_EVENTS = 1000
DEFAULT_KS = (10, 50)
NDCG_K = 10
SERVED_CONCURRENCY = 8
FEEDBACK_CHUNK = 500
# the updater publishes only when asked (Admin.Publish once per window), never on its own clock;
# and it takes the replayed log as it happened, as every replay table so far was measured: items
# new after the cut grow the catalogue from their first event (updater.admission refuses them by
# default), and new users are not rate-bounded (a replay sends days of sign-ups in seconds)
REPLAY_UPDATER_ARGS = ("--publish-every-s", "1e9", "--publish-every-events", str(10**9),
                        "--grow-catalogue-from-feedback", "--max-new-users-per-min", str(10**9))


class Recommender(Protocol):
    """What the replay drives. `recommend` answers a batch of questions; `learn` receives a
    window's events (time order) after they were scored."""

    def recommend(self, user_ids: np.ndarray, excludes: Sequence[np.ndarray], k: int
                  ) -> list[np.ndarray]:
        """Per question, up to k item ids, best first, none of them in its exclude list."""
        ...

    def learn(self, events: Interactions) -> None: ...


@runtime_checkable
class StreamingRecommender(Recommender, Protocol):
    """A recommender that is also told each event right after its question (module docstring)."""

    def send(self, events: Interactions) -> None:
        """Events of distinct users, in time order, each asked already if its window is scored."""
        ...


@dataclass
class ReplayResult:
    """Metrics and costs of one recommender's replay. Seconds are wall time on this machine."""

    metrics: dict[str, float]
    scored: int
    skipped_repeats: int
    windows: int
    recommend_s: float
    learn_s: float
    send_s: float = 0.0
    runs: int = 0  # how many times the replay asked (a window, or a run of distinct users)
    # CPU seconds, where the caller measured them: the learner's process, and of it the learning
    # (freshrec: the updater's engine thread, row training and publishes; the rest is its intake)
    cpu_s: float = 0.0
    learn_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0  # freshrec with its log in Redis: the redis-server's (the intake)
    redis_ask_cpu_s: float = 0.0  # of it, while the app asked: retrieve's live-history reads
    ranks: list[int] = field(default_factory=list, repr=False)  # -1: not in the top K
    users: list[int] = field(default_factory=list, repr=False)  # who asked, one per rank
    items: list[int] = field(default_factory=list, repr=False)  # what they took, one per rank

    def hits(self, k: int) -> np.ndarray:
        """(scored,) float64: 1 where the event's item was in the top ``k``, per asked event."""
        ranks = np.asarray(self.ranks, np.int64)
        return ((ranks >= 0) & (ranks < k)).astype(np.float64)


def windows_of(events: Interactions, window_events: int) -> list[Interactions]:
    """Consecutive time-ordered slices of `window_events` events (the last may be shorter)."""
    if window_events < 1:
        raise ValueError(f"window_events must be >= 1, got {window_events}")
    return [events.take(slice(start, start + window_events))
            for start in range(0, len(events), window_events)]


def distinct_user_runs(events: Interactions) -> list[Interactions]:
    """Consecutive time-ordered slices, each as long as it can be without a user twice."""
    cuts, current = [0], set()
    for position, user in enumerate(events.user_ids.tolist()):
        if user in current:
            cuts.append(position)
            current = set()
        current.add(user)
    cuts.append(len(events))
    return [events.take(slice(a, b)) for a, b in zip(cuts, cuts[1:]) if b > a]


def seen_sets(train: Interactions) -> dict[int, set[int]]:
    seen: dict[int, set[int]] = {}
    for user, item in zip(train.user_ids.tolist(), train.item_ids.tolist()):
        seen.setdefault(user, set()).add(item)
    return seen


class RecentItems:
    """Each user's last `max_len` items, most recent last, as the app (or a sequential model)
    knows them: seeded from training events, extended by `add`."""

    def __init__(self, max_len: int, events: Interactions | None = None):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self.items: dict[int, deque[int]] = {}
        if events is not None:
            self.add(events)

    def add(self, events: Interactions) -> None:
        for user, item in zip(events.user_ids.tolist(), events.item_ids.tolist()):
            recent = self.items.get(user)
            if recent is None:
                recent = self.items[user] = deque(maxlen=self.max_len)
            recent.append(item)

    def of(self, user: int) -> np.ndarray:
        """(<= max_len,) int64 item ids, most recent last (empty for a user never seen)."""
        recent = self.items.get(user, ())
        return np.fromiter(recent, dtype=np.int64, count=len(recent))


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
    """Test-then-learn over `test` in windows, streamed when the recommender is a
    StreamingRecommender (module docstring). `scored_windows`: indices of the windows whose
    events are asked and scored (default all); every event is sent and every window learned."""
    k_max = max(ks)
    seen = seen_sets(train)
    windows = windows_of(test, window_events)
    scored_set = set(range(len(windows))) if scored_windows is None else set(scored_windows)
    streaming = isinstance(recommender, StreamingRecommender)
    ranks: list[int] = []
    asked: list[int] = []
    taken: list[int] = []
    skipped = runs = 0
    recommend_s = learn_s = send_s = 0.0
    for index, window in enumerate(windows):
        n_scored = len(ranks)
        for part in distinct_user_runs(window) if streaming else [window]:
            users, targets, excludes = [], [], []
            for user, item in zip(part.user_ids.tolist(), part.item_ids.tolist()):
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
                runs += 1
                started = time.perf_counter()
                answers = recommender.recommend(np.asarray(users, dtype=np.int64), excludes, k_max)
                recommend_s += time.perf_counter() - started
                if len(answers) != len(users):
                    raise ValueError(f"recommend answered {len(answers)} of {len(users)} questions")
                for answer, target in zip(answers, targets):
                    hit = np.flatnonzero(np.asarray(answer)[:k_max] == target)
                    ranks.append(int(hit[0]) if hit.size else -1)
                asked.extend(users)
                taken.extend(targets)
            if streaming:
                started = time.perf_counter()
                recommender.send(part)
                send_s += time.perf_counter() - started
        started = time.perf_counter()
        recommender.learn(window)
        learn_s += time.perf_counter() - started
        log.info("window %d/%d: %d scored", index + 1, len(windows), len(ranks) - n_scored)
    return ReplayResult(metrics=metrics_from_ranks(ranks, ks=ks), scored=len(ranks),
                        skipped_repeats=skipped, windows=len(windows), recommend_s=recommend_s,
                        learn_s=learn_s, send_s=send_s, runs=runs, ranks=ranks, users=asked,
                        items=taken)


def top_k_excluding(ranking: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of `ranking` (best first) that are not in `exclude`."""
    head = ranking[: k + len(exclude)]
    return head[~np.isin(head, exclude)][:k]


class PopularityRecommender:
    """Everyone gets the most frequent items of all events learned so far (training included),
    ties by lower id; recounted after each window. With ``half_life_s`` > 0 each event counts
    with its trend weight as of the newest event (model_repository.scoring.trend_counts): what
    is popular now, as the model's prior counts it."""

    def __init__(self, train: Interactions, *, half_life_s: float = 0.0):
        self.half_life_s = half_life_s
        self.items: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.learn(train)

    def learn(self, events: Interactions) -> None:
        self.items.append(events.item_ids)
        self.times.append(events.timestamps)
        ids, rows = np.unique(np.concatenate(self.items), return_inverse=True)
        if self.half_life_s > 0:
            times = np.concatenate(self.times)
            freq = trend_counts(rows, times, len(ids), as_of=float(times.max()),
                                half_life_s=self.half_life_s)
        else:
            freq = np.bincount(rows, minlength=len(ids))
        self.ranking = ids[np.lexsort((ids, -freq))]

    def recommend(self, user_ids, excludes, k):
        return [top_k_excluding(self.ranking, exclude, k) for exclude in excludes]


class ServedRecommender:
    """Asks Triton's `recommend` over gRPC (`SERVED_CONCURRENCY` calls in flight); learns
    nothing: the static base model, answering from the user's row and the history its version
    stored. `ask_history` (subclasses) says what HISTORY a question sends."""

    def __init__(self, triton_url: str, *, concurrency: int = SERVED_CONCURRENCY):
        from clients import Client

        self.client = Client(triton_url)
        self.pool = ThreadPoolExecutor(concurrency)
        self.versions_seen: set[int] = set()

    def ask_history(self, user: int) -> np.ndarray | None:
        return None

    def recommend(self, user_ids, excludes, k):
        def ask(args):
            user, exclude = args
            answer = self.client.recommend(user, k=k, history=self.ask_history(user), exclude=exclude)
            return np.asarray(answer.item_ids, dtype=np.int64), answer.version

        results = list(self.pool.map(ask, zip(user_ids.tolist(), excludes)))
        self.versions_seen.update(version for _, version in results)
        return [items for items, _ in results]

    def learn(self, events: Interactions) -> None:
        pass

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


class AppHistoryRecommender(ServedRecommender):
    """The static base model, with the app sending the user's last `history_len` items (training
    and replayed events so far, most recent last) as HISTORY on every request; the server learns
    nothing and keeps no live history (no feedback is sent)."""

    def __init__(self, triton_url: str, train: Interactions, *, history_len: int,
                 concurrency: int = SERVED_CONCURRENCY):
        super().__init__(triton_url, concurrency=concurrency)
        self.recent = RecentItems(history_len, train)

    def ask_history(self, user: int) -> np.ndarray | None:
        return self.recent.of(user)

    def send(self, events: Interactions) -> None:
        self.recent.add(events)  # what the app saw the user do; nothing goes to the server


class OnlineRecommender(ServedRecommender):
    """freshrec online: each event is sent through the updater sidecar right after its question
    (over one Feedback.SendEach session, whose reply per send comes once the events are durable
    and in their users' live histories; or straight to the updater's Redis log), each
    with its own timestamp; `learn` closes a window with Admin.Publish, which returns once Triton
    serves a version holding the row updates. Start the updater with REPLAY_UPDATER_ARGS so
    that is the only publish. `feedback_kind` "click" treats every event as a positive
    interaction, as the metrics do. ``shown_skips`` N > 0: the app showed each asked user the
    answer's top N, so before the event those of them the user did not take are sent as skips
    (same timestamp): negatives from items shown and skipped."""

    def __init__(self, triton_url: str, updater_url: str, *, feedback_kind: str = "click",
                 shown_skips: int = 0, concurrency: int = SERVED_CONCURRENCY,
                 redis_url: str | None = None, ask_meter: Callable[[], float] | None = None,
                 publish: bool = True,
                 after_learn: Callable[[OnlineRecommender, Interactions], None] | None = None):
        """``publish`` False: `learn` publishes nothing, so the server answers from the base
        version and the live history alone (issue 33's "publishing off").
        ``redis_url``: the updater keeps its log in this Redis (--redis), and the app writes
        each send straight to it (clients.RedisEventWriter) instead of to the updater.
        ``ask_meter``: a CPU clock (the redis-server's) read around each ask; `ask_cpu_s` sums
        what it ran while the app asked, i.e. while retrieve read the live histories.
        ``after_learn``: called with this and the window's events after each window's publish
        (bench.ablation.RetrainPusher: a retrained base pushed every few windows)."""
        from clients import RedisEventWriter, UpdaterClient

        super().__init__(triton_url, concurrency=concurrency)
        self.updater = UpdaterClient(updater_url)
        # the SendEach stream, opened by the first send; or the Redis writer
        self.session = RedisEventWriter(redis_url) if redis_url is not None else None
        self.feedback_kind = feedback_kind
        self.shown_skips = shown_skips
        self.shown: dict[int, np.ndarray] = {}  # each asked user's answer, until its event is sent
        self.sent = 0
        self.publishes = 0
        self.ask_meter = ask_meter
        self.ask_cpu_s = 0.0
        self.publish = publish
        self.after_learn = after_learn

    def recommend(self, user_ids, excludes, k):
        started = self.ask_meter() if self.ask_meter is not None else 0.0
        answers = super().recommend(user_ids, excludes, k)
        if self.ask_meter is not None:
            self.ask_cpu_s += self.ask_meter() - started
        if self.shown_skips:
            self.shown.update(zip(user_ids.tolist(), answers))
        return answers

    def _event(self, **fields) -> dict:
        # deterministic ids: a retried run is not learned twice
        self.sent += 1
        return dict(event_id=f"replay-{self.sent - 1}", **fields)

    def send(self, events: Interactions) -> None:
        batch = []
        for user, item, value, timestamp in zip(events.user_ids.tolist(), events.item_ids.tolist(),
                                                events.values.tolist(), events.timestamps.tolist()):
            # the app showed the answer's top `shown_skips` and the user took something else
            shown = self.shown.pop(user, None)
            for skipped in (shown[:self.shown_skips] if shown is not None else ()):
                if skipped != item:
                    batch.append(self._event(user_id=user, item_id=int(skipped), kind="skip",
                                             value=0.0, timestamp=float(timestamp)))
            batch.append(self._event(user_id=user, item_id=item, kind=self.feedback_kind,
                                     value=value, timestamp=float(timestamp)))
        if self.session is None:
            self.session = self.updater.feedback_session()
        for start in range(0, len(batch), FEEDBACK_CHUNK):
            reply = self.session.send(batch[start:start + FEEDBACK_CHUNK])
            if reply.rejected:
                raise RuntimeError(f"the updater rejected replayed events: {reply.rejected[:3]}")

    def learn(self, events: Interactions) -> None:
        if self.publish:
            self.updater.publish()
            self.publishes += 1
        if self.after_learn is not None:
            self.after_learn(self, events)

    def close(self) -> None:
        super().close()
        if self.session is not None:
            self.session.close()
        self.updater.close()
