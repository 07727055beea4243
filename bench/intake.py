"""What taking feedback in costs the updater: CPU and wall time per event, by events per Send.

    python -m bench.intake            # 3,000 events per batch size, sends of 1 / 10 / 100
    python -m bench.intake --quick    # 600 events

A small model is built and served as `freshrec serve` runs it (tritonserver, a real updater,
default publish cadence). Events are sent one after another, in sends of 1, 10 and 100 events,
as Feedback.Send calls and over one Feedback.SendEach session; each run ends when the updater
has applied every event (Status). The updater's CPU is read from Linux's /proc (every thread:
gRPC, the durable log, the live history, training, publishes), its engine thread's (training
and publishes) from Status. The peer, in the same run: the training alone,
`SparseTrainer.apply` over the same events in this process on the same version's tables. A
replay of a rating log asks before every event, so it sends once per run of distinct users
(about one event) over a session: that row is its cost per event (bench.quality's update cost),
the others what an app batching its events pays. "app -> Redis": the app writes to the Redis log
itself (clients.RedisEventWriter), one writer, or 8 on their own threads and connections at once
(an app's request handlers), whose writes Redis fsyncs together. A second table takes the
redis-server alone (no updater reading it): single-event sends with `appendfsync always` and
`everysec`, its CPU per send and the intake script's time inside Redis (INFO commandstats), so
what the fsync before each reply costs is the difference of the two settings; and the same sends
as the plain durable log a deployed peer keeps (bench.peers.PeerLog: an XADD in a MULTI,
what bench.quality's ALS is charged for), so what freshrec's intake adds is the difference of
the two writers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.report import machine_header, print_table

BATCH_SIZES = (1, 10, 100)
CONCURRENT_WRITERS = 8
CONCURRENT = f"app -> Redis, {CONCURRENT_WRITERS} writers at once"
EVENTS = 3000
BENCH_DATA = dict(n_users=2000, n_items=1500, n_events=60_000, n_categories=12, seed=5)
TIMESTAMP = 1.7e9


def _events(user_ids: np.ndarray, item_ids: np.ndarray, n: int, *, tag: str, seed: int) -> list:
    rng = np.random.default_rng(seed)
    users, items = rng.choice(user_ids, n), rng.choice(item_ids, n)
    return [dict(event_id=f"{tag}-{i}", user_id=int(u), item_id=int(it), kind="click", value=0.0,
                 timestamp=TIMESTAMP + i) for i, (u, it) in enumerate(zip(users, items))]


def _engine_cpu_s(status: dict) -> float:
    return status["training_cpu_s"] + status["publishing_cpu_s"]


def _served_run(updater, client, events: list, batch: int, *, session: bool
                ) -> tuple[float, float, float]:
    """(wall s, updater CPU s, its engine thread's CPU s) from the first send until every event
    is applied; ``session``: over one SendEach stream, else a Send call each."""
    engine, cpu, started = _engine_cpu_s(client.status()), updater.cpu_s(), time.perf_counter()
    last = 0
    with client.feedback_session() if session else nullcontext() as stream:
        send = stream.send if session else client.feedback_batch
        for start in range(0, len(events), batch):
            last = send(events[start:start + batch]).last_offset
    while (status := client.status())["applied_offset"] < last:
        time.sleep(0.005)
    return (time.perf_counter() - started, updater.cpu_s() - cpu,
            _engine_cpu_s(status) - engine)


def _redis_run(updater, redis, writers, client, events: list, batch: int
               ) -> tuple[float, float, float, float]:
    """(wall s, updater CPU s, redis-server CPU s, engine CPU s): the app writes each send to
    Redis itself, until the updater has applied every event. More than one writer: each on its
    own connection and thread, every n-th send, all at once (as an app's request handlers do;
    Redis fsyncs once for all the writes of one turn of its event loop)."""
    engine, cpu, redis_cpu = _engine_cpu_s(client.status()), updater.cpu_s(), redis.run_time_s()
    sends = [events[start:start + batch] for start in range(0, len(events), batch)]
    started = time.perf_counter()

    def write(n: int) -> int:
        return max(writers[n].send(part).last_offset for part in sends[n::len(writers)])

    with ThreadPoolExecutor(len(writers)) as pool:
        last = max(pool.map(write, range(len(writers))))
    while (status := client.status())["applied_offset"] < last:
        time.sleep(0.005)
    return (time.perf_counter() - started, updater.cpu_s() - cpu, redis.run_time_s() - redis_cpu,
            _engine_cpu_s(status) - engine)


def _training_alone(version_dir: Path, events: list) -> float:
    """CPU s of SparseTrainer.apply over ``events`` in this process, on the version's tables."""
    from model_repository import retrieve_schema as schema
    from model_repository import versions
    from model_repository.tower import tower_from_tables
    from updater.events import validate
    from updater.trainer import SparseTrainer

    manifest, tables = versions.load_tables(version_dir)
    tables = {name: np.asarray(t) for name, t in tables.items()}
    meta = schema.RetrieveMeta.from_manifest(manifest)
    trainer = SparseTrainer(tables, tower_from_tables(tables, meta.tower),
                            recency_decay=meta.recency_decay,
                            popularity_half_life_s=meta.popularity_half_life_s)
    checked = [replace(validate(e["event_id"], e["user_id"], e["item_id"], e["kind"], e["value"],
                                e["timestamp"], now=TIMESTAMP + len(events)), offset=offset)
               for offset, e in enumerate(events, start=1)]
    from threadpoolctl import threadpool_limits  # with implicit, the bench extra's

    with threadpool_limits(1):  # one BLAS thread, as the updater runs (updater.settings)
        cpu = time.process_time()
        for event in checked:
            trainer.apply(event)
        return time.process_time() - cpu


def run(events: int) -> None:
    from clients import RedisEventWriter, UpdaterClient
    from exporter.build import build
    from exporter.train import TrainConfig
    from freshrec.processes import RedisServer
    from freshrec.stack import serving_stack
    from model_repository import contract as c
    rows = []
    with tempfile.TemporaryDirectory(prefix="freshrec-intake-") as scratch:
        scratch = Path(scratch)
        result = build(scratch, synthetic=True, synthetic_kwargs=BENCH_DATA,
                       config=TrainConfig(epochs=2), progress=False, tensorrt=False)
        from model_repository import retrieve_schema as schema
        from model_repository import versions

        version = result.repository / c.RETRIEVE / "1"
        _, tables = versions.load_tables(version)
        user_ids, item_ids = np.asarray(tables[schema.USER_IDS]), np.asarray(tables[schema.ITEM_IDS])
        modes = [(batch, via) for batch in BATCH_SIZES for via in ("Send calls", "SendEach session",
                                                                   "app -> Redis")]
        modes.insert(3, (1, CONCURRENT))
        runs = {mode: _events(user_ids, item_ids, events, tag=f"b{n}", seed=n)
                for n, mode in enumerate(modes)}
        alone = {mode: _training_alone(version, runs[mode]) for mode in modes}
        with serving_stack(result.repository, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
                           log_dir=scratch, updater=True) as stack:
            client = UpdaterClient(stack.updater.url)
            try:
                _served_run(stack.updater, client, _events(user_ids, item_ids, 200, tag="warm",
                                                           seed=0), 10, session=True)
                for batch, via in modes:
                    if via.startswith("app -> Redis"):
                        continue
                    wall, cpu, engine = _served_run(stack.updater, client, runs[batch, via],
                                                    batch, session=via == "SendEach session")
                    rows.append(_intake_row(batch, via, events, wall, cpu, 0.0, engine,
                                            alone[batch, via]))
            finally:
                client.close()
            stack.stop_updaters()
            with RedisServer(log_path=scratch / "redis.log") as redis:
                updater = stack.start_updater(args=("--redis", redis.url))
                client = UpdaterClient(updater.url)
                writers = [RedisEventWriter(redis.url) for _ in range(CONCURRENT_WRITERS)]
                try:
                    _redis_run(updater, redis, writers[:1], client,
                               _events(user_ids, item_ids, 200, tag="warm-redis", seed=0), 10)
                    for batch, via in modes:
                        if not via.startswith("app -> Redis"):
                            continue
                        wall, cpu, redis_cpu, engine = _redis_run(
                            updater, redis, writers if via == CONCURRENT else writers[:1], client,
                            runs[batch, via], batch)
                        rows.append(_intake_row(batch, via, events, wall, cpu, redis_cpu, engine,
                                                alone[batch, via]))
                finally:
                    for writer in writers:
                        writer.close()
                    client.close()
                    stack.stop_updaters()
        rows.sort(key=lambda row: (row[0], [m[1] for m in modes].index(row[1])))
        alone_rows = [_redis_alone(user_ids, item_ids, events, fsync, scratch, writes=writes)
                      for fsync in ("always", "everysec") for writes in (INTAKE_SCRIPT, PEER_LOG)]
    print(machine_header([
        f"model: {BENCH_DATA['n_users']} users x {BENCH_DATA['n_items']} items (synthetic, "
        "trained 2 epochs), served as `freshrec serve` runs it; default publish cadence",
        f"events: {events} clicks per batch size, random users and items, one send after another",
    ]))
    print_table(["events per send", "sent as", "events", "wall us/event", "updater CPU us/event",
                 "redis-server CPU us/event", "of it engine (training, publishes)",
                 "training alone CPU us/event", "(updater + redis) / training"], rows)
    print("\nthe redis-server alone (no updater reading): single-event sends by one app writer, "
          "through freshrec's intake or as the plain log bench.quality's ALS keeps")
    print_table(["appendfsync", "writes", "sends", "redis-server CPU us/send",
                 "of it inside the script / XADD us/send"], alone_rows)


INTAKE_SCRIPT = "freshrec's intake script"
PEER_LOG = "a peer's log: XADD in a MULTI"


def _redis_alone(user_ids: np.ndarray, item_ids: np.ndarray, events: int, appendfsync: str,
                 scratch: Path, *, writes: str = INTAKE_SCRIPT) -> list:
    """One row: a fresh redis-server (``appendfsync``), ``events`` single-event sends by one
    writer, no updater reading them: freshrec's (set up for the intake, a RedisEventWriter) or,
    ``writes`` PEER_LOG, the plain durable log a deployed peer keeps (bench.quality's ALS)."""
    from bench.peers import PeerLog
    from clients import RedisEventWriter
    from freshrec.processes import RedisServer
    from model_repository.redis_layout import RedisKeys, redis_client
    from updater.redis_log import RedisFeedbackLog

    with RedisServer(log_path=scratch / f"redis-alone-{appendfsync}.log",
                     appendfsync=appendfsync) as redis:
        if writes == INTAKE_SCRIPT:
            intake = RedisFeedbackLog(redis.url, history_len=20)  # sets the intake up for apps,
            intake.set_catalogue(item_ids, grows=False)  # as the updater does at start
            intake.close()
            writer, stream, command = RedisEventWriter(redis.url), RedisKeys().events, "evalsha"
        else:
            writer, stream, command = PeerLog(redis.url), PeerLog.STREAM, "xadd"
        try:
            for event in _events(user_ids, item_ids, 200, tag="warm", seed=0):
                writer.send([event])
            with redis_client(redis.url) as r:
                r.config_resetstat()
            sends = _events(user_ids, item_ids, events, tag=f"alone-{appendfsync}", seed=9)
            cpu = redis.run_time_s()
            for event in sends:
                writer.send([event])
            cpu = redis.run_time_s() - cpu
            with redis_client(redis.url) as r:
                inside_s = r.info("commandstats").get(f"cmdstat_{command}", {}).get("usec", 0) / 1e6
                stored = r.xlen(stream)
            if stored != 200 + events:
                raise RuntimeError(f"{writes} stored {stored} events of {200 + events} sent")
        finally:
            writer.close()
    return [appendfsync, writes, events, cpu / events * 1e6, inside_s / events * 1e6]


def _intake_row(batch, via, events, wall, cpu, redis_cpu, engine, alone_s) -> list:
    return [batch, via, events, wall / events * 1e6, cpu / events * 1e6, redis_cpu / events * 1e6,
            engine / events * 1e6, alone_s / events * 1e6, (cpu + redis_cpu) / max(alone_s, 1e-9)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intake",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--quick", action="store_true", help=f"{EVENTS // 5} events per size")
    args = parser.parse_args(argv)
    run(args.events // 5 if args.quick else args.events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
