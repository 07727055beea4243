"""The updater's one worker thread: log -> trainer -> publisher, plus admin commands.

Everything that touches trainer state or publishes runs on this thread, in order, so a publish
never sees a half-applied event and admin commands (publish now, rollback, forget) never race
the trainer. gRPC handlers only append to the durable log and tell the thread (`notify`); it
wakes for that only when it has nothing to do or a publish's worth of events waits, and
otherwise looks on its next tick (every IDLE_WAIT_S, or when a publish is due: it asks the log
for its newest offset, so events apps write straight to a Redis log, with no notify, are seen
there too) and trains what arrived in batches (`_train_due`: TRAIN_BATCH events, a publish due,
or TRAIN_WAIT_S of waiting): a stream of events costs one wake-up per tick, not one per Send
(per single-event Send that wake-up cost about a quarter of the updater's CPU), and row updates
keep their publish cadence. The thread's CPU is counted as training and publishing (`snapshot`),
apart from the intake's. Before a batch trains, the serving version is asked about its positive
events (updater.quality, its own CPU count); when a publish supersedes a version, the publisher
writes that version's record into its manifest.

The log writes the live history itself (updater.feedback_log.EventLog), for either store, so the
engine neither writes it nor asks which log it has. It keeps what feedback may enter
(updater.admission): the catalogue, which the intake checks and the log mirrors where apps write
straight to it, and the budget of new user rows a minute.

Exactly-once: the trainer's state is always "tables of the current version + events with offset
> its feedback_offset, applied in offset order". After a crash, recovery reloads the newest good
version and replays the log after its feedback_offset, so an event is in a published version
exactly once, however the process died.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_repository import contract as c
from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.canary import ARM_KEY, CANARY, CanarySplit, read_split
from model_repository.impressions import ImpressionReader
from model_repository.projection import TextProjection, rows_from_text
from model_repository.sequence_tower import NumpySequenceTower
from model_repository.tower import TOWER_FILE, NumpyTower, tower_from_tables
from updater import faults
from updater.admission import Catalogue, NewUserBudget
from updater.canary import PROMOTE, CanaryArm, decide
from updater.exposure import Arrivals, Exposure
from updater.feedback_log import EventLog
from updater.metrics import UpdaterMetrics
from updater.publisher import Publisher, PublishError, read_pushed_base
from updater.quality import QualityMeter, QualityRecord
from updater.settings import IntakePolicy, PublishPolicy, QualityPolicy, TrainerConfig
from updater.trainer import SparseTrainer

log = logging.getLogger(__name__)

READ_BATCH = 2000
IDLE_WAIT_S = 0.05
TRAIN_BATCH = 256  # events that train at once on a tick (below: when a publish or TRAIN_WAIT_S is due)
TRAIN_WAIT_S = 1.0
PUSH_METRIC = "recall@10"  # what a push is judged by, from the builds' reports (judge_push)
PUSH_Z = 2.0  # standard errors of the two reports' difference a pushed base may fall short by
FAILURE_BACKOFF_S = 2.0
RATE_WINDOW_S = 10.0
RATE_SAMPLE_S = 0.5  # how often the log's newest offset is kept for events_per_s


class CommandError(RuntimeError):
    """An admin command that cannot be done; `code` is the gRPC status name to answer with."""

    def __init__(self, message: str, code: str = "FAILED_PRECONDITION"):
        super().__init__(message)
        self.code = code


def version_tower(tables: dict[str, np.ndarray], repository: Path, meta: schema.RetrieveMeta
                  ) -> NumpyTower | NumpySequenceTower:
    """The tower a retrieve version was trained with, of the kind its meta names: its own tower
    tables, or, for a pooled version written before those existed, the user_tower version's
    torch file (the only case that imports torch; recovery after a crash is otherwise
    torch-free)."""
    user_tower_version = meta.user_tower_version
    tower = tower_from_tables(tables, meta.tower)
    if tower is not None:
        return tower
    log.warning("retrieve version has no tower tables: reading user_tower %s's %s (imports torch)",
                user_tower_version, TOWER_FILE)
    return NumpyTower.from_file(Path(repository) / c.USER_TOWER / str(user_tower_version) / TOWER_FILE)


@dataclass(frozen=True)
class PushOutcome:
    version: int          # the retrieve version serving the pushed base
    feedback_offset: int  # the log offset its replay reached
    replayed: int         # logged events trained into it after its own offset
    judged: str           # how its build's report compared with the serving base's
    push_s: float


@dataclass(frozen=True)
class PushJudgement:
    worse: bool
    reason: str


def judge_push(serving: dict | None, pushed: dict | None, *, metric: str = PUSH_METRIC,
               z: float = PUSH_Z) -> PushJudgement:
    """A pushed base against the serving one by their builds' reports (``train.test``: each
    scored on the latest 20 % of its own events, over its ``users``): worse when its model's
    ``metric`` is below the serving one's by more than ``z`` standard errors of the difference.
    A per-user recall lies in [0, 1], so its variance is at most p (1 - p): each report's
    standard error is taken as sqrt(p (1 - p) / users), an upper bound. A base without a report
    cannot be judged (worse: pushes need --force); a serving base without one (built before
    reports were kept) lets any push through."""
    new_report = (pushed or {}).get("test") or {}
    old_report = (serving or {}).get("test") or {}
    new = new_report.get("model", {}).get(metric)
    old = old_report.get("model", {}).get(metric)
    if new is None:
        return PushJudgement(True, f"the pushed base's build kept no {metric} to judge it by")
    if old is None:
        return PushJudgement(False, f"the serving base kept no {metric}; pushed {new:.4f}")
    variance = sum(p * (1 - p) / report["users"] for p, report in ((new, new_report),
                                                                   (old, old_report))
                   if report.get("users"))
    margin = z * variance ** 0.5
    said = (f"its build's {metric} {new:.4f} ({new_report.get('users', '?')} users), the "
            f"serving base's {old:.4f} ({old_report.get('users', '?')} users)")
    if new < old - margin:
        return PushJudgement(True, f"{said}: below it by more than the noise ({margin:.4f})")
    return PushJudgement(False, f"{said}: not below it by more than the noise ({margin:.4f})")


class Engine:
    def __init__(self, feedback_log: EventLog, publisher: Publisher, *,
                 policy: PublishPolicy | None = None, trainer_config: TrainerConfig | None = None,
                 intake: IntakePolicy | None = None, quality: QualityPolicy | None = None,
                 metrics: UpdaterMetrics | None = None):
        self.log = feedback_log
        self.metrics = metrics or UpdaterMetrics()
        if hasattr(publisher, "listeners"):
            publisher.listeners.append(self.metrics.published)
        self._started_at = time.time()
        self.publisher = publisher
        self.policy = policy or PublishPolicy()
        self.intake = intake or IntakePolicy()
        self.catalogue = Catalogue(grows=self.intake.grow_catalogue)  # filled by recover()
        self.new_users = NewUserBudget(self.intake.max_new_users_per_min)
        self.trainer_config = trainer_config or TrainerConfig()
        self.quality = QualityMeter(policy=quality)
        self.exposure = Exposure(window_s=self.quality.policy.attribution_window_s)
        self.arrivals = Arrivals()
        self.impressions: ImpressionReader | None = None  # opened by recover()
        self.trainer: SparseTrainer | None = None
        self.canary: CanaryArm | None = None  # a running canary (updater.canary)
        self.last_canary: dict | None = None  # the last one's end, for Status
        self.applied_offset = 0
        self.published_offset = 0
        self._last_publish = 0.0
        self._events_since_publish = 0
        self._backoff_until = 0.0
        self._commands: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="updater-engine", daemon=True)
        self._offsets: deque[tuple[float, int]] = deque()  # (monotonic s, the log's newest offset)
        self._lock = threading.Lock()  # also guards the two below
        self._notified_offset = 0  # the newest durable offset the intake told of
        self._read_to = 0  # the log read to here: every event up to it applied (or deleted)
        self._idle = False  # the thread waits with nothing to do: the next notify wakes it
        self._waiting_since: float | None = None  # when untrained events were first seen waiting
        self.cpu_s = {"training": 0.0, "publishing": 0.0}  # this thread's, since start

    # -- start-up -------------------------------------------------------------------------
    def recover(self) -> None:
        """Newest good version -> trainer state; pending forgets redone. Replay of the log after
        its feedback_offset happens in the loop, like any new event. A canary running when the
        updater stopped goes on from its newest version (its counts start again from zero);
        when none of its versions verifies it is rolled back."""
        split = read_split(self.publisher.model_dir)
        canary = self.publisher.recover_canary(split) if split is not None else None
        if split is not None and canary is None:
            log.warning("a canary was running when the updater stopped, but none of its versions "
                        "verifies: rolled back (every user on the serving lineage)")
            self.publisher.end_canary()
            split = None
        manifest = self.publisher.recover(split)
        _, tables = self.publisher.load_tables(manifest.version)
        self.trainer = self._trainer(tables, schema.RetrieveMeta.from_manifest(manifest))
        if split is not None:
            self._resume_canary(split, canary, manifest.feedback_offset)
        self.applied_offset = self.published_offset = manifest.feedback_offset
        behind = self.log.last_offset() - manifest.feedback_offset
        self._notified_offset = self.log.last_offset()  # the log after the version: replayed
        log.info("recovered at retrieve %s (offset %s); %s log events to replay",
                 manifest.version, manifest.feedback_offset, max(behind, 0))
        self.log.open_intake(history_len=self.trainer.history_len,
                             after_offset=manifest.feedback_offset)
        self.arrivals = Arrivals(base=self.log.last_offset())
        self._newest_offset()  # the rate's first sample: events from here on count
        if self.impressions is None:  # retrieve records while its folder exists
            self.impressions = ImpressionReader(self.publisher.model_dir)
        self._catalogue_changed()
        for user_id in self.log.pending_forgets():
            log.warning("redoing the forget of a user interrupted by a crash")
            self._forget(user_id, deleted=0)

    def _trainer(self, tables: dict[str, np.ndarray], meta: schema.RetrieveMeta) -> SparseTrainer:
        """A trainer that starts from a version's (or a pushed base's) tables."""
        tower = version_tower(tables, self.publisher.repository, meta)
        return SparseTrainer(tables, tower, recency_decay=meta.recency_decay,
                             popularity_half_life_s=meta.popularity_half_life_s,
                             config=self.trainer_config, meta=meta)

    def _catalogue_changed(self) -> None:
        """The trainer's items are the catalogue now (recovered, items added, rolled back): the
        log's copy first, so an event the intake lets through its script takes too."""
        item_ids = self.trainer.t[schema.ITEM_IDS].live
        self.log.set_catalogue(item_ids, grows=self.catalogue.grows)
        self.catalogue.replace(item_ids)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        if self.impressions is not None:
            self.impressions.remove()

    def running(self) -> bool:
        """Whether the engine thread runs (and was not asked to stop)."""
        return self._thread.is_alive() and not self._stop.is_set()

    def notify(self, accepted: int, last_offset: int = 0) -> None:
        """Called by the intake after a durable append (``last_offset``: its newest event's).
        Wakes the thread only when it waits with nothing to do (so the publish clock starts at
        once) or a publish's worth of events is not applied yet."""
        self.arrivals.stamp(last_offset)
        with self._lock:
            self._notified_offset = max(self._notified_offset, last_offset)
            wake = accepted and (self._idle or self._notified_offset - self.applied_offset
                                 >= self.policy.every_events)
        if wake:
            self._wake.set()

    def _newest_offset(self) -> int:
        """The log's newest offset (a query, or a GET in Redis), sampled for events_per_s: both
        logs hand offsets only to stored events, so offsets count what every writer stored."""
        newest = self.log.last_offset()
        self.arrivals.stamp(newest)  # an app writing straight to the log tells no one
        now = time.monotonic()
        with self._lock:
            if not self._offsets or now - self._offsets[-1][0] >= RATE_SAMPLE_S:
                self._offsets.append((now, newest))
            # keep the newest sample at or before the window's start: the rate's base
            while len(self._offsets) > 1 and self._offsets[1][0] <= now - RATE_WINDOW_S:
                self._offsets.popleft()
        return newest

    def served_newest_time(self) -> float | None:
        """When the newest event the serving version holds arrived (its own timestamp when it
        was logged before this updater started); None when it holds no logged event."""
        offset = self.published_offset
        if offset <= 0:
            return None
        arrived = self.arrivals.of(offset)
        if arrived is not None:
            return arrived
        events = self.log.read_after(offset - 1, limit=1)
        return events[0].timestamp if events and events[0].offset == offset else None

    def unserved_age(self, now: float) -> float:
        """How long the oldest logged event that no version serves yet has waited (0: none
        waits; an event logged before this updater started has waited since the start)."""
        if self.log.last_offset() <= self.published_offset:
            return 0.0
        arrived = self.arrivals.of(self.published_offset + 1)
        return max(now - (arrived if arrived is not None else self._started_at), 0.0)

    def events_per_s(self) -> float:
        """Events stored in the last RATE_WINDOW_S, by any writer, per second."""
        newest = self._newest_offset()
        with self._lock:
            return (newest - self._offsets[0][1]) / RATE_WINDOW_S

    def submit(self, fn, *args) -> Future:
        """Run fn(*args) on the engine thread; the future holds its result or exception."""
        future: Future = Future()
        self._commands.put((future, fn, args))
        self._wake.set()
        return future

    # -- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._wait_s())
            self._wake.clear()
            with self._lock:
                self._idle = False
            try:
                self._run_commands()
                if self._train_due():
                    self._consume()
                    self._check_canary()
                if self._publish_due():
                    self._publish(kind="publish")
            except PublishError as exc:
                self.metrics.publish_failures.inc()
                log.error("%s; retrying in %.1f s", exc, FAILURE_BACKOFF_S)
                self._backoff_until = time.monotonic() + FAILURE_BACKOFF_S
            except Exception:  # noqa: BLE001 - the loop must survive and keep the log intact
                log.exception("updater engine step failed")
                self._backoff_until = time.monotonic() + FAILURE_BACKOFF_S

    def _run_commands(self) -> None:
        while True:
            try:
                future, fn, args = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    def _consume(self) -> None:
        """Apply every durable event not applied yet, in offset order."""
        self._waiting_since = None
        while not self._stop.is_set():
            started, measuring = time.thread_time(), self.quality.cpu_s
            wall = time.perf_counter()
            try:
                events = self._train_next()
            finally:
                self.cpu_s["training"] += (time.thread_time() - started
                                           - (self.quality.cpu_s - measuring))
            if not events:
                return
            self.metrics.train_batch.observe(time.perf_counter() - wall)
            # the offset moves after its CPU is counted: a status showing it shows that CPU
            self.applied_offset = events[-1].offset
            # kept from the served offset on: its arrival is the served model's freshness
            self.arrivals.forget_through(self.published_offset - 1)
            self._events_since_publish += len(events)
            if self._events_since_publish >= self.policy.every_events:
                return  # publish before reading more

    def _train_next(self) -> list:
        """Train the log's next batch after the applied offset; the batch, empty when none."""
        newest = self._newest_offset()
        events = self.log.read_after(self.applied_offset, limit=READ_BATCH)
        if not events:
            self._read_to = max(self._read_to, newest)
            return []
        train = self._attribute(events)
        canary = self.canary
        if canary is None:
            self.quality.measure(events, self.trainer,
                                 self.publisher.model_dir / str(self.publisher.current))
            self.trainer.apply_many(self._admitted(train))
        else:  # each arm learns, and is judged on, its own users' events
            ours = canary.split.in_canary([e.user_id for e in train])
            control = [e for e, mine in zip(train, ours) if not mine]
            # after a restart the canary's version may hold events the control's does not
            theirs = [e for e, mine in zip(train, ours) if mine and e.offset > canary.skip_through]
            if control:
                self.quality.measure(control, self.trainer,
                                     self.publisher.model_dir / str(self.publisher.current))
                self.trainer.apply_many(self._admitted(control))
            if theirs:
                canary.quality.measure(theirs, canary.trainer,
                                       self.publisher.model_dir / str(self.publisher.canary))
                canary.trainer.apply_many(theirs)
        if len(events) > 1:
            faults.crash_point("mid_batch")  # trained, the offset not recorded yet
        return events

    def _attribute(self, events: list) -> list:
        """The impressions recorded since the last batch, then this batch's positive events
        attributed to them (updater.exposure). Returns the events to train: the batch, with
        each exposed positive event's shown-and-skipped items before it under
        --impression-skips (not in the log: a replay after a restart has no impressions)."""
        if self.impressions is not None:
            self.exposure.add(self.impressions.read_new())
        since = self.canary.split.started_at if self.canary is not None else None
        derived = self.exposure.attribute(events, self.arrivals.of, since=since,
                                          skips=self.trainer_config.impression_skips)
        if not derived:
            return events
        return [d for i, e in enumerate(events) for d in (*derived.get(i, ()), e)]

    def _admitted(self, events: list) -> list:
        """The events that train: all but those of users with no row once the minute's new user
        rows are spent (updater.admission: they stay in the log and the live history)."""
        index, new, admitted = self.trainer.user_index, set(), []
        for e in events:
            if e.user_id in index or e.user_id in new:
                admitted.append(e)
            elif self.new_users.take():
                new.add(e.user_id)
                admitted.append(e)
            else:
                self.new_users.deferred_events += 1
        return admitted

    def _waiting(self) -> int:
        """Durable events not trained yet, by the log's newest offset (apps may write a Redis
        log with no notify)."""
        return self._newest_offset() - max(self.applied_offset, self._read_to)

    def _train_due(self) -> bool:
        """Whether this tick trains what waits: a batch's worth (TRAIN_BATCH), a publish due,
        or events that have waited TRAIN_WAIT_S. Training a batch at once is one vectorised
        step (SparseTrainer.apply_many), 3-4x cheaper an event than a tick's few events."""
        waiting = self._waiting()
        if waiting <= 0 or self.trainer is None:
            self._waiting_since = None
            return False
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        return (waiting >= min(TRAIN_BATCH, self.policy.every_events)
                or now - self._waiting_since >= TRAIN_WAIT_S
                or now - self._last_publish >= self.policy.every_s)

    def _pending(self) -> bool:
        return (self.applied_offset > self.published_offset or self.trainer.has_changes()
                or self.canary is not None and self.canary.trainer.has_changes())

    def _wait_s(self) -> float:
        """How long the loop may sleep: until the next publish is due when events wait for one
        (so an event is served within every_s of the last publish, not a poll tick later).
        With nothing to do it marks itself idle, so the next notify wakes it."""
        with self._lock:
            read_to = max(self.applied_offset, self._read_to)
            self._idle = (self.trainer is None
                          or self._notified_offset <= read_to and not self._pending())
            if self._idle:
                return IDLE_WAIT_S
        due_in = max(self._last_publish + self.policy.every_s, self._backoff_until) - time.monotonic()
        return min(IDLE_WAIT_S, max(due_in, 0.0))

    def _publish_due(self) -> bool:
        now = time.monotonic()
        if not self._pending() or now < self._backoff_until:
            return False
        return (now - self._last_publish >= self.policy.every_s
                or self._events_since_publish >= self.policy.every_events)

    def probe_user(self, *, canary: bool = False) -> int:
        """A user whose recommend a publish probes: of the canary's arm with ``canary``, else
        of the control's (every user without a running canary)."""
        trainer = self.canary.trainer if canary else self.trainer
        ids = trainer.t[schema.USER_IDS].live
        if self.canary is None:
            return int(ids[0]) if ids.size else 0
        return self.canary.probe_user(ids, canary=canary)

    def _publish(self, *, kind: str, parent: int | None = None) -> int:
        started = time.thread_time()
        try:
            return self._write_version(kind=kind, parent=parent)
        finally:
            self.cpu_s["publishing"] += time.thread_time() - started

    def _write_version(self, *, kind: str, parent: int | None) -> int:
        superseded = self.publisher.current
        version = self.publisher.publish(
            self.trainer.tables(), changed_rows=self.trainer.changed_rows(),
            feedback_offset=self.applied_offset, probe_user=self.probe_user(), kind=kind,
            parent=parent)
        self._superseded(superseded)
        self.trainer.clear_changes()
        canary = self.canary
        if canary is not None and canary.trainer.has_changes():
            self.publisher.publish(
                canary.trainer.tables(), changed_rows=canary.trainer.changed_rows(),
                feedback_offset=self.applied_offset, probe_user=self.probe_user(canary=True),
                kind="canary", split=canary.split)
            canary.trainer.clear_changes()
        self.published_offset = self.applied_offset
        self._last_publish = time.monotonic()
        self._events_since_publish = 0
        return version

    def _superseded(self, version: int | None) -> None:
        """``version`` serves no more: its quality record is final (into its manifest)."""
        record = self.quality.close(version)
        if record is not None:
            self.publisher.keep_quality(record)

    def quality_records(self) -> tuple[QualityRecord, list[QualityRecord]]:
        """(the serving version's running record, the last superseded ones' final records,
        newest last), each beside its parent's hit rate."""
        current = self.publisher.current or 0
        running = self.quality.record
        if running is None or running.version != current:
            running = QualityRecord(current, None)  # nothing asked of it yet
        return self.publisher.against_parent(running), list(self.publisher.quality)

    # -- admin commands (run on the engine thread through submit) -------------------------
    def publish_now(self) -> tuple[bool, int, int]:
        """(published, serving version, its feedback offset)."""
        self._consume()
        if not self._pending():
            return False, self.publisher.current, self.published_offset
        version = self._publish(kind="publish")
        return True, version, self.published_offset

    def rollback(self, to: int | None) -> tuple[int, int]:
        """Publish a new version whose tables are hard links of `to` (default: the version before
        the current one) and continue training from them. Events already applied are not
        applied again: the rollback version's feedback_offset is the current log position."""
        if self.canary is not None:
            raise CommandError("a canary is running: promote it or roll it back "
                               "(freshrec canary --promote | --rollback) first")
        target = self.publisher.previous_version() if to is None else to
        if target is None:
            raise CommandError("no earlier version is kept to roll back to")
        if target not in self.publisher.kept_versions():
            raise CommandError(f"version {target} is not kept; kept: {self.publisher.kept_versions()}",
                               code="NOT_FOUND")
        self._consume()
        _, tables = self.publisher.load_tables(target)
        tables = {name: np.asarray(t) for name, t in tables.items()}
        unchanged = {name: np.zeros(0, np.int64) for name in tables}
        superseded = self.publisher.current
        version = self.publisher.publish(
            tables, changed_rows=unchanged, feedback_offset=self.applied_offset,
            probe_user=int(tables[schema.USER_IDS][0]) if len(tables[schema.USER_IDS]) else 0,
            kind="rollback", parent=target)
        self._superseded(superseded)
        manifest, published = self.publisher.load_tables(version)
        published = {name: np.asarray(t) for name, t in published.items()}
        meta = schema.RetrieveMeta.from_manifest(manifest)
        if meta == self.trainer.meta:
            self.trainer.reset(published)
        else:  # across a push: the other base's tower, size and settings
            self.trainer = self._trainer(published, meta)
        self._catalogue_changed()
        self.published_offset = self.applied_offset
        self._last_publish = time.monotonic()
        self._events_since_publish = 0
        return version, self.published_offset

    def push(self, repository: Path, force: bool = False, canary_share: float = 0.0,
             auto: bool = False) -> PushOutcome:
        """Serve a retrained base (`freshrec build --feedback-log` output): verify it, judge its
        build's report against the serving base's (refused when worse, unless ``force``), train
        the logged events after its feedback offset into it, and publish it as the next version
        (its user_tower and text_encoder as new versions of those when they differ). The old
        base's pending updates are published first, so a rollback returns to all of them.

        ``canary_share`` in (0, 1): serve it to that share of users only, as a canary beside the
        serving lineage (updater.canary; ``auto``: promoted or rolled back by the decision rule)."""
        started = time.perf_counter()
        try:
            pushed = read_pushed_base(repository)
        except versions.VersionError as exc:
            raise CommandError(f"push refused: {exc}", code="INVALID_ARGUMENT") from exc
        offset = pushed.manifest.feedback_offset
        newest = self.log.last_offset()
        if offset > newest:
            raise CommandError(f"push refused: the base was trained on feedback up to offset "
                               f"{offset}, past this log's newest, {newest} (another log?)")
        judged = judge_push(self.trainer.meta.train, pushed.meta.train)
        if judged.worse and not force:
            raise CommandError(f"push refused: {judged.reason}; --force pushes it anyway")
        if canary_share:
            self._check_canary_push(pushed, canary_share)
        self._consume()
        if self._pending():
            self._publish(kind="publish")  # the old base's updates, for a rollback
        trainer = self._trainer(pushed.tables, pushed.meta)
        # a canary catches up to exactly where the control is; a push to all, to the log's end
        until = self.applied_offset if canary_share else None
        replayed, replayed_to = 0, offset
        while events := self._log_between(replayed_to, until):
            trainer.apply_many(events)
            replayed, replayed_to = replayed + len(events), events[-1].offset
        meta = self.publisher.install_side_versions(pushed)
        faults.crash_point(faults.MID_PUSH)
        if canary_share:
            version = self._start_canary(trainer, meta, canary_share, auto, replayed_to)
            log.info("pushed %s as a canary for %.1f %% of users, version %s: %d events "
                     "replayed after offset %d; %s", repository, 100 * canary_share, version,
                     replayed, offset, judged.reason)
            return PushOutcome(version, replayed_to, replayed, judged.reason,
                               time.perf_counter() - started)
        old, superseded = self.trainer, self.publisher.current
        self.trainer = trainer
        started_publish = time.thread_time()
        try:
            version = self.publisher.publish(
                trainer.tables(), changed_rows=None, feedback_offset=replayed_to,
                probe_user=self.probe_user(), kind="push", meta=meta)
        except BaseException:
            self.trainer = old
            raise
        finally:
            self.cpu_s["publishing"] += time.thread_time() - started_publish
        self._superseded(superseded)
        trainer.meta = self._meta_of(version)
        trainer.clear_changes()
        self.applied_offset = self.published_offset = replayed_to
        self._read_to = max(self._read_to, replayed_to)
        self._last_publish = time.monotonic()
        self._events_since_publish = 0
        self._catalogue_changed()
        log.info("pushed %s as version %s: %d events replayed after offset %d; %s",
                 repository, version, replayed, offset, judged.reason)
        return PushOutcome(version, replayed_to, replayed, judged.reason,
                           time.perf_counter() - started)

    def _meta_of(self, version: int) -> schema.RetrieveMeta:
        """A published version's meta (a push's names the tower versions written for it)."""
        return schema.RetrieveMeta.from_manifest(
            versions.read_manifest(self.publisher.model_dir / str(version)))

    def _log_between(self, after: int, until: int | None) -> list:
        """The log's next events after offset ``after``, none past ``until`` (None: the end)."""
        events = self.log.read_after(after, limit=READ_BATCH)
        return events if until is None else [e for e in events if e.offset <= until]

    # -- canaries (updater.canary) --------------------------------------------------------
    def _check_canary_push(self, pushed, share: float) -> None:
        if not 0 < share < 1:
            raise CommandError(f"canary_share: must be in (0, 1), got {share!r}",
                               code="INVALID_ARGUMENT")
        if self.canary is not None:
            raise CommandError("a canary is running already: promote it or roll it back "
                               "(freshrec canary --promote | --rollback) first")
        serving = versions.read_manifest(self.publisher.model_dir / str(self.publisher.current))
        if pushed.manifest.files.get("model.py") != serving.files.get("model.py"):
            raise CommandError("canary refused: the base's retrieve model.py differs from the "
                               "running one, which must serve both arms; push it to all users")

    def _start_canary(self, trainer: SparseTrainer, meta: dict, share: float, auto: bool,
                      offset: int) -> int:
        split = CanarySplit.new(share, first_version=versions.next_version_number(
            self.publisher.model_dir), started_at=time.time(), started_offset=offset, auto=auto)
        self.canary = CanaryArm(split, trainer, QualityMeter(policy=self.quality.policy),
                                started_offset=offset, auto=auto,
                                control_from=(self.quality.asked, self.quality.hits),
                                exposure_from=dict(self.exposure.counts))
        try:
            version = self.publisher.publish(
                trainer.tables(), changed_rows=None, feedback_offset=offset,
                probe_user=self.probe_user(canary=True), kind="canary push",
                parent=self.publisher.current, meta={**meta, ARM_KEY: CANARY}, split=split)
        except BaseException:
            self.canary = None
            self.publisher.end_canary()
            raise
        trainer.meta = self._meta_of(version)
        trainer.clear_changes()
        self.last_canary = None
        return version

    def _resume_canary(self, split: CanarySplit, manifest: versions.Manifest,
                       control_offset: int) -> None:
        """The canary arm again after a restart: its trainer from its newest version, the
        events of its users that version has not learned and the control's offset has passed
        trained in now (the rest come with the replay; the arm skips what its version has)."""
        _, tables = self.publisher.load_tables(manifest.version)
        trainer = self._trainer(tables, schema.RetrieveMeta.from_manifest(manifest))
        self.canary = CanaryArm(split, trainer, QualityMeter(policy=self.quality.policy),
                                started_offset=split.started_offset, auto=split.auto,
                                control_from=(0, 0), exposure_from={},
                                skip_through=manifest.feedback_offset)
        after = manifest.feedback_offset
        while after < control_offset and (events := self._log_between(after, control_offset)):
            theirs = split.in_canary([e.user_id for e in events])
            trainer.apply_many([e for e, mine in zip(events, theirs) if mine])
            after = events[-1].offset
        log.warning("the canary goes on after the restart: %.0f%% of users on version %s (its "
                    "counts start again)", split.share * 100, manifest.version)

    def _check_canary(self) -> None:
        """The decision rule on the arms' counts so far; an automatic canary acts on it."""
        canary = self.canary
        if canary is None:
            return
        canary.decision = decide(*canary.counts(self.exposure))
        if canary.auto and canary.decision.verdict is not None:
            log.warning("canary: %s (%s)", canary.decision.verdict, canary.decision.reason)
            self.end_canary(canary.decision.verdict == PROMOTE)

    def end_canary(self, promote: bool) -> tuple[int, str]:
        """Promote the canary (its lineage, with the control users' events since it started
        trained in, becomes every user's) or roll it back (every user on the control lineage
        again). Returns (the version every user is served from, what happened)."""
        canary = self.canary
        if canary is None:
            raise CommandError("no canary is running")
        self._consume()
        canary_user = self.probe_user(canary=True)
        ended = canary.status(self.quality, self.exposure) | {"version": self.publisher.canary}
        if promote:
            after = canary.started_offset
            while events := self._log_between(after, self.applied_offset):
                theirs = canary.split.in_canary([e.user_id for e in events])
                canary.trainer.apply_many([e for e, mine in zip(events, theirs) if not mine])
                after = events[-1].offset
            meta = dict(versions.read_manifest(
                self.publisher.model_dir / str(self.publisher.canary)).meta)
            meta.pop(ARM_KEY, None)
            superseded = self.publisher.current
            version = self.publisher.publish(
                canary.trainer.tables(), changed_rows=None, feedback_offset=self.applied_offset,
                probe_user=self.probe_user(), kind="promote", meta=meta)
            self._superseded(superseded)
            self.trainer = canary.trainer
            self.trainer.meta = self._meta_of(version)
            self.trainer.clear_changes()
            self.published_offset = self.applied_offset
        self.canary = None
        self.publisher.end_canary()
        self.publisher.triton.probe(self.publisher.current, canary_user)
        self._catalogue_changed()
        what = "promoted" if promote else "rolled back"
        self.last_canary = {**ended, "ended": what}
        return self.publisher.current, (f"canary {what}: every user is served from version "
                                        f"{self.publisher.current}")

    def forget_user(self, user_id: int) -> tuple[int, int, list[int]]:
        """(version without the user, events deleted from the log, older versions removed)."""
        deleted = self.log.forget_user(user_id)
        return self._forget(user_id, deleted=deleted)

    def _forget(self, user_id: int, *, deleted: int) -> tuple[int, int, list[int]]:
        self._consume()  # the user's events are gone from the log; everyone else's go in
        had_row = self.trainer.forget_user(user_id)
        if self.canary is not None:
            had_row = self.canary.trainer.forget_user(user_id) or had_row
        if had_row or self._pending():
            self._publish(kind="forget")
        # a version with the user is unsafe to keep for rollback: it would bring the user back
        removed = self.publisher.remove_versions_holding_user(user_id)
        self.log.clear_forget(user_id)
        return self.publisher.current, deleted, removed

    def text_projection(self):
        """The serving version's TextProjection (title embedding -> item space). Raises
        CommandError when the version was built without the text encoder."""
        projection = TextProjection.from_tables(self.trainer.fixed)
        if projection is None:
            raise CommandError("the serving version was built without the text encoder (no text "
                               "projection): items cannot be added from their titles")
        return projection

    def check_new_items(self, item_ids) -> None:
        """CommandError ALREADY_EXISTS naming the first id the model knows already."""
        known = [(i, int(item)) for i, item in enumerate(item_ids)
                 if int(item) in self.trainer.item_index]
        if known:
            i, item = known[0]
            raise CommandError(f"items[{i}].item_id: item {item} exists already "
                               f"({len(known)} of the items sent do)", code="ALREADY_EXISTS")

    def add_items(self, item_ids: np.ndarray, text_emb: np.ndarray) -> tuple[int, float]:
        """Give new items rows from their title embeddings (projected into the item space and
        scaled like trained rows), and publish them with every event applied so far. All or
        nothing: a known id adds none (ALREADY_EXISTS), a failed publish takes them out again.
        Returns (the version serving them, seconds the publish took)."""
        if self.canary is not None:
            raise CommandError("a canary is running: promote it or roll it back before adding "
                               "items (both arms would need them)")
        projection = self.text_projection()
        self._consume()
        self.check_new_items(item_ids)
        tables = self.trainer.tables()
        rows = rows_from_text(projection, text_emb, tables[schema.ITEM_ROWS],
                              tables[schema.ITEM_POPULARITY])
        self.trainer.add_items(item_ids, rows)
        started = time.perf_counter()
        try:
            version = self._publish(kind="add_items")
        except BaseException:
            self.trainer.drop_last_items(len(item_ids))
            raise
        self._catalogue_changed()
        return version, time.perf_counter() - started

    # -- status ---------------------------------------------------------------------------
    def snapshot(self) -> dict:
        trainer = self.trainer
        log_offset = self.log.last_offset()
        return {
            "published_version": self.publisher.current or 0,
            "last_published_offset": self.published_offset,
            "log_offset": log_offset,
            "applied_offset": self.applied_offset,
            "queue_depth": self.log.count_after(self.published_offset),
            "events_per_s": self.events_per_s(),
            "kept_versions": self.publisher.kept_versions(),
            "failed_versions": list(self.publisher.failed),
            "users": trainer.n_users if trainer else 0,
            "items": trainer.n_items if trainer else 0,
            "recent_publishes": list(self.publisher.records),
            "training_cpu_s": self.cpu_s["training"],
            "publishing_cpu_s": self.cpu_s["publishing"],
            "quality_cpu_s": self.quality.cpu_s,
            "quality": self.quality_records(),
            "catalogue_items": len(self.catalogue),
            "catalogue_grows": self.catalogue.grows,
            "new_users_last_min": self.new_users.last_min(),
            "max_new_users_per_min": self.new_users.per_min,
            "deferred_new_user_events": self.new_users.deferred_events,
            "canary": (self.canary.status(self.quality, self.exposure)
                       | {"version": self.publisher.canary}
                       if self.canary is not None else self.last_canary),
            "exposure": self.exposure.status(),
            "new_user_rows": ({"mode": trainer.config.new_user_rows,
                               **trainer.new_user_rows.status()} if trainer else None),
        }

