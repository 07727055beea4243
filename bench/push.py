"""Push and rollback of a retrained base under load (issue 28): `python -m bench.push`.

A base is built (trained pooled tower, d = 32) and served with its updater; clicks flow in and
are published; a nightly retrain is built from the base data plus the feedback log
(freshrec.retrain, the closed form: the same size, so it switches inside retrieve) and another
of another size (d = 16: Triton's load_model); more clicks follow the retrain's cut. Then, under
CLIENTS closed-loop recommend threads, each phase runs in turn: the load alone (the peer), a push
of the same-size base, a rollback to the version before it, a push of the other-size base and a
rollback again. Reported per phase: requests, failed, p50 / p99 latency, the RPC's seconds,
the events its replay trained, and the time from the RPC's return until every client thread's
answers come from the new version (negative: all had switched before it returned, as its probe
waits for the switch).

`python -m bench.push --canary-data PATH [--share 0.1]`: the canary replay on a real log
(`canary_replay`): a worse canary rolled back, a better one promoted, and the events each took.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.report import machine_header, print_table
from bench.soak import Load, latency_row

CLIENTS = 8
PHASE_S = 8.0  # load before and after each push or rollback
BASE_DATA = dict(n_users=2000, n_items=1500, n_events=60_000, n_categories=12, seed=5)
FEEDBACK_EVENTS = 2000  # logged before the retrain
LATE_EVENTS = 300  # logged after it: the push replays them


def _clicks(users, items, n, rng):
    prefix = uuid.uuid4().hex
    return [dict(event_id=f"{prefix}-{k}", user_id=int(rng.choice(users)),
                 item_id=int(rng.choice(items)), kind="click") for k in range(n)]


def _send(up, events, batch=200):
    last = 0
    for start in range(0, len(events), batch):
        last = up.feedback_batch(events[start:start + batch]).last_offset
    return last


def _switched_by(load: Load, version: int, after: float, deadline_s: float = 30.0) -> float:
    """Seconds from ``after`` until every client thread's answers come from ``version`` (the
    newest end time, over threads, of the last answer from another version)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        recent = load.samples[-4 * len(load.threads):]
        if recent and all(s[3] == version for s in recent):
            break
        time.sleep(0.05)
    other = [s[0] for s in load.samples if s[3] != version and s[2]]
    return (max(other) if other else after) - after


def run(scratch: Path) -> list[list]:
    from clients import UpdaterClient
    from exporter.build import build
    from exporter.train import METHOD_EASE, TrainConfig
    from freshrec.retrain import logged_feedback
    from freshrec.stack import serving_stack
    from model_repository import contract as c
    from model_repository import retrieve_schema as schema
    from model_repository import versions
    from updater.main import LOG_FILE

    say = lambda message: print(f"bench.push: {message}", flush=True)  # noqa: E731
    base = build(scratch / "base", synthetic=True, synthetic_kwargs=BASE_DATA,
                 config=TrainConfig(dim=32, epochs=2, seed=5), progress=False, tensorrt=False,
                 text_encoder=False)
    say(f"base built: {base.repository}")
    _, tables = versions.load_tables(base.repository / c.RETRIEVE / "1")
    users, items = np.array(tables[schema.USER_IDS]), np.array(tables[schema.ITEM_IDS])
    rng = np.random.default_rng(7)
    rows = []
    with serving_stack(base.repository, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
                       log_dir=scratch, updater=True) as stack, \
            UpdaterClient(stack.updater.url) as up:
        up.publish()
        _send(up, _clicks(users, items, FEEDBACK_EVENTS, rng))
        up.publish()
        log_path = str(base.repository.parent / "updater" / LOG_FILE)
        retrains = {}
        for name, config in (("same size (d = 32, closed form)",
                              TrainConfig(method=METHOD_EASE, dim=32, seed=5)),
                             ("another size (d = 16, closed form)",
                              TrainConfig(method=METHOD_EASE, dim=16, seed=5))):
            started = time.perf_counter()
            feedback, offset = logged_feedback(log_path)
            out = build(scratch / name.split()[0], data=base.ratings, progress=False,
                        tensorrt=False, text_encoder=False, config=config, search=False,
                        feedback=feedback, feedback_offset=offset)
            retrains[name] = out.repository
            say(f"retrained {name} on {len(feedback)} logged events up to offset {offset} in "
                f"{time.perf_counter() - started:.1f} s")
        _send(up, _clicks(users, items, LATE_EVENTS, rng))
        up.publish()
        with Load(stack.grpc_url, users, clients=CLIENTS) as load:
            start = time.monotonic()
            time.sleep(PHASE_S)
            rows.append(latency_row("load alone (the peer)",
                                    load.between(start, time.monotonic()))[:5] + ["", "", ""])
            for name, repository in retrains.items():
                before = up.status()["published_version"]
                for label, call in ((f"push, {name}", lambda r=repository: up.push(r, force=True)),
                                    ("rollback to the version before it",
                                     lambda b=before: up.rollback(to=b))):
                    start = time.monotonic()
                    called = time.perf_counter()
                    reply = call()
                    rpc_s = time.perf_counter() - called
                    returned = time.monotonic()
                    switched = _switched_by(load, reply["version"], returned)
                    time.sleep(PHASE_S)
                    rows.append(latency_row(label, load.between(start, time.monotonic()))[:5]
                                + [f"{rpc_s:.2f}", reply.get("replayed", ""), f"{switched:+.2f}"])
                    say(f"{label}: version {reply['version']}, {rpc_s:.2f} s")
    return rows


def popularity_only(repository: Path, out: Path) -> Path:
    """A copy of a built repository whose retrieve version ranks by the popularity prior alone
    (item rows zero, the prior at weight 1 in and out of session): the deliberately worse base."""
    import shutil

    from model_repository import contract as c
    from model_repository import templates, versions

    copy = Path(shutil.copytree(repository, out))
    version_dir = copy / c.RETRIEVE / "1"
    manifest, tables = versions.load_tables(version_dir)
    tables = {name: np.array(t) for name, t in tables.items()}
    tables["item_rows"] = np.zeros_like(tables["item_rows"])
    meta = {**manifest.meta, "popularity_weight": 1.0, "session_popularity_weight": 1.0,
            "train": {"popularity only": True}}
    shutil.rmtree(version_dir)
    versions.write_version(copy / c.RETRIEVE, 1, tables, meta=meta,
                           feedback_offset=manifest.feedback_offset,
                           files={"model.py": templates.template(c.RETRIEVE)})
    return copy


def canary_replay(data: Path, scratch: Path, *, share: float, batch: int = 50) -> list[list]:
    """The log's latest 20 % replayed in time order, to a server whose pushed canary decides
    itself (--auto): a worse canary (popularity only) beside the model, then the model as the
    canary beside popularity only. Each event's user first asks for its top 10 (the answer its
    arm serves, recorded as an impression), then the event is sent as a click with its own
    timestamp. Per run: the decision, the log events it took, each arm's exposed events and hit
    rate then (what the rule reads), and the same on recomputed answers (asked)."""
    import shutil

    from bench.quality_cut import train_on_the_cut
    from clients import Client, UpdaterClient
    from exporter.build import write_repository
    from freshrec.stack import serving_stack
    from model_repository import contract as c
    from model_repository.impressions import wait_recording

    say = lambda message: print(f"bench.push: {message}", flush=True)  # noqa: E731
    _, source, _, test, model, train_s, _ = train_on_the_cut(data, seed=0)
    say(f"{source}: base trained in {train_s:.0f} s; {len(test)} events to replay")
    real = write_repository(model, scratch / "model" / "repository", tensorrt=False).repository
    popular = popularity_only(real, scratch / "popular" / "repository")
    rows = []
    for label, serving, canary in (("popularity-only canary beside the model", real, popular),
                                   ("the model as canary beside popularity only", popular, real)):
        run_dir = scratch / label.split()[0]
        repository = Path(shutil.copytree(serving, run_dir / "repository"))
        arms: dict[int, set] = {}
        with serving_stack(repository, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
                           log_dir=run_dir, updater=True) as stack, \
                UpdaterClient(stack.updater.url) as up, Client(stack.grpc_url) as client:
            up.push(canary, canary=share, auto=True, force=True)
            wait_recording(repository / c.RETRIEVE, lambda: client.recommend(1, k=1))
            sent, state = 0, up.status()["canary"]
            for start in range(0, len(test), batch):
                end = min(start + batch, len(test))
                asked = [(user, client.recommend(user, k=10).arm)
                         for user in test.user_ids[start:end].tolist()]
                up.feedback_batch([dict(event_id=f"r{n}", user_id=int(test.user_ids[n]),
                                        item_id=int(test.item_ids[n]), kind="click",
                                        timestamp=float(test.timestamps[n]))
                                   for n in range(start, end)])
                sent = end
                if (start // batch) % 10 == 9 or end == len(test):
                    up.publish()
                state = up.status()["canary"]
                if state["ended"]:
                    break  # this batch's asks may straddle the end: not counted as switches
                for user, arm in asked:  # all asked while the canary ran
                    arms.setdefault(user, set()).add(arm)
            say(f"{label}: {state['ended'] or 'undecided'} after {sent} events: {state['reason']}")
            switched = sum(len(a) > 1 for a in arms.values())
            rows.append([label, state["ended"] or "undecided", sent,
                         *(f"{state[arm]['hit_rate']:.4f} ({state[arm]['events']})"
                           for arm in ("control", "canary", "control_asked", "canary_asked")),
                         f"{switched} of {len(arms)}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__.splitlines()[0])
    parser.add_argument("--canary-data", type=Path,
                        help="instead: the canary replay on this log (ratings folder)")
    parser.add_argument("--share", type=float, default=0.1, help="the canary's share (0.1)")
    args = parser.parse_args(argv)
    if args.canary_data is not None:
        print(machine_header([f"method: the log's latest 20 % sent as feedback in time order, "
                              f"a canary at {args.share:.0%} pushed with --auto first"]))
        with tempfile.TemporaryDirectory(prefix="freshrec-canary-") as scratch:
            rows = canary_replay(args.canary_data, Path(scratch), share=args.share)
        print_table(["run", "decision", "log events until it", "control hit@10 shown (events)",
                     "canary hit@10 shown", "control hit@10 asked", "canary hit@10 asked",
                     "users switching arms"], rows)
        return 0
    print(machine_header([f"method: {CLIENTS} closed-loop recommend threads over gRPC; each "
                          f"phase {PHASE_S:.0f} s of load from the RPC on; {BASE_DATA}"]))
    with tempfile.TemporaryDirectory(prefix="freshrec-push-") as scratch:
        rows = run(Path(scratch))
    print_table(["phase", "requests", "failed", "p50 ms", "p99 ms", "RPC s", "replayed",
                 "all clients on it, s after the RPC returned"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
