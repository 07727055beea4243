"""Each served version's quality record: the replay-style hit rate of its own answers.

Prequential, test then learn. Before the trainer applies a batch of events, the engine hands
the batch to `QualityMeter.measure` with the version that serves while those events arrive (the
newest published one: every event of the batch is after its ``feedback_offset``, so it has not
learned from them). Up to ``QualityPolicy.events_per_batch`` of the batch's positive events,
evenly spaced over it, are asked of that version with the real serving code in process
(`model_repository.serving.Retriever` over the version's folder: numpy, what Triton's retrieve
runs), each as retrieve answers a recommend for the user just before the event:

    Query(user_id, k=10, exclude_seen=True)

with the user's history as it stood then handed to the Retriever as its live history read
(`_HistoryBefore`), not as a sent HISTORY: retrieve takes a sent HISTORY as the user's now (age 0
for the session gate), a live one at the age of the user's newest event on the log's clock, and
that is what a recommend without HISTORY gets. So the history is pooled, excluded (exclude_seen)
and aged as a live read is. A hit: the event's item is in that top 10. As in bench.replay, an
event whose item the user has already (here: in the history) is not asked (exclude_seen hides
it), and an event whose item the version does not know is a miss (it could not answer it).

One `Retriever.answer` call per batch, and one more per round when a user has several asked
events in it (round r holds each user's r-th: a live read gives one history per user). Its CPU
is counted apart from training (``cpu_s``, `freshrec status`'s ``quality_cpu_s``); what it costs
is measured in updater/settings.py (bench.quality_record): mostly loading each version's
Retriever, then the questions.

The history is the trainer's stored history of the user (the version's ``user_history``, then
each positive event since, in log order; the last H). That is what retrieve reads except for a
user of the build with 1 to H-1 positive events in the log: the live store holds only those
events and retrieve reads them instead of the stored history, while this holds the stored items
before them, so the measured answer can differ from the served one there. Users the new-user
bound deferred (updater.admission) have no trainer row: their batch's own events are their
history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.live_history import NOTHING, LiveRead
from model_repository.serving import Query, Retriever
from updater.events import Event, label
from updater.settings import QualityPolicy

log = logging.getLogger(__name__)

K = 10  # the hit rate's top K: what the canary of issue 28 gates on


@dataclass(frozen=True)
class QualityRecord:
    """What a version's answers scored while it served: ``events`` asked, ``hits`` among them
    (the item in the top ``k``), over the log offsets ``first_offset``..``last_offset`` (every
    event it served, asked or not; 0: none yet); its parent's hit rate beside it once known."""

    version: int
    parent: int | None
    k: int = K
    events: int = 0
    hits: int = 0
    first_offset: int = 0
    last_offset: int = 0
    parent_events: int = 0
    parent_hit_rate: float | None = None  # None: the parent has no record (or asked nothing)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.events if self.events else 0.0

    @property
    def below_parent(self) -> bool:
        """Its hit rate fell below its parent's (both asked something). At the 0.1 s publish
        cadence a version asks tens of events: read ``events`` beside it."""
        return bool(self.events and self.parent_hit_rate is not None
                    and self.hit_rate < self.parent_hit_rate)

    def to_dict(self) -> dict:
        """The record as the manifest's ``quality`` field and Status show it."""
        return {**asdict(self), "hit_rate": self.hit_rate, "below_parent": self.below_parent}

    @classmethod
    def from_dict(cls, raw: dict) -> QualityRecord:
        fields = cls.__dataclass_fields__
        return cls(**{name: value for name, value in raw.items() if name in fields})

    def against(self, parent: QualityRecord | None) -> QualityRecord:
        """This record with ``parent``'s hit rate beside it (None: no parent record)."""
        if parent is None or not parent.events:
            return replace(self, parent_events=0, parent_hit_rate=None)
        return replace(self, parent_events=parent.events, parent_hit_rate=parent.hit_rate)


class _HistoryBefore:
    """A live-history reader (model_repository.live_history's read API) answering with one
    round's histories as they stood before each asked event."""

    def __init__(self):
        self.state: LiveRead = NOTHING

    def read(self, user_ids, *, clock: bool = False) -> LiveRead:
        return self.state


@dataclass(frozen=True)
class _Asked:
    event: Event
    history: list[int]  # item ids, most recent last
    last_at: float  # the user's newest history event time (-inf: none)
    clock: float  # the newest positive event time of all (-inf: none)


class QualityMeter:
    """The running record of the serving version; `close` hands back a version's final one."""

    def __init__(self, *, policy: QualityPolicy | None = None):
        self.policy = policy or QualityPolicy()
        self.cpu_s = 0.0  # thread CPU s spent measuring, since start
        self.asked, self.hits = 0, 0  # over every version measured, since start (a canary's arms)
        self.record: QualityRecord | None = None  # of the version measured last
        self._reader = _HistoryBefore()
        self._retriever: Retriever | None = None
        self._refused: Path | None = None  # a version folder the Retriever could not load
        self._clock = -np.inf  # the log's clock as of the events walked so far

    def measure(self, events: Sequence[Event], trainer, version_dir: Path) -> None:
        """Ask the serving version (``version_dir``) about ``events`` (log order), before
        ``trainer`` (updater.trainer.SparseTrainer) applies them; its histories are read."""
        if not self.policy.events_per_batch or not events:
            return
        started = time.thread_time()
        try:
            if self._serving(Path(version_dir)):
                self._measure(events, trainer)
        finally:
            self.cpu_s += time.thread_time() - started

    def close(self, version: int | None) -> QualityRecord | None:
        """``version`` stopped serving (a newer one was published): its final record, or None
        when nothing was measured while it served."""
        record = self.record
        if record is None or record.version != version:
            return None
        self.record, self._retriever = None, None
        return record

    def _serving(self, version_dir: Path) -> bool:
        """Load the Retriever of the serving version when it changed; False if it cannot be."""
        if self._retriever is not None and self._retriever.version_dir == version_dir:
            return True
        if self._refused == version_dir:
            return False
        try:
            retriever = Retriever(version_dir, live_history=self._reader)
        except (versions.VersionError, ValueError, OSError) as exc:
            # e.g. a version written before tower tables existed: served through the user_tower
            # model, which the updater does not call
            log.warning("no quality record for %s: %s", version_dir, exc)
            self._refused = version_dir
            return False
        self._retriever = retriever
        if self.record is None or self.record.version != retriever.version:
            self.record = QualityRecord(retriever.version, retriever.manifest.parent,
                                        k=min(K, retriever.n_items))
        self._clock = max(self._clock, retriever.clock)
        return True

    def _measure(self, events: Sequence[Event], trainer) -> None:
        positives = [e for e in events if label(e) > 0]  # what enters a history (events.positives)
        # the clock before each positive event, and after the last
        clocks = np.maximum.accumulate([self._clock, *(e.timestamp for e in positives)])
        self._clock = float(clocks[-1])
        picked = np.arange(len(positives))
        if len(picked) > self.policy.events_per_batch:
            # evenly spaced: deterministic, so a replay after a crash asks the same ones
            picked = np.unique(np.linspace(0, len(picked) - 1, self.policy.events_per_batch)
                               .round().astype(int))
        asked = self._before(positives, set(picked.tolist()), clocks, trainer)
        hits = sum(self._ask(round_) for round_ in _rounds(asked))
        self.asked, self.hits = self.asked + len(asked), self.hits + hits
        record = self.record
        self.record = replace(record, events=record.events + len(asked), hits=record.hits + hits,
                              first_offset=record.first_offset or events[0].offset,
                              last_offset=events[-1].offset)

    @staticmethod
    def _before(positives: list[Event], picked: set[int], clocks: np.ndarray, trainer
                ) -> list[_Asked]:
        """The picked positive events that can be asked (a repeat of an item in the history
        cannot), each with its user's history and newest event time as they stood before it:
        the trainer's, moved on by the user's earlier positive events of the batch, as the live
        history moves. Only the picked events' users are followed."""
        item_ids = trainer.t[schema.ITEM_IDS].data
        stored = trainer.t[schema.USER_HISTORY].data
        stored_last_at = trainer.t[schema.USER_LAST_AT].data
        needed = {positives[i].user_id for i in picked}
        users: dict[int, tuple[list[int], float]] = {}  # lists: per-event numpy calls cost more
        asked = []
        for i, e in enumerate(positives):
            if e.user_id not in needed:
                continue
            if e.user_id in users:
                history, last_at = users[e.user_id]
            elif (row := trainer.user_index.get(e.user_id)) is not None:
                rows = stored[row]
                history, last_at = item_ids[rows[rows >= 0]].tolist(), float(stored_last_at[row])
            else:
                history, last_at = [], -np.inf
            if i in picked and e.item_id not in history:
                asked.append(_Asked(e, history, last_at, float(clocks[i])))
            users[e.user_id] = ([*history, e.item_id][-trainer.history_len:],
                                max(last_at, e.timestamp))
        return asked

    def _ask(self, asked: list[_Asked]) -> int:
        """Hits among ``asked`` (no user twice), in one Retriever.answer call."""
        retriever = self._retriever
        # One clock for the call, as a live read has: each user's newest event time is moved by
        # the gap between it and that event's own clock, so every age (clock - last_at) is the
        # one its event saw, however long the batch spans on the log's clock (a replay's can
        # span hours).
        clock = max(a.clock for a in asked)
        last_at = {a.event.user_id: a.last_at + (clock - a.clock) if np.isfinite(a.clock)
                   else a.last_at for a in asked}
        self._reader.state = LiveRead({a.event.user_id: np.array(a.history, np.int64) for a in asked},
                                      last_at, clock)
        answers = retriever.answer([Query(user_id=a.event.user_id, k=self.record.k, exclude_seen=True)
                                    for a in asked])
        self._reader.state = NOTHING
        return sum(bool(np.any(answer.item_ids == a.event.item_id))
                   for a, answer in zip(asked, answers))


def _rounds(asked: list[_Asked]) -> list[list[_Asked]]:
    """``asked`` split so no user appears twice in a round: round r holds each user's r-th."""
    rounds: list[list[_Asked]] = []
    seen: dict[int, int] = {}
    for a in asked:
        r = seen.get(a.event.user_id, 0)
        seen[a.event.user_id] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(a)
    return rounds
