"""Recommendation quality as users meet it: two protocols, every peer in the same run.

    python -m bench.quality                              # prequential replay, synthetic data
    python -m bench.quality --data PATH                  # u.data, ratings.dat or ratings.csv
    python -m bench.quality --window-events 50 --score-every 20
    python -m bench.quality --protocol split             # what `freshrec build` reports, with peers
    python -m bench.quality --protocol split --cuts 0.6,0.7,0.8,0.9   # the same at four cuts
    python -m bench.quality --quick                      # 20 % of the replay
    python -m bench.quality --intake redis               # the app sends to the updater's Redis log

Both train the base model on the earliest 80 % of events by time as `freshrec build` does
(exporter.build.train_model: the validation search over the closed form and the trained towers,
and the popularity prior; `--no-search`: exporter.train's defaults).

`--protocol prequential` (default) serves it with the real tritonserver and walks the remaining
events in time order (bench.replay): each event is first asked (top 50, the user's seen items
excluded), then learned. Rows, all on the same questions:
- popularity: counts of every event so far, recounted after each window;
- static base model: Triton `recommend` on the base model; no feedback, so no learning and no
  live history (the version's stored history of each user's training events);
- static + app-sent history: the same server, the app sending the user's last `--app-history`
  items (everything before the event) as HISTORY with each request; nothing sent back;
- freshrec online: streamed; each event is sent as feedback (one Feedback.SendEach session, each
  event with its own timestamp) right after its question, so the live history serves the user's
  next event, and the updater (a real `python -m updater`, no publish of its own) publishes the
  row updates once per window (Admin.Publish); with `--shown-skips N` the answer's top N the user
  did not take go before each asked event as skips (the app showed them);
- ALS, BPR, item-kNN, EASE (bench.peers): refitted from scratch on all events so far before each
  scored window;
- SASRec (RecBole, bench.sasrec; optional extra `bench-seq`): trained once on the training
  window, each event predicted from the user's events before it.
"learn s" is what learning cost: freshrec's publishes (Admin.Publish: the window's row updates,
then a version written and switched to), the peers' fits; "ingest s" what taking the events in
cost: freshrec's sends, each over gRPC to another process and durable (fsynced log, live
history) before its reply, one per run of distinct users; the peers append to a list in
process (0), but for ALS with `--intake redis`, which gets the same sends as freshrec and stores
them in a durable log of its own (bench.peers.LoggedPeer: a private redis-server with the same
appendfsync, an XADD per event, a MULTI per send), as a deployed peer must to refit from them.
"ask s" the time spent answering (over gRPC for the served rows, in-process for the others).
Below the table, the update cost in CPU seconds against the CPU of ALS's fits: the updater's
learning (its engine thread's row training and publishes, Admin.Status), and its whole process
over the replay (Linux /proc: with the intake, i.e. gRPC, the durable log and the live history
per event, which the peers get for free); the retrieve model's switch to each new version,
inside tritonserver, is not counted. `--intake redis`: the updater keeps its log in a private
redis-server (appendfsync always) and the app writes each send to it
(clients.RedisEventWriter); the intake's CPU is then the redis-server's (its threads' on-CPU
clock), counted with the updater's, less what the redis-server ran while the app asked (the
same clock read around each ask: the app asks and sends in turn, so that is retrieve's
live-history reads, which run inside tritonserver with the SQLite store and are not counted
there either; the updater's own reads made meanwhile are added back, as the time inside its
XRANGE and GET commands, INFO commandstats). The last line sets that all-in cost beside ALS's
fits plus its log's redis-server CPU (the same clock): like for like, each with its durable
log of the same sends.

`--protocol split` reports recall@K / NDCG@K on the latest 20 % with each user's training items
excluded (exporter.evaluate, so the model's rows equal `freshrec build --no-text-encoder`'s)
beside popularity and the peers fitted on the same training window. With `--cuts 0.6,0.7,...`
it runs at each cut of the log and prints one line per cut (the model against the best peer on
each goal metric): on a log where few users span the cut, one cut's verdict is a handful of
users'.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from bench.ablation import DEFAULT_RETRAIN_EVERY, ablation_rows
from bench.online import online_replay
from bench.peers import RetrainedPeer, make_peers
from bench.quality_cut import describe_model, package_version, ratio_text, train_on_the_cut
from bench.replay import (
    DEFAULT_WINDOW_EVENTS,
    AppHistoryRecommender,
    PopularityRecommender,
    ReplayResult,
    ServedRecommender,
    replay,
)
from bench.report import machine_header, print_table
from exporter.data import Interactions

log = logging.getLogger(__name__)

PROTOCOLS = ("prequential", "split")
# the measurement: the app sends the last 50 items it saw the user act on
DEFAULT_APP_HISTORY = 50
RATIO_KEYS = ("recall@10", "recall@50", "ndcg@10")


def _row(name: str, result: ReplayResult, learn_s: float, ask_s: float, ingest_s: float = 0.0
         ) -> list:
    m = result.metrics
    return [name, m["recall@10"], m["recall@50"], m["ndcg@10"], result.scored, learn_s, ingest_s,
            ask_s]


def _served_rows(repository: Path, scratch: Path, train: Interactions, test: Interactions, *,
                 window_events: int, scored: list[int], app_history: int,
                 updater_args: tuple[str, ...], shown_skips: int = 0, intake: str = "grpc",
                 redis_fsync: str = "always") -> tuple[list, dict[str, ReplayResult]]:
    from freshrec.stack import serving_stack
    from model_repository import contract as c

    rows, results = [], {}
    with serving_stack(repository, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
                       log_dir=scratch) as stack:
        # the rows that send no feedback first: the updater below changes what the server answers
        static = ServedRecommender(stack.grpc_url)
        try:
            results["static"] = replay(train, test, static, window_events=window_events,
                                       scored_windows=scored)
        finally:
            static.close()
        rows.append(_row("static base model (Triton, no feedback)", results["static"], 0.0,
                         results["static"].recommend_s))
        app = AppHistoryRecommender(stack.grpc_url, train, history_len=app_history)
        try:
            results["app"] = replay(train, test, app, window_events=window_events,
                                    scored_windows=scored)
        finally:
            app.close()
        rows.append(_row(f"static + app-sent history (last {app_history})", results["app"], 0.0,
                         results["app"].recommend_s))
        result, publishes = online_replay(stack, train, test, window_events=window_events,
                                          scored=scored, updater_args=updater_args,
                                          shown_skips=shown_skips, intake=intake,
                                          redis_fsync=redis_fsync, scratch=scratch)
        results["online"] = result
        via = "to Redis" if intake == "redis" else "streamed"
        rows.append(_row(f"freshrec online ({via} feedback, {publishes} publishes)", result,
                         result.learn_s, result.recommend_s, ingest_s=result.send_s))
    return rows, results


def run_prequential(*, data: Path | None, window_events: int, replay_fraction: float,
                    score_every: int, app_history: int, seed: int, sasrec: bool, sasrec_epochs: int,
                    updater_args: tuple[str, ...] = (), search: bool = True,
                    shown_skips: int = 0, intake: str = "grpc", redis_fsync: str = "always",
                    ablation: bool = False, retrain_every: int = DEFAULT_RETRAIN_EVERY,
                    push_every: int = 0, with_peers: bool = True) -> None:
    from exporter.build import write_repository

    started = time.perf_counter()
    dataset, source, train, test, model, train_s, chosen = train_on_the_cut(data, seed=seed,
                                                                           search=search)
    test = test.take(slice(0, max(1, int(round(len(test) * replay_fraction)))))
    n_windows = -(-len(test) // window_events)
    scored = list(range(0, n_windows, score_every))
    rows: list = []
    ablation_lines: list[str] = []
    popularity = PopularityRecommender(train)
    result = replay(train, test, popularity, window_events=window_events, scored_windows=scored)
    rows.append(_row("popularity (recounted per window)", result, result.learn_s, result.recommend_s))
    peers: dict[str, ReplayResult] = {"popularity": result}
    if model.popularity_half_life_s > 0:  # the prior's own counts, as a peer of their own
        recent = PopularityRecommender(train, half_life_s=model.popularity_half_life_s)
        result = replay(train, test, recent, window_events=window_events, scored_windows=scored)
        rows.append(_row("recent popularity (the prior's half-life, recounted per window)", result,
                         result.learn_s, result.recommend_s))
        peers["recent popularity"] = result
    with tempfile.TemporaryDirectory(prefix="freshrec-quality-") as scratch:
        repository = write_repository(model, Path(scratch) / "repository", tensorrt=False).repository
        # the online row publishes into `repository` and logs every event there: the ablation's
        # variants each start from a copy of the base as it was built
        base = (Path(shutil.copytree(repository, Path(scratch) / "base" / "repository"))
                if ablation else None)
        served_rows, served = _served_rows(repository, Path(scratch), train, test,
                                           window_events=window_events, scored=scored,
                                           app_history=app_history, updater_args=updater_args,
                                           shown_skips=shown_skips, intake=intake,
                                           redis_fsync=redis_fsync)
        rows += served_rows
        if ablation:
            extra, ablation_lines = ablation_rows(
                base, train, test, dataset.items, model, served,
                window_events=window_events, scored=scored, updater_args=updater_args,
                intake=intake, redis_fsync=redis_fsync, retrain_every=retrain_every,
                app_history=app_history, push_every=push_every)
            rows += [_row(name, result, result.learn_s, result.recommend_s,
                          ingest_s=result.send_s) for name, result in extra]
    fit_s: dict[str, float] = {}
    fit_cpu_s: dict[str, float] = {}
    notes = []
    als_log_cpu_s = None  # with --intake redis: the redis-server CPU of ALS's own durable log
    for peer in make_peers(seed=seed) if with_peers else ():
        if peer.name == "ALS" and intake == "redis":
            result, retrained, als_log_cpu_s = _logged_replay(peer, train, test, window_events,
                                                              scored, redis_fsync)
        else:
            retrained = RetrainedPeer(peer, train)
            result = replay(train, test, retrained, window_events=window_events,
                            scored_windows=scored)
        rows.append(_row(f"{peer.name} retrained per window ({retrained.fits} fits)", result,
                         retrained.fit_s, result.recommend_s - retrained.fit_s,
                         ingest_s=result.send_s))
        peers[peer.name] = result
        fit_s[peer.name] = retrained.fit_s
        fit_cpu_s[peer.name] = retrained.fit_cpu_s
        notes.append(peer.describe())
    if sasrec:
        sasrec_row = _sasrec_row(train, test, window_events=window_events, scored=scored,
                                 epochs=sasrec_epochs, seed=seed)
        if sasrec_row is not None:
            row, result, note = sasrec_row
            rows.append(row)
            peers["SASRec"] = result
            notes.append(note)
    print(machine_header([
        f"data: {source}: {len(dataset.interactions)} events; base model trained on the earliest "
        f"{len(train)} (80 %) in {train_s:.1f} s",
        describe_model(model, chosen),
        f"replay: {len(test)} events after the cut in {n_windows} windows of {window_events}, "
        f"{len(scored)} windows scored (every {score_every}), all learned; each event asked before "
        "it is learned, the user's seen items excluded; K = 50; "
        f"freshrec online asked in {served['online'].runs} runs of distinct users",
        (f"peers: implicit {package_version('implicit')}; " + "; ".join(notes)
         + "; binary interactions" if notes else "peers: none retrained (--no-peers)"),
        f"updater: {' '.join(updater_args) or 'default settings'}, publishing only when asked; "
        + (f"feedback written by the app to its Redis log (appendfsync {redis_fsync}); "
           if intake == "redis" else "feedback over gRPC; ")
        + "feedback kind click for every event, each with its own timestamp"
        + (f"; before each asked event, the answer's top {shown_skips} not taken as skips"
           if shown_skips else ""),
        f"whole run {time.perf_counter() - started:.0f} s",
    ]))
    print_table(["recommender", "recall@10", "recall@50", "ndcg@10", "events", "learn s",
                 "ingest s", "ask s"],
                rows)
    for line in ablation_lines:
        print(line)
    online = served["online"]
    # the updater's process and, with --intake redis, the redis-server's, less what it ran on asks
    all_in = online.cpu_s + online.redis_cpu_s - online.redis_ask_cpu_s
    best = max(peers, key=lambda name: peers[name].metrics["recall@10"])
    print(f"freshrec online vs static + app-sent history: {_ratios(online, served['app'])}")
    print(f"freshrec online vs the best peer ({best}, by recall@10): {_ratios(online, peers[best])}")
    if "ALS" in peers:
        print(f"freshrec online vs ALS retrained per window: {_ratios(online, peers['ALS'])}; "
              f"learn s x{ratio_text(online.learn_s, fit_s['ALS'])} of ALS's fits, learn + ingest "
              f"x{ratio_text(online.learn_s + online.send_s, fit_s['ALS'])}")
        print(f"update cost in CPU seconds: the updater's learning (its engine thread: row "
              f"training and publishes) {online.learn_cpu_s:.1f} s, ALS's fits "
              f"{fit_cpu_s['ALS']:.1f} s: x{ratio_text(online.learn_cpu_s, fit_cpu_s['ALS'])}; "
              + (f"the updater's whole process {online.cpu_s:.1f} s and the redis-server's "
                 f"{online.redis_cpu_s:.1f} s, less what it ran while the app asked, i.e. "
                 f"retrieve's live-history reads ({online.redis_ask_cpu_s:.1f} s: serving, not "
                 f"updating; the updater's reads inside commands added back): "
                 f"x{ratio_text(all_in, fit_cpu_s['ALS'])}"
                 if intake == "redis" else
                 f"the updater's whole process (with the intake: gRPC, durable log and live "
                 f"history per event) {online.cpu_s:.1f} s: x{ratio_text(online.cpu_s, fit_cpu_s['ALS'])}"))
        if als_log_cpu_s is not None:
            print(f"like for like, each with its durable log of the same sends (appendfsync "
                  f"{redis_fsync}): freshrec all-in {all_in:.1f} s against ALS's fits "
                  f"{fit_cpu_s['ALS']:.1f} s + its log's redis-server {als_log_cpu_s:.1f} s (an "
                  f"XADD per event, a MULTI per send; no dedupe, no live history): "
                  f"x{ratio_text(all_in, fit_cpu_s['ALS'] + als_log_cpu_s)}")


def _logged_replay(peer, train: Interactions, test: Interactions, window_events: int,
                   scored: list[int], redis_fsync: str):
    """The peer retrained per window that also logs each send durably (bench.peers.LoggedPeer)
    in a private redis-server: (replay result, the peer, that server's CPU seconds)."""
    from bench.peers import LoggedPeer
    from freshrec.processes import RedisServer

    with tempfile.TemporaryDirectory(prefix="freshrec-peer-log-") as scratch, \
            RedisServer(log_path=Path(scratch) / "redis.log", appendfsync=redis_fsync) as redis:
        logged = LoggedPeer(peer, train, redis.url)
        try:
            started = redis.run_time_s()
            result = replay(train, test, logged, window_events=window_events,
                            scored_windows=scored)
            return result, logged, redis.run_time_s() - started
        finally:
            logged.close()


def _sasrec_row(train: Interactions, test: Interactions, *, window_events: int, scored: list[int],
                epochs: int, seed: int):
    """(table row, result, header note), or None with the reason printed when RecBole is missing."""
    from bench.sasrec import SASRecRecommender, recbole_missing

    missing = recbole_missing()
    if missing:
        print(f"SASRec row skipped: {missing}")
        return None
    with tempfile.TemporaryDirectory(prefix="freshrec-sasrec-") as scratch:
        sasrec = SASRecRecommender(train, workdir=Path(scratch), epochs=epochs, seed=seed)
        result = replay(train, test, sasrec, window_events=window_events, scored_windows=scored)
    row = _row(f"SASRec trained once ({epochs} epochs), streamed history", result, sasrec.fit_s,
               result.recommend_s)
    return row, result, sasrec.describe()


def _ratios(ours: ReplayResult, theirs: ReplayResult) -> str:
    return ", ".join(f"{k} x{ratio_text(ours.metrics[k], theirs.metrics[k])}" for k in RATIO_KEYS)


def _shares(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cuts: {text!r} is not a comma-separated list of "
                                         "numbers, e.g. 0.6,0.7,0.8") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, default="prequential",
                        help="prequential replay through the server (default) or build's time split")
    parser.add_argument("--data", type=Path, help="ratings file (default: the synthetic generator)")
    parser.add_argument("--window-events", type=int, default=DEFAULT_WINDOW_EVENTS,
                        help=f"events per replay window: one publish, one peer refit each "
                             f"(default {DEFAULT_WINDOW_EVENTS})")
    parser.add_argument("--app-history", type=int, default=DEFAULT_APP_HISTORY,
                        help="items the app sends as HISTORY in the static + app-sent history row "
                             f"(default {DEFAULT_APP_HISTORY})")
    parser.add_argument("--replay-fraction", type=float, default=1.0,
                        help="replay only this leading share of the events after the cut")
    parser.add_argument("--score-every", type=int, default=1,
                        help="score every n-th window only (all are learned; peers fit n x less)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--updater-args", default="",
                        help="extra flags for the updater process, e.g. \"--lr 0.002\"")
    parser.add_argument("--shown-skips", type=int, default=0,
                        help="freshrec online: before each asked event, send the answer's top N "
                             "items the user did not take as skips (items shown and skipped; "
                             "default 0: none)")
    parser.add_argument("--intake", choices=("grpc", "redis"), default="grpc",
                        help="freshrec online's feedback path: grpc (default), a SendEach session "
                             "to the updater, durable in its SQLite log; redis, the app writing "
                             "each send straight to the updater's Redis log (a private "
                             "redis-server, appendfsync always)")
    parser.add_argument("--redis-fsync", choices=("always", "everysec"), default="always",
                        help="with --intake redis: the server's appendfsync (always, default: each "
                             "send fsynced before its reply; everysec: once a second, a crash may "
                             "lose the last second)")
    parser.add_argument("--no-sasrec", action="store_true", help="leave the SASRec row out")
    parser.add_argument("--no-peers", action="store_true",
                        help="leave out the classic peers retrained per window (ALS, BPR, "
                             "item-kNN, EASE): with --ablation, full retraining is the reference")
    parser.add_argument("--sasrec-epochs", type=int, default=None,
                        help="SASRec training epochs (default: bench.sasrec's)")
    parser.add_argument("--quick", action="store_true", help="replay 20 %% of the events")
    parser.add_argument("--cuts", type=_shares, default=None,
                        help="with --protocol split: run it at each of these cuts (shares of the "
                             "events by time, e.g. 0.6,0.7,0.8,0.9) and print one line per cut")
    parser.add_argument("--no-search", action="store_true",
                        help="train the base model with exporter.train's defaults instead of "
                             "`freshrec build`'s validation search")
    parser.add_argument("--ablation", action="store_true",
                        help="with --protocol prequential: add online with publishing off, with "
                             "row updates only, with counts and trend only (each a replay of its "
                             "own) and full retraining, each against publishing off with its "
                             "interval (bench.ablation)")
    parser.add_argument("--retrain-every", type=int, default=DEFAULT_RETRAIN_EVERY,
                        help="with --ablation: refit the base model every N windows (default "
                             f"{DEFAULT_RETRAIN_EVERY})")
    parser.add_argument("--push-every", type=int, default=0,
                        help="with --ablation: also online plus the base refitted on every event "
                             "so far and pushed (freshrec push) every N windows (default 0: not)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.replay_fraction = min(args.replay_fraction, 0.2)
    if args.window_events < 1 or args.score_every < 1 or not 0 < args.replay_fraction <= 1:
        parser.error("--window-events and --score-every must be >= 1, --replay-fraction in (0, 1]")
    if args.app_history < 1:
        parser.error("--app-history must be >= 1")
    if args.shown_skips < 0:
        parser.error("--shown-skips must be >= 0")
    if args.retrain_every < 1:
        parser.error("--retrain-every must be >= 1")
    if args.push_every < 0 or args.push_every and not args.ablation:
        parser.error("--push-every must be >= 0, and goes with --ablation")
    if args.cuts is not None:
        if args.protocol != "split":
            parser.error("--cuts goes with --protocol split")
        if not args.cuts or not all(0 < cut < 1 for cut in args.cuts):
            parser.error("--cuts: shares of the events by time, each in (0, 1), e.g. 0.6,0.7,0.8")
        from bench.quality_split import run_cuts  # torch: only the split protocol needs it

        run_cuts(data=args.data, seed=args.seed, cuts=args.cuts, search=not args.no_search)
        return 0
    if args.protocol == "split":
        from bench.quality_split import run_split

        run_split(data=args.data, seed=args.seed, search=not args.no_search)
        return 0
    from bench.sasrec import DEFAULT_EPOCHS

    run_prequential(data=args.data, window_events=args.window_events,
                    replay_fraction=args.replay_fraction, score_every=args.score_every,
                    app_history=args.app_history, seed=args.seed, sasrec=not args.no_sasrec,
                    sasrec_epochs=args.sasrec_epochs or DEFAULT_EPOCHS,
                    updater_args=tuple(shlex.split(args.updater_args)),
                    search=not args.no_search, shown_skips=args.shown_skips, intake=args.intake,
                    redis_fsync=args.redis_fsync, ablation=args.ablation,
                    retrain_every=args.retrain_every, push_every=args.push_every,
                    with_peers=not args.no_peers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
