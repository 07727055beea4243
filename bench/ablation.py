"""What each online mechanism adds, in one replay (issue 33): `python -m bench.quality --ablation`.

Every row answers the same questions of the same prequential replay (bench.replay), so each is
set against "publishing off" with a paired bootstrap interval over users
(exporter.evaluate.paired_ratio_interval, a user's events drawn together):
- frozen model, and frozen + app-sent history: bench.quality's static rows;
- online, publishing off: feedback is sent (durable log, live history), nothing is published:
  the base version and the live history alone;
- online, row updates only (`--no-count-updates`); online, counts and trend only
  (`--no-row-updates`); online as shipped: each on a fresh copy of the base repository with a
  fresh updater, publishing once per window;
- full retraining, the reference every incremental method is judged against: the base model's
  own settings (as the build chose them; no new search) refitted on every event so far every
  ``retrain_every`` windows, each fit written as a repository and served in process by the
  scoring code retrieve runs (model_repository.serving.Retriever), with the app sending the
  user's last items as HISTORY, as the frozen + app-sent row does; its fits' CPU seconds beside.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.online import online_replay
from bench.replay import RecentItems, ReplayResult, replay
from exporter.data import Interactions, Items
from exporter.evaluate import paired_ratio_interval
from model_repository.serving import Query, Retriever

# the reference every row is set against (issue 33: "against publishing off")
PUBLISHING_OFF = "online, publishing off (live history only)"
AS_SHIPPED = "online as shipped"
DEFAULT_RETRAIN_EVERY = 1
ABLATION_K = 10


@dataclass(frozen=True)
class OnlineVariant:
    """One online row: the updater's extra flags, and whether each window is published."""

    name: str
    updater_args: tuple[str, ...] = ()
    publish: bool = True


VARIANTS = (
    OnlineVariant(PUBLISHING_OFF, publish=False),
    OnlineVariant("online, row updates only", ("--no-count-updates",)),
    OnlineVariant("online, counts and trend only", ("--no-row-updates",)),
    OnlineVariant(AS_SHIPPED),
)


def answers_in_process(retriever: Retriever, recent: RecentItems, user_ids: np.ndarray,
                       excludes, k: int) -> list[np.ndarray]:
    """bench.replay's recommend, answered in process by retrieve's scoring code, the app sending
    each user's recent items (``recent``) as HISTORY."""
    queries = [Query(user_id=int(u), k=min(k, retriever.n_items), history=recent.of(int(u)),
                     exclude=np.asarray(e, np.int64))
               for u, e in zip(user_ids.tolist(), excludes)]
    return [answer.item_ids for answer in retriever.answer(queries)]


class RetrainPusher:
    """Online plus a nightly retrain: every ``every`` windows (after that window's publish) the
    base model's settings refitted on every event so far (as RetrainedBase fits them), written
    as a build that records the log offset its events reach, and pushed to the running updater
    (Admin.Push, --force: this measures the loop, not the gate), which replays what came after
    and serves it with the online learning going on on top."""

    def __init__(self, train: Interactions, items: Items | None, model, scratch: Path, *,
                 every: int):
        self.items, self.scratch, self.every = items, Path(scratch), every
        self.config, self.prior = model.config, prior_of(model)
        self.events = [train]
        self.windows = self.pushes = 0
        self.fit_cpu_s = 0.0
        self.replayed = 0

    def __call__(self, online, window: Interactions) -> None:
        from exporter.build import train_model, write_repository

        self.events.append(window)
        self.windows += 1
        if self.windows % self.every:
            return
        offset = online.updater.status()["log_offset"]  # every sent event is durable by now
        cpu_started = time.process_time()
        model, _ = train_model(concatenated(self.events), items=self.items, config=self.config,
                               search=False, progress=False, **self.prior)
        self.fit_cpu_s += time.process_time() - cpu_started
        out = self.scratch / f"nightly-{self.pushes}"
        write_repository(model, out, tensorrt=False, feedback_offset=offset)
        self.replayed += online.updater.push(out, force=True)["replayed"]
        self.pushes += 1
        if self.pushes > 1:
            shutil.rmtree(self.scratch / f"nightly-{self.pushes - 2}", ignore_errors=True)


def prior_of(model) -> dict:
    """A trained model's popularity prior, as exporter.build.train_model takes it by hand."""
    return dict(popularity_weight=model.popularity_weight,
                popularity_half_life_s=model.popularity_half_life_s,
                session_s=model.session_s,
                session_popularity_weight=model.session_popularity_weight)


def concatenated(parts: Sequence[Interactions]) -> Interactions:
    return Interactions.from_arrays(*(np.concatenate([getattr(e, name) for e in parts])
                                      for name in ("user_ids", "item_ids", "values",
                                                   "timestamps")))


class RetrainedBase:
    """Full retraining: the base model's settings refitted on every event so far every
    ``every`` windows (exporter.build.train_model, no search), served in process by
    model_repository.serving.Retriever with the app's last ``history_len`` items as HISTORY."""

    def __init__(self, train: Interactions, items: Items | None, model, scratch: Path, *,
                 every: int, history_len: int):
        self.items, self.scratch, self.every = items, Path(scratch), every
        self.config, self.prior = model.config, prior_of(model)
        self.events = [train]
        self.recent = RecentItems(history_len, train)
        self.windows = self.fits = 0
        self.fit_s = self.fit_cpu_s = 0.0
        self.retriever = Retriever(self._write(model))

    def _write(self, model) -> Path:
        from exporter.build import write_repository
        from model_repository import contract as c

        out = self.scratch / f"retrain-{self.fits}"
        write_repository(model, out, tensorrt=False)
        return out / c.RETRIEVE / "1"

    def recommend(self, user_ids, excludes, k):
        return answers_in_process(self.retriever, self.recent, user_ids, excludes, k)

    def send(self, events: Interactions) -> None:
        self.recent.add(events)  # what the app saw the user do
        self.events.append(events)

    def learn(self, events: Interactions) -> None:
        from exporter.build import train_model

        self.windows += 1
        if self.windows % self.every:
            return
        started, cpu_started = time.perf_counter(), time.process_time()
        model, _ = train_model(concatenated(self.events), items=self.items,
                               config=self.config, search=False, progress=False, **self.prior)
        self.fit_s += time.perf_counter() - started
        self.fit_cpu_s += time.process_time() - cpu_started
        self.fits += 1
        previous = self.retriever.version_dir.parent.parent
        self.retriever = Retriever(self._write(model))
        shutil.rmtree(previous, ignore_errors=True)


def variant_results(repository: Path, train: Interactions, test: Interactions, *,
                    window_events: int, scored: list[int], updater_args: Sequence[str],
                    intake: str, redis_fsync: str, skip: Sequence[str] = ()
                    ) -> dict[str, tuple[ReplayResult, int]]:
    """Each online variant but those named in ``skip`` on a fresh copy of ``repository``, served
    by a stack of its own: {name: (result, publishes)}."""
    from freshrec.stack import serving_stack
    from model_repository import contract as c
    from model_repository.versions import list_versions

    # a copy of a repository an updater has published into would start each variant from the
    # end of the replay, with every event already in its log (deduplicated: nothing learned)
    if len(list_versions(repository / c.RETRIEVE)) != 1:
        raise ValueError(f"{repository}: the ablation's base must be the repository as built "
                         "(one retrieve version), not one an updater has published into")
    out = {}
    for variant in (v for v in VARIANTS if v.name not in skip):
        with tempfile.TemporaryDirectory(prefix="freshrec-ablation-") as scratch:
            copy = Path(shutil.copytree(repository, Path(scratch) / "repository"))
            with serving_stack(copy, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
                               log_dir=Path(scratch)) as stack:
                out[variant.name] = online_replay(
                    stack, train, test, window_events=window_events, scored=scored,
                    updater_args=(*updater_args, *variant.updater_args), publish=variant.publish,
                    intake=intake, redis_fsync=redis_fsync, scratch=Path(scratch))
    return out


def retrained_result(train: Interactions, test: Interactions, items: Items | None, model, *,
                  window_events: int, scored: list[int], every: int, history_len: int
                  ) -> tuple[ReplayResult, RetrainedBase]:
    with tempfile.TemporaryDirectory(prefix="freshrec-retrain-") as scratch:
        retrained = RetrainedBase(train, items, model, Path(scratch), every=every,
                                  history_len=history_len)
        result = replay(train, test, retrained, window_events=window_events, scored_windows=scored)
    result.learn_s, result.learn_cpu_s = retrained.fit_s, retrained.fit_cpu_s
    return result, retrained


def against(ours: ReplayResult, reference: ReplayResult, *, k: int = ABLATION_K) -> str:
    """recall@k of ``ours`` over ``reference`` on the same questions, with its 95 % paired
    bootstrap interval over users, e.g. "x1.03 (0.99-1.07)"."""
    if ours.users != reference.users:
        raise ValueError("the two replays asked different questions: no paired comparison")
    mine, theirs = ours.hits(k), reference.hits(k)
    low, high = paired_ratio_interval(mine, theirs, groups=np.asarray(ours.users))
    ratio = mine.sum() / max(theirs.sum(), 1e-12)
    return f"x{ratio:.3f} ({low:.3f}-{high:.3f})"


def new_after_the_cut(train: Interactions, compared: Sequence[tuple[str, ReplayResult]],
                      *, k: int = ABLATION_K) -> list[str]:
    """recall@k of each row on the asked events whose item, and on those whose user, the
    training window never saw (issue 33: new items learned from their first events)."""
    items, users = set(train.item_ids.tolist()), set(train.user_ids.tolist())
    first = compared[0][1]
    new_item = np.array([item not in items for item in first.items], bool)
    new_user = np.array([user not in users for user in first.users], bool)
    lines = [f"recall@{k} on events whose item is new after the cut ({new_item.sum()} of "
             f"{len(new_item)}) / whose user is ({new_user.sum()}) / the rest "
             f"({(~new_item & ~new_user).sum()}):"]
    for name, result in compared:
        hits = result.hits(k)
        parts = [hits[mask].mean() if mask.any() else float("nan")
                 for mask in (new_item, new_user, ~new_item & ~new_user)]
        lines.append(f"  {name}: " + " / ".join(f"{part:.4f}" for part in parts))
    return lines


def ablation_rows(repository: Path, train: Interactions, test: Interactions,
                  items: Items | None, model, served: dict[str, ReplayResult], *,
                  window_events: int, scored: list[int], updater_args: Sequence[str],
                  intake: str, redis_fsync: str, retrain_every: int, app_history: int,
                  push_every: int = 0) -> tuple[list[tuple[str, ReplayResult]], list[str]]:
    """The ablation's rows after bench.quality's served ones (``served``: its "static", "app"
    and "online" results on the same questions; "online" is the as-shipped row) and the lines
    that set every row against publishing off. Returns ([(row name, result)], lines)."""
    online = variant_results(repository, train, test, window_events=window_events, scored=scored,
                             updater_args=updater_args, intake=intake, redis_fsync=redis_fsync,
                             skip=(AS_SHIPPED,))
    rows = [(f"{name} ({publishes} publishes)", result)
            for name, (result, publishes) in online.items()]
    retrained, base = retrained_result(train, test, items, model, window_events=window_events,
                                       scored=scored, every=retrain_every,
                                       history_len=app_history)
    rows.append((f"full retraining every {retrain_every} window(s) ({base.fits} fits, "
                 f"{base.fit_cpu_s:.0f} CPU s)", retrained))
    reference = online[PUBLISHING_OFF][0]
    compared = [("frozen model", served["static"]),
                (f"frozen + app-sent history (last {app_history})", served["app"]),
                *((name, result) for name, (result, _) in online.items() if name != PUBLISHING_OFF),
                (AS_SHIPPED, served["online"]), ("full retraining", retrained)]
    pushed_lines = []
    if push_every:
        pushed, pusher = pushed_result(repository, train, test, items, model,
                                       window_events=window_events, scored=scored,
                                       updater_args=updater_args, intake=intake,
                                       redis_fsync=redis_fsync, every=push_every)
        name = f"online + a retrained base pushed every {push_every} window(s)"
        rows.append((f"{name} ({pusher.pushes} pushes, {pusher.replayed} events replayed, fits "
                     f"{pusher.fit_cpu_s:.0f} CPU s)", pushed))
        compared.append((name, pushed))
        pushed_lines.append(
            f"  {name}: learning {pushed.learn_cpu_s:.1f} CPU s (the updater's, pushes included) "
            f"+ fits {pusher.fit_cpu_s:.1f} CPU s = x"
            f"{(pushed.learn_cpu_s + pusher.fit_cpu_s) / max(base.fit_cpu_s, 1e-9):.3f} of full "
            f"retraining's CPU")
    lines = [f"recall@{ABLATION_K} against {PUBLISHING_OFF} (95 % paired bootstrap over users):"]
    lines += [f"  {name}: {against(result, reference)}" for name, result in compared]
    lines += new_after_the_cut(train, [(PUBLISHING_OFF, reference), *compared])
    retrain_gain = retrained.hits(ABLATION_K).sum() - served["app"].hits(ABLATION_K).sum()
    online_gain = served["online"].hits(ABLATION_K).sum() - served["app"].hits(ABLATION_K).sum()
    if retrain_gain > 0:
        lines.append(f"  online as shipped captures {online_gain / retrain_gain:.0%} of full "
                     f"retraining's gain over the frozen model + app-sent history, at "
                     f"x{served['online'].learn_cpu_s / max(base.fit_cpu_s, 1e-9):.3f} of its CPU "
                     f"(the updater's learning {served['online'].learn_cpu_s:.1f} s, the fits "
                     f"{base.fit_cpu_s:.1f} s)")
    else:
        lines.append("  full retraining does not beat the frozen model + app-sent history here")
    return rows, lines + pushed_lines


def pushed_result(repository: Path, train: Interactions, test: Interactions, items: Items | None,
                  model, *, window_events: int, scored: list[int], updater_args: Sequence[str],
                  intake: str, redis_fsync: str, every: int) -> tuple[ReplayResult, RetrainPusher]:
    """Online as shipped on a fresh copy of ``repository``, plus a RetrainPusher every
    ``every`` windows."""
    from freshrec.stack import serving_stack
    from model_repository import contract as c

    with tempfile.TemporaryDirectory(prefix="freshrec-pushed-") as scratch:
        copy = Path(shutil.copytree(repository, Path(scratch) / "repository"))
        pusher = RetrainPusher(train, items, model, Path(scratch) / "nightly", every=every)
        with serving_stack(copy, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
                           log_dir=Path(scratch)) as stack:
            result, _ = online_replay(stack, train, test, window_events=window_events,
                                      scored=scored, updater_args=updater_args, intake=intake,
                                      redis_fsync=redis_fsync, scratch=Path(scratch),
                                      after_learn=pusher)
    return result, pusher
