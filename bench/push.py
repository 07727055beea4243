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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(machine_header([f"method: {CLIENTS} closed-loop recommend threads over gRPC; each "
                          f"phase {PHASE_S:.0f} s of load from the RPC on; {BASE_DATA}"]))
    with tempfile.TemporaryDirectory(prefix="freshrec-push-") as scratch:
        rows = run(Path(scratch))
    print_table(["phase", "requests", "failed", "p50 ms", "p99 ms", "RPC s", "replayed",
                 "all clients on it, s after the RPC returned"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
