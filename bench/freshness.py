"""Freshness and publish-cost benchmarks of the updater sidecar.

    python -m bench.freshness            # (a) 20 events idle + 20 under load, (b) 1e5 and 1e6 rows
    python -m bench.freshness --quick    # (a) 10 events, (b) 1e5 rows only

(a) Feedback-to-serving freshness, end to end through real processes: a small model is built,
tritonserver and the updater run as in `freshrec serve`. For each event: the time from the
updater's acknowledgement (the event is durable) to the first `recommend` answer, polled in a
tight loop, served by a version whose manifest includes the event's log offset. Events are sent
one at a time with a random 0-0.5 s gap (so they meet the publish cadence at random phases),
idle and with client threads hammering `recommend`. The breakdown comes from the updater's own
publish records (Status): wait for publish (ack -> publish start), write (changed shards + links
+ manifest, fsynced), rename (+ fsync of the folder), verify (checksums of written shards), then
the switch inside the running retrieve until it answers (data-only versions), or Triton
load_model + probe (code changes). The peer in the same run: load_model of a version that is all hard
links of the serving one, until it answers (Triton's reload floor for this model, no training,
no writing).

(b) Publish cost against table size and rows changed: random changed rows (100 of 1e5 and of
1e6 rows, then 10 and 1000 of 1e6) of user tables (user_ids, user_rows 32 x fp32, user_history
20 x int64, user_adagrad), published as the updater does (changed shards written, the rest
hard-linked, checksums of written shards, older versions deleted) next to a full-copy publish
(every shard written and checksummed), each in its own folder, round-robin in the same run.
Timings never gate tests.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.report import machine_header, print_table, time_side_by_side

EVENTS = 20
LOAD_THREADS = 2
GAP_S = 0.5
BENCH_DATA = dict(n_users=2000, n_items=1500, n_events=60_000, n_categories=12, seed=5)
# (table rows, changed rows): the two sizes at 100 changed rows, then 1e6 at 10 and 1000
PUBLISH_CASES = ((100_000, 100), (1_000_000, 100), (1_000_000, 10), (1_000_000, 1000))
DIM, HISTORY = 32, 20
# publish record parts, in order: wait for the publish, write, rename, verify, then either Triton's
# load_model + probe (code changes) or the switch inside the running retrieve (data only)
BREAKDOWN = ("wait_s", "write_s", "rename_s", "verify_s", "load_s", "probe_s", "swap_s")


def _quantiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1)]
    return statistics.median(ordered), p95, ordered[-1]


def _freshness_run(repository, triton_url, updater_url, *, events: int, load_threads: int):
    """Per-event (freshness_s, breakdown dict) for one scenario."""
    from clients import Client, UpdaterClient
    from model_repository import contract as c
    from model_repository import retrieve_schema as schema
    from model_repository import versions

    model_dir = repository / c.RETRIEVE
    _, tables = versions.load_tables(model_dir / str(versions.latest_version(model_dir)))
    users, items = np.array(tables[schema.USER_IDS]), np.array(tables[schema.ITEM_IDS])
    rng = random.Random(7 + load_threads)
    stop, failures = threading.Event(), []

    def hammer(seed):
        with Client(triton_url) as client:
            local = random.Random(seed)
            while not stop.is_set():
                try:
                    client.recommend(int(local.choice(users)), k=10)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(s,), daemon=True) for s in range(load_threads)]
    for t in threads:
        t.start()
    offsets_of: dict[int, int] = {}
    results = []
    try:
        with Client(triton_url) as client, UpdaterClient(updater_url) as up:
            for _ in range(events):
                time.sleep(rng.uniform(0, GAP_S))
                user = int(rng.choice(users))
                reply = up.feedback(user, int(rng.choice(items)), "click")
                acked_wall, acked = time.time(), time.perf_counter()
                while True:
                    version = client.recommend(user, k=10).version
                    if version not in offsets_of:
                        offsets_of[version] = versions.read_manifest(
                            model_dir / str(version)).feedback_offset
                    if offsets_of[version] >= reply.last_offset:
                        break
                fresh_s = time.perf_counter() - acked
                record = _publish_record(up, reply.last_offset)
                breakdown = {k: record[k] for k in BREAKDOWN[1:]}
                breakdown["wait_s"] = max(0.0, record["started_at"] - acked_wall)
                results.append((fresh_s, breakdown))
    finally:
        stop.set()
        for t in threads:
            t.join()
    return results, failures


def _publish_record(up, offset: int, *, timeout_s: float = 10.0) -> dict:
    """The updater's record of the publish that first included `offset` (it lands after the
    probe, so just after the first answer from the new version it may not be there yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [r for r in up.status()["recent_publishes"]
                 if r["feedback_offset"] >= offset and r["kind"] == "publish"]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no publish record includes offset {offset}")
        time.sleep(0.01)


def _reload_floor(repository: Path, triton_url: str, repeat: int) -> list[float]:
    """Triton's reload floor for this model: publish a version that is all hard links of the
    serving one (nothing to write) and time load_model + the first answer from it."""
    import tritonclient.grpc as grpcclient

    from clients import Client
    from model_repository import contract as c
    from model_repository import templates, versions

    model_dir = repository / c.RETRIEVE
    times = []
    with grpcclient.InferenceServerClient(triton_url) as control, Client(triton_url) as client:
        for _ in range(repeat):
            parent = versions.latest_version(model_dir)
            manifest, tables = versions.load_tables(model_dir / str(parent))
            version = versions.next_version_number(model_dir)
            versions.write_version(model_dir, version, tables, parent=parent, meta=manifest.meta,
                                   feedback_offset=manifest.feedback_offset,
                                   changed_rows={name: np.zeros(0, np.int64) for name in tables},
                                   files={"model.py": templates.template(c.RETRIEVE)})
            started = time.perf_counter()
            control.load_model(c.RETRIEVE)
            while client.recommend(0, k=1).version != version:
                pass
            times.append(time.perf_counter() - started)
    return times


def bench_freshness(*, events: int) -> None:
    from exporter.build import build
    from exporter.train import TrainConfig
    from freshrec.stack import serving_stack
    from model_repository import contract as c

    with tempfile.TemporaryDirectory(prefix="freshrec-bench-") as scratch:
        scratch = Path(scratch)
        repository = build(scratch, synthetic=True, synthetic_kwargs=BENCH_DATA,
                           config=TrainConfig(epochs=2), progress=False, tensorrt=False).repository
        with serving_stack(repository, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
                           log_dir=scratch, updater=True) as stack:
            grpc_url, updater_url = stack.grpc_url, stack.updater.url
            _freshness_run(repository, grpc_url, updater_url, events=3, load_threads=0)  # warm
            rows, all_failures = [], []
            for label, threads in (("idle", 0), (f"{LOAD_THREADS} recommend threads", LOAD_THREADS)):
                results, failures = _freshness_run(repository, grpc_url, updater_url,
                                                   events=events, load_threads=threads)
                all_failures += failures
                fresh = [r[0] for r in results]
                parts = {k: statistics.median(r[1][k] for r in results) for k in BREAKDOWN}
                p50, p95, worst = _quantiles(fresh)
                rows.append([label, len(fresh), p50 * 1e3, p95 * 1e3, worst * 1e3,
                             *[v * 1e3 for v in parts.values()]])
            floor = _reload_floor(repository, grpc_url, 5)
    from updater.settings import DEFAULT_PUBLISH_EVERY_S

    print(f"\n(a) feedback -> serving freshness, ms ({BENCH_DATA['n_users']} users x "
          f"{BENCH_DATA['n_items']} items, d=32; publish every {DEFAULT_PUBLISH_EVERY_S} s while "
          "events arrive)")
    print_table(["load", "events", "p50", "p95", "max", "wait", "write", "rename", "verify",
                 "Triton load", "probe", "switch"], rows)
    print(f"peer, same run: load_model of a version that is all hard links of the serving one, "
          f"until it answers (Triton's reload floor for this model): "
          f"median {statistics.median(floor) * 1e3:.0f} ms over {len(floor)}; "
          f"failed recommend requests during all runs: {len(all_failures)}")


def _user_tables(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    from model_repository import retrieve_schema as schema

    rng = np.random.default_rng(seed)
    return {
        schema.USER_IDS: np.arange(rows, dtype=np.int64),
        schema.USER_ROWS: rng.normal(size=(rows, DIM)).astype(np.float32),
        schema.USER_HISTORY: rng.integers(-1, 10_000, size=(rows, HISTORY)).astype(np.int64),
        schema.USER_ADAGRAD: rng.random(rows).astype(np.float32),
    }


class _PublishCost:
    """One model folder of user tables; each call publishes the next version with changed rows."""

    def __init__(self, model_dir: Path, size: int, changed: int, shard_bytes: int):
        from model_repository import versions

        self.versions = versions
        self.model_dir, self.size, self.shard_bytes = model_dir, size, shard_bytes
        self.n_changed = changed
        self.tables = _user_tables(size)
        versions.write_version(model_dir, 1, self.tables, shard_bytes=shard_bytes)
        self.parent = 1
        self.rng = np.random.default_rng(1)

    def _change(self) -> np.ndarray:
        from model_repository import retrieve_schema as schema

        changed = self.rng.choice(self.size, self.n_changed, replace=False)
        self.tables[schema.USER_ROWS][changed] += 0.01
        self.tables[schema.USER_ADAGRAD][changed] += 0.01
        return changed

    def sparse(self) -> None:
        """As the updater publishes: changed shards written, the rest linked, new ones checked."""
        changed, version = self._change(), self.parent + 1
        from model_repository import retrieve_schema as schema

        moved = (schema.USER_ROWS, schema.USER_ADAGRAD)
        path = self.versions.write_version(
            self.model_dir, version, self.tables, parent=self.parent, shard_bytes=self.shard_bytes,
            changed_rows={name: changed if name in moved else changed[:0] for name in self.tables})
        self.versions.verify_new_shards(path, self.model_dir / str(self.parent))
        self._retire(path)

    def full(self) -> None:
        """The peer: every shard written and checksummed."""
        self._change()
        path = self.versions.write_version(self.model_dir, self.parent + 1, self.tables,
                                           shard_bytes=self.shard_bytes)
        self.versions.verify_version(path)
        self._retire(path)

    def written_mib(self, publish) -> float:
        """MiB of shards one more publish of this kind writes (outside the timed calls)."""
        publish()
        newest = self.model_dir / str(self.parent)
        written = self.versions.written_shards(newest, self.model_dir / str(self.parent - 1))
        return sum(p.stat().st_size for p in written) / 2**20

    def _retire(self, path: Path) -> None:
        for old in self.versions.list_versions(self.model_dir)[:-2]:  # disk stays bounded
            self.versions.remove_version(self.model_dir, old)
        self.parent += 1


def bench_publish_cost(cases: tuple[tuple[int, int], ...], *, repeat: int) -> None:
    from updater.settings import DEFAULT_SHARD_KIB

    rows_out = []
    for size, changed in cases:
        with tempfile.TemporaryDirectory(prefix="freshrec-publish-") as scratch:
            # one folder per candidate, so each call's GC deletes its own kind of version
            ours = _PublishCost(Path(scratch) / "ours", size, changed, DEFAULT_SHARD_KIB * 1024)
            peer = _PublishCost(Path(scratch) / "full", size, changed, DEFAULT_SHARD_KIB * 1024)
            times = time_side_by_side({"sparse": ours.sparse, "full": peer.full}, warmup=1,
                                      repeat=repeat)
            total = sum(t.nbytes for t in ours.tables.values())
            rows_out.append([f"{size:.0e}", total / 2**20, changed, times["sparse"].ms,
                             times["full"].ms, times["full"].median_s / times["sparse"].median_s,
                             ours.written_mib(ours.sparse), peer.written_mib(peer.full)])
    print(f"\n(b) publish cost: random changed rows of user tables (ids, rows 32 x fp32, history "
          f"20 x int64, adagrad), shards of {DEFAULT_SHARD_KIB} KiB; write + fsync + rename + "
          f"checksums + GC; median of {repeat} after 1 warm-up, round-robin")
    print_table(["rows", "table MiB", "changed", "ours ms", "full copy ms", "full / ours",
                 "ours MiB written", "full MiB written"], rows_out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 events; publish cost at 1e5 only")
    parser.add_argument("--skip-freshness", action="store_true", help="only (b)")
    parser.add_argument("--skip-publish", action="store_true", help="only (a)")
    args = parser.parse_args(argv)
    print(machine_header([
        "method: (a) real tritonserver + updater processes, wall time ack -> first answer from a "
        "version including the event; (b) versions.write_version + checksums, round-robin"]))
    if not args.skip_freshness:
        bench_freshness(events=10 if args.quick else EVENTS)
    if not args.skip_publish:
        bench_publish_cost(PUBLISH_CASES[:1] if args.quick else PUBLISH_CASES, repeat=3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
