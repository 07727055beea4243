"""The prequential replay of bench.quality on tiny hand-made data (windowed and streamed), and once
through the real server and updater. Nothing here asserts a timing or a quality level of a trained
model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.replay import (
    AppHistoryRecommender,
    OnlineRecommender,
    PopularityRecommender,
    RecentItems,
    ServedRecommender,
    distinct_user_runs,
    metrics_from_ranks,
    replay,
    top_k_excluding,
)
from exporter.data import Interactions, read_dataset, split_by_time
from tests.fixtures.builds import SMALL

FIXED_RANKING = np.array([10, 3, 2, 5, 4, 1], dtype=np.int64)


def _events(rows):
    users, items, times = zip(*rows)
    return Interactions.from_arrays(users, items, np.ones(len(rows)), times)


TRAIN = _events([(1, 1, 1), (1, 2, 2), (2, 1, 3)])
# user 1 twice in window 0 (the second question must exclude the first answer's item), a repeat
# of (1, 3) in window 1 (not scored), and a user unknown in training
TEST = _events([(1, 3, 10), (1, 4, 11), (2, 2, 12), (1, 3, 13), (3, 5, 14)])


def _pairs(events):
    return list(zip(events.user_ids.tolist(), events.item_ids.tolist()))


class FixedRecommender:
    """Always the same ranking minus the exclusions; records what the replay did, in order."""

    def __init__(self):
        self.calls = []

    def recommend(self, user_ids, excludes, k):
        self.calls.append(("recommend", user_ids.tolist(), [sorted(e.tolist()) for e in excludes], k))
        return [top_k_excluding(FIXED_RANKING, e, k) for e in excludes]

    def learn(self, events):
        self.calls.append(("learn", _pairs(events)))


class StreamingFixed(FixedRecommender):
    """FixedRecommender that is also sent each event after its question."""

    def send(self, events):
        self.calls.append(("send", _pairs(events)))


# What the replay calls, in order: windowed for a recommender without `send`, streamed for one with
# it. Both ask the same questions, so a recommender that ignores what it is sent gets the same
# ranks: item 3 after 10 -> 1; item 4 after 10, 5 -> 2; item 2 after 10, 3 -> 2; item 5 is 4th for
# user 3, beyond K = 3 -> missed.
CALL_ORDERS = [
    pytest.param(FixedRecommender, [
        ("recommend", [1, 1, 2], [[1, 2], [1, 2, 3], [1]], 3),
        ("learn", [(1, 3), (1, 4), (2, 2)]),
        ("recommend", [3], [[]], 3),
        ("learn", [(1, 3), (3, 5)]),
    ], id="windowed"),
    # window 0 is (1, 3) (1, 4) (2, 2): user 1 twice, so two runs; the second question of user 1
    # comes after its first event was sent, and still excludes it
    pytest.param(StreamingFixed, [
        ("recommend", [1], [[1, 2]], 3),
        ("send", [(1, 3)]),
        ("recommend", [1, 2], [[1, 2, 3], [1]], 3),
        ("send", [(1, 4), (2, 2)]),
        ("learn", [(1, 3), (1, 4), (2, 2)]),
        ("recommend", [3], [[]], 3),  # (1, 3) again is a repeat: sent, not asked
        ("send", [(1, 3), (3, 5)]),
        ("learn", [(1, 3), (3, 5)]),
    ], id="streamed"),
]


@pytest.mark.parametrize("recommender, calls", CALL_ORDERS)
def test_replay_asks_before_learning_with_seen_items_excluded(recommender, calls):
    fake = recommender()
    result = replay(TRAIN, TEST, fake, window_events=3, ks=(1, 3))
    assert fake.calls == calls
    assert result.ranks == [1, 2, 2, -1]
    assert (result.scored, result.skipped_repeats) == (4, 1)


def test_windowed_replay_counts_windows_and_scores_the_ranks():
    result = replay(TRAIN, TEST, FixedRecommender(), window_events=3, ks=(1, 3))
    assert result.windows == 2
    assert result.metrics["recall@1"] == 0.0
    assert result.metrics["recall@3"] == pytest.approx(3 / 4)
    assert result.metrics["ndcg@10"] == pytest.approx((1 / math.log2(3) + 2 / math.log2(4)) / 4)


def test_streamed_replay_asks_once_per_run_of_distinct_users():
    result = replay(TRAIN, TEST, StreamingFixed(), window_events=3, ks=(1, 3))
    assert result.runs == 3


def test_replay_scores_only_the_chosen_windows_but_learns_all():
    fake = FixedRecommender()
    result = replay(TRAIN, TEST, fake, window_events=3, ks=(1, 3), scored_windows=[1])
    assert [c[0] for c in fake.calls] == ["learn", "recommend", "learn"]
    assert result.ranks == [-1] and result.skipped_repeats == 1


def test_streamed_replay_sends_unscored_windows_without_asking():
    fake = StreamingFixed()
    replay(TRAIN, TEST, fake, window_events=3, ks=(1, 3), scored_windows=[1])
    assert [c[0] for c in fake.calls] == ["send", "send", "learn", "recommend", "send", "learn"]


class LastItemNext:
    """Streams; answers each user with the items after the last one it was sent of that user
    (cyclic over 1..9), so an answer depends on every earlier event of its user. `learn` is a
    no-op, as between two publishes."""

    def __init__(self):
        self.last: dict[int, int] = {}

    def recommend(self, user_ids, excludes, k):
        answers = []
        for user, exclude in zip(user_ids.tolist(), excludes):
            start = self.last.get(user, 0)
            ranking = np.array([(start + j) % 9 + 1 for j in range(9)], dtype=np.int64)
            answers.append(top_k_excluding(ranking, exclude, k))
        return answers

    def send(self, events):
        for user, item in _pairs(events):
            self.last[user] = item

    def learn(self, events):
        pass


def test_streamed_runs_answer_as_asking_and_sending_one_event_at_a_time():
    # bursts (user 1 five times in a row), interleaved users, and a window cut inside a burst
    rows = [(1, 3, 10), (1, 4, 11), (2, 6, 12), (1, 5, 13), (3, 8, 14), (2, 7, 15), (1, 6, 16),
            (1, 7, 17), (3, 9, 18), (2, 1, 19), (1, 8, 20), (4, 2, 21)]
    test = _events(rows)
    got = replay(TRAIN, test, LastItemNext(), window_events=5, ks=(1, 3))
    # reference: one event at a time, ask then send, seen items excluded as the replay does
    one_by_one, seen, ranks = LastItemNext(), {1: {1, 2}, 2: {1}}, []
    for user, item, _ in rows:
        user_seen = seen.setdefault(user, set())
        if item not in user_seen:
            exclude = np.array(sorted(user_seen), dtype=np.int64)
            answer = one_by_one.recommend(np.array([user]), [exclude], 3)[0]
            hit = np.flatnonzero(answer == item)
            ranks.append(int(hit[0]) if hit.size else -1)
        user_seen.add(item)
        one_by_one.send(_events([(user, item, 0)]))
    assert got.ranks == ranks
    assert got.ranks.count(0) >= 5  # the streamed history mattered: most answers hit at once
    assert got.runs < len(rows)  # and questions of distinct users were asked together


def test_distinct_user_runs_cut_before_a_user_comes_back():
    events = _events([(1, 1, 1), (2, 1, 2), (1, 2, 3), (3, 1, 4), (2, 2, 5), (2, 3, 6)])
    runs = distinct_user_runs(events)
    assert [r.user_ids.tolist() for r in runs] == [[1, 2], [1, 3, 2], [2]]
    assert [r.timestamps.tolist() for r in runs] == [[1, 2], [3, 4, 5], [6]]
    assert distinct_user_runs(events.take(slice(0, 0))) == []


def test_recent_items_keep_the_last_n_most_recent_last():
    recent = RecentItems(2, TRAIN)
    assert recent.of(1).tolist() == [1, 2] and recent.of(2).tolist() == [1]
    recent.add(TEST.take(slice(0, 3)))  # (1, 3) (1, 4) (2, 2)
    assert recent.of(1).tolist() == [3, 4] and recent.of(2).tolist() == [1, 2]
    assert recent.of(99).tolist() == [] and recent.of(99).dtype == np.int64
    with pytest.raises(ValueError, match="max_len"):
        RecentItems(0)


class RecordingUpdater:
    """Stands in for UpdaterClient and its FeedbackSession: records sends and publishes."""

    def __init__(self):
        self.batches, self.publishes = [], 0

    def feedback_session(self):
        return self

    def send(self, events):
        self.batches.append(list(events))
        return type("Reply", (), {"rejected": []})()

    def publish(self):
        self.publishes += 1

    def close(self):
        pass


def replay_recorded(*, scored_windows=(), **options) -> OnlineRecommender:
    """OnlineRecommender(**options) over a RecordingUpdater, replayed over TRAIN and TEST in
    windows of 3. No server: gRPC channels connect lazily, and only ``scored_windows`` ask."""
    online = OnlineRecommender("127.0.0.1:9", "127.0.0.1:9", **options)
    online.updater.close()
    online.updater = RecordingUpdater()
    try:
        replay(TRAIN, TEST, online, window_events=3, ks=(1,), scored_windows=list(scored_windows))
    finally:
        online.close()
    return online


def test_online_sends_each_event_with_its_own_timestamp_and_publishes_per_window():
    online = replay_recorded()
    sent = [e for batch in online.updater.batches for e in batch]
    assert [(e["user_id"], e["item_id"], e["timestamp"]) for e in sent] == [
        (1, 3, 10.0), (1, 4, 11.0), (2, 2, 12.0), (1, 3, 13.0), (3, 5, 14.0)]
    assert [e["event_id"] for e in sent] == [f"replay-{n}" for n in range(5)]
    assert {e["kind"] for e in sent} == {"click"}
    # runs of distinct users, one send each; one publish per window
    assert [len(b) for b in online.updater.batches] == [1, 2, 2]
    assert online.updater.publishes == online.publishes == 2


def test_online_sends_the_shown_items_not_taken_as_skips_before_the_event(monkeypatch):
    from bench import replay as replay_module

    # every answer shows items 4, 9, 3 first (no server: the answer is fixed)
    monkeypatch.setattr(replay_module.ServedRecommender, "recommend",
                        lambda self, users, excludes, k: [np.array([4, 9, 3])] * len(users))
    online = replay_recorded(shown_skips=2, scored_windows=[0])
    sent = [(e["user_id"], e["item_id"], e["kind"], e["timestamp"])
            for batch in online.updater.batches for e in batch]
    # window 0 is asked: each event's user was shown 4 and 9 (took 3; then took 4, so only 9 is
    # skipped; then took 2); window 1 is not asked: nothing shown, nothing skipped
    assert sent == [(1, 4, "skip", 10.0), (1, 9, "skip", 10.0), (1, 3, "click", 10.0),
                    (1, 9, "skip", 11.0), (1, 4, "click", 11.0),
                    (2, 4, "skip", 12.0), (2, 9, "skip", 12.0), (2, 2, "click", 12.0),
                    (1, 3, "click", 13.0), (3, 5, "click", 14.0)]
    assert len({e["event_id"] for batch in online.updater.batches for e in batch}) == len(sent)


def test_the_ask_meter_counts_only_while_the_app_asks(monkeypatch):
    """bench.quality charges the redis-server's CPU to updating less what it ran during asks:
    the meter is read around each ask and nowhere else."""
    from bench import replay as replay_module

    clock = {"now": 0.0}

    def asking(self, users, excludes, k):
        clock["now"] += 1.0  # the meter's clock runs only inside an ask
        return [np.array([4, 9, 3])] * len(users)

    monkeypatch.setattr(replay_module.ServedRecommender, "recommend", asking)
    online = OnlineRecommender("127.0.0.1:9", "127.0.0.1:9", ask_meter=lambda: clock["now"])
    online.updater.close()

    class SlowSends(RecordingUpdater):
        def send(self, events):
            clock["now"] += 100.0  # a send's time is not an ask's
            return super().send(events)

    online.updater = SlowSends()
    try:
        result = replay(TRAIN, TEST, online, window_events=3, ks=(1,), scored_windows=[0, 1])
    finally:
        online.close()
    assert result.runs > 0
    assert online.ask_cpu_s == result.runs  # one second per ask, none of the sends' hundreds


def test_app_history_is_what_the_app_saw_and_nothing_is_sent():
    app = AppHistoryRecommender("127.0.0.1:9", TRAIN, history_len=2)
    try:
        assert app.ask_history(1).tolist() == [1, 2]
        app.send(TEST.take(slice(0, 2)))
        assert app.ask_history(1).tolist() == [3, 4]
        assert app.ask_history(7).tolist() == []
        assert not hasattr(app, "updater")
    finally:
        app.close()


def test_metrics_from_ranks_by_hand():
    got = metrics_from_ranks([0, 9, 10, -1], ks=(10, 50))
    assert got["recall@10"] == pytest.approx(0.5)
    assert got["recall@50"] == pytest.approx(0.75)
    assert got["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(11)) / 4)


def test_popularity_recounts_after_each_window():
    pop = PopularityRecommender(TRAIN)
    assert pop.ranking.tolist() == [1, 2]
    pop.learn(TEST.take(slice(0, 3)))  # items 3, 4, 2: item 2 ties item 1, lower id first
    assert pop.ranking.tolist() == [1, 2, 3, 4]
    answers = pop.recommend(np.array([1, 2]), [np.array([1, 2]), np.array([], np.int64)], 2)
    assert [a.tolist() for a in answers] == [[3, 4], [1, 2]]


class ExclusionChecked:
    """Wraps a recommender and fails if any answer holds an excluded item; streams when the
    wrapped one does."""

    def __init__(self, inner):
        self.inner = inner
        if hasattr(inner, "send"):
            self.send = inner.send

    def recommend(self, user_ids, excludes, k):
        answers = self.inner.recommend(user_ids, excludes, k)
        for answer, exclude in zip(answers, excludes):
            assert not set(answer.tolist()) & set(exclude.tolist())
            assert len(answer) == k
        return answers

    def learn(self, events):
        self.inner.learn(events)


@pytest.mark.integration
def test_served_replay_static_app_history_and_online(builds, stack):
    data = read_dataset(builds.get(SMALL).ratings)
    train, test = split_by_time(data.interactions)
    test = test.take(slice(0, 240))
    static = ServedRecommender(stack.grpc_url)
    app = AppHistoryRecommender(stack.grpc_url, train, history_len=50)
    # the fixture's updater also publishes on its own clock; the row of bench.quality starts one
    # with REPLAY_UPDATER_ARGS
    online = OnlineRecommender(stack.grpc_url, stack.updater.url)
    try:
        results = [replay(train, test, ExclusionChecked(r), window_events=80)
                   for r in (static, app, online)]
    finally:
        for r in (static, app, online):
            r.close()
    assert len({r.scored for r in results}) == 1 and results[0].scored > 0
    assert {r.windows for r in results} == {3}
    for result in results:
        assert 0.0 <= result.metrics["recall@10"] <= result.metrics["recall@50"] <= 1.0
    # static and app-sent history: one version answered throughout; online: the updater took
    # every event (its own timestamp included) and later answers came from versions it published
    assert len(static.versions_seen) == 1 and app.versions_seen == static.versions_seen
    assert online.sent == len(test) and online.publishes == 3
    assert max(online.versions_seen) > max(static.versions_seen)
