"""End-to-end serving throughput: locust over gRPC against `recommend`, the Triton floor beside it.

    python -m bench.e2e                  # N = 1e5 items, 1 / 8 / 32 users, 15 s per row (~3 min)
    python -m bench.e2e --quick          # 8 users, 5 s per row

One tritonserver serves, in one run:
- `recommend`: the real entry point (ensemble -> retrieve: numpy tower -> score_topk) over a
  model of N items whose tables are random (throughput does not depend on what was learned, and
  training a 1e5-item model would cost minutes for nothing here);
- `floor`: an empty python-backend model with the same inputs, outputs and batching settings
  (bench/floor/model.py): the throughput Triton and the python backend allow on this host;
- `recommend` again while the updater (a real `python -m updater` process) receives feedback
  and publishes a new version every few seconds through its Admin Publish, so Triton loads a new
  `retrieve` version under load.

Every row records impressions (retrieve writes each answer for the updater's attribution,
model_repository.impressions) except `recommend, impressions off`: its cost per request is the
difference between that row and `recommend`, and the bytes it writes are in `recommend`'s note.

`retrieve, no ensemble` sends the same load to `retrieve` itself: the cost of the ensemble hop
that keeps clients on one stable name. `recommend, unpadded inputs` is the same load with unused
HISTORY / EXCLUDE omitted rather than sent empty: Triton only batches requests with the same set
of inputs (`LoadMix.pad_inputs`).

For each user count the rows run back to back (floor, recommend, recommend + reloads) so
that background load hits them alike. Locust runs as a subprocess on the same machine (it
competes with the server for the two cores, for every row alike). Latencies are locust's (whole
ms below 100 ms). Timings are never asserted by tests.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.cost import PRICE_PER_CORE_HOUR, Cost, als_cost, faiss_cost, feedback_cost, tree_cpu_s
from bench.report import machine_header, print_table

log = logging.getLogger(__name__)

FLOOR = "floor"
FLOOR_TEMPLATE = Path(__file__).resolve().parent / "floor" / "model.py"
DEFAULT_ITEMS = 100_000
DEFAULT_USERS_IN_MODEL = 10_000
DEFAULT_USER_COUNTS = (1, 8, 32)
DEFAULT_DURATION = "15s"
DEFAULT_RELOAD_EVERY_S = 3.0
FEEDBACK_PER_RELOAD = 20


def random_model(n_items: int, n_users: int, *, dim: int | None = None, seed: int = 0):
    """A TrainedModel with random tables of the exporter's shapes and an untrained pooled tower."""
    from exporter.towers import UserTower
    from exporter.train import DEFAULT_DIM, TrainConfig, TrainedModel

    dim = dim or DEFAULT_DIM
    config = TrainConfig(dim=dim, seed=seed, tower=UserTower.kind)
    rng = np.random.default_rng(seed)
    history = rng.integers(0, n_items, size=(n_users, config.history_len), dtype=np.int64)
    return TrainedModel(
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        item_ids=np.arange(1, n_items + 1, dtype=np.int64),
        user_rows=rng.normal(0, 0.1, size=(n_users, dim)).astype(np.float32),
        item_rows=rng.normal(0, 0.1, size=(n_items, dim)).astype(np.float32),
        user_history=history,
        item_popularity=rng.zipf(1.5, size=n_items).astype(np.float32),
        tower=UserTower(dim).eval(),
        config=config,
    )


def write_bench_repository(model, repository: Path, *, instances: int | None = None,
                           queue_delay_us: int | None = None) -> Path:
    """`exporter.build.write_repository` plus the `floor` model, both python models with the
    same instance count and batching delay (the configs' defaults unless given)."""
    from exporter.build import write_repository
    from model_repository import configs, versions
    from model_repository import contract as c

    write_repository(model, repository, tensorrt=False)
    overrides = {k: v for k, v in (("instances", instances), ("queue_delay_us", queue_delay_us))
                 if v is not None}
    if overrides:
        configs.write_config(repository / c.RETRIEVE, configs.retrieve_config(**overrides))
    floor = configs.retrieve_config(**overrides)
    floor.name = FLOOR
    configs.write_config(repository / FLOOR, floor)
    versions.write_version(repository / FLOOR, 1, {}, files={"model.py": FLOOR_TEMPLATE})
    return repository


@dataclass
class Reloader:
    """Every `every_s`: a batch of feedback to the updater, then Admin Publish (which returns once
    Triton serves the new version). The updater also publishes on its own cadence while events
    arrive, so `published` counts new versions from its Status, not our Publish calls."""

    updater_url: str
    n_users: int
    n_items: int
    every_s: float = DEFAULT_RELOAD_EVERY_S
    published: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from clients import UpdaterClient

        rng = np.random.default_rng(0)
        with UpdaterClient(self.updater_url) as up:
            first = up.status()["published_version"]
            while not self._stop.wait(self.every_s):
                try:
                    events = [dict(user_id=int(u), item_id=int(i), kind="click") for u, i in zip(
                        rng.integers(1, self.n_users + 1, FEEDBACK_PER_RELOAD),
                        rng.integers(1, self.n_items + 1, FEEDBACK_PER_RELOAD))]
                    up.feedback_batch(events)
                    up.publish()
                except Exception as exc:  # noqa: BLE001 - counted and reported in the table
                    self.errors.append(repr(exc))
            self.published = up.status()["published_version"] - first

    def __enter__(self) -> Reloader:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _row(users: int, label: str, result, floor_rps: float, reloads: str = "", *,
         cpu: float = float("nan")) -> list:
    return [users, label, result.rps, result.p50_ms, result.p95_ms, result.p99_ms,
            result.failures, result.rps / floor_rps if floor_rps else float("nan"),
            f"{cpu:.3f}", reloads]


def _impression_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.imp")) if folder.is_dir() else 0


@contextlib.contextmanager
def _impressions_off(folder: Path):
    """Retrieve records impressions while the updater keeps their folder: take it away for a
    row (retrieve looks each CHECK_DIR_S), then give it back."""
    from model_repository.impressions import CHECK_DIR_S

    shutil.rmtree(folder, ignore_errors=True)
    time.sleep(2 * CHECK_DIR_S)
    try:
        yield
    finally:
        folder.mkdir(exist_ok=True)
        time.sleep(2 * CHECK_DIR_S)


def _measure(grpc_url: str, updater_url: str, users: int, *, n_users_model: int, n_items: int,
             duration: str, reload_every_s: float, impressions: Path,
             triton_pid: int) -> tuple[list[list], float, int, int, Cost]:
    """The rows of one user count: (rows, recommend / floor req/s, failures while reloading,
    versions published while reloading, recommend's CPU). ``impressions``: retrieve's
    impressions folder; ``triton_pid``: whose CPU (with its stubs) each row reads."""
    from clients.loadtest import AGGREGATED, LoadMix, LoadResult, LoadTestError, run_locust
    from model_repository import contract as c

    def load(model_name: str, *, pad_inputs: bool = True) -> LoadResult:
        mix = LoadMix(n_users=n_users_model, n_items=n_items, model=model_name, pad_inputs=pad_inputs)
        cpu = tree_cpu_s(triton_pid)
        try:
            result = run_locust(grpc_url, users=users, duration=duration, mix=mix).row(AGGREGATED)
        except LoadTestError as exc:  # one bad run must not lose the others: an n/a row
            log.warning("%s, %d users: %s", model_name, users, exc)
            nan = float("nan")
            return LoadResult("", AGGREGATED, 0, 0, nan, nan, nan, nan)
        costs[id(result)] = Cost(model_name, tree_cpu_s(triton_pid) - cpu, result.requests)
        return result

    costs: dict = {}
    floor = load(FLOOR)
    written = _impression_bytes(impressions)
    ours = load(c.RECOMMEND)
    per_request = (_impression_bytes(impressions) - written) / max(ours.requests, 1)
    with _impressions_off(impressions):
        unrecorded = load(c.RECOMMEND)
    direct = load(c.RETRIEVE)
    unpadded = load(c.RECOMMEND, pad_inputs=False)
    with Reloader(updater_url, n_users_model, n_items, every_s=reload_every_s) as reloader:
        reloading = load(c.RECOMMEND)
    note = f"{reloader.published} published" + (f", {len(reloader.errors)} errors"
                                                if reloader.errors else "")
    def per_1000(result) -> float:
        cost = costs.get(id(result))
        return cost.per_1000_s if cost is not None else float("nan")

    rows = [_row(users, "floor (empty python model)", floor, floor.rps, cpu=per_1000(floor)),
            _row(users, "recommend", ours, floor.rps, f"{per_request:.0f} B impressions/req",
                 cpu=per_1000(ours)),
            _row(users, "recommend, impressions off", unrecorded, floor.rps, cpu=per_1000(unrecorded)),
            _row(users, "retrieve, no ensemble", direct, floor.rps, cpu=per_1000(direct)),
            _row(users, "recommend, unpadded inputs", unpadded, floor.rps, cpu=per_1000(unpadded)),
            _row(users, "recommend + reloads", reloading, floor.rps, note, cpu=per_1000(reloading))]
    ratio = ours.rps / floor.rps if floor.rps else float("nan")
    recommend = costs[id(ours)]
    return (rows, ratio, reloading.failures + len(reloader.errors), reloader.published,
            Cost(f"freshrec recommend, {users} users (Triton + retrieve)", recommend.cpu_s,
                 recommend.count))


def run_bench(*, n_items: int, n_users_model: int, user_counts, duration: str,
              reload_every_s: float, instances: int | None, queue_delay_us: int | None) -> None:
    from freshrec.stack import serving_stack
    from model_repository import configs
    from model_repository import contract as c
    from model_repository.impressions import impressions_dir

    started = time.perf_counter()
    rows, ratios, reload_failures, publishes, costs = [], {}, 0, 0, []
    with tempfile.TemporaryDirectory(prefix="freshrec-e2e-") as scratch:
        repository = Path(scratch) / "repository"
        model = random_model(n_items, n_users_model)
        write_bench_repository(model, repository, instances=instances, queue_delay_us=queue_delay_us)
        retrieve = configs.read_config(repository / c.RETRIEVE)
        built_s = time.perf_counter() - started
        with serving_stack(repository, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND, FLOOR),
                           log_dir=Path(scratch), updater=True) as stack:
            for users in user_counts:
                got, ratios[users], failures, published, cost = _measure(
                    stack.grpc_url, stack.updater.url, users, n_users_model=n_users_model,
                    n_items=n_items, duration=duration, reload_every_s=reload_every_s,
                    impressions=impressions_dir(repository / c.RETRIEVE),
                    triton_pid=stack.triton.process.pid)
                rows += got
                reload_failures += failures
                publishes += published
                costs.append(cost)
            costs.append(feedback_cost(stack.updater.url, [stack.updater.process.pid,
                                                           stack.triton.process.pid],
                                       n_users_model, model.item_ids))
        costs += [faiss_cost(model.item_rows, 10, batch) for batch in (1, 64)]
        costs.append(als_cost(n_users_model, n_items))
    delay_us = retrieve.dynamic_batching.max_queue_delay_microseconds
    print(machine_header([
        f"model: N = {n_items} items x d = {model.item_rows.shape[1]} fp32, {n_users_model} users, "
        "random tables (not trained), K = 10; half the calls send a HISTORY of 1-20 items, ids Zipf(1); "
        "unused HISTORY / EXCLUDE sent empty except in the `unpadded` rows",
        f"retrieve and floor: {retrieve.instance_group[0].count} instance(s), dynamic batching "
        f"max {retrieve.max_batch_size}, queue delay {delay_us} us",
        f"method: locust headless over gRPC (tritonclient.grpc), closed loop, no think time, "
        f"{duration} per row; rows of one user count run back to back; locust shares the host",
        f"reloads: feedback batch of {FEEDBACK_PER_RELOAD} + updater Admin Publish every "
        f"{reload_every_s:g} s (new retrieve version, Triton load_model)",
        f"repository written in {built_s:.1f} s; whole run {time.perf_counter() - started:.0f} s",
    ]))
    print_table(["users", "model", "req/s", "p50 ms", "p95 ms", "p99 ms", "failures",
                 "x floor req/s", "server CPU s / 1k req", "note"], rows)
    print(f"\ncost (bench.cost): CPU of the processes doing the work; $ at "
          f"${PRICE_PER_CORE_HOUR:g} per core-hour")
    print_table(["what", "requests or events", "CPU s per 1,000", "$ per million"],
                [cost.row() for cost in costs])
    worst = min(ratios.values()) if ratios else float("nan")
    print(f"goal: recommend >= 0.70 x floor req/s at every user count: worst {worst:.2f} "
          f"({'met' if worst >= 0.7 else 'NOT met'}); zero failures during reloads: "
          f"{reload_failures} failures over {publishes} publishes "
          f"({'met' if reload_failures == 0 and publishes else 'NOT met'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 users, 5 s per row")
    parser.add_argument("--items", type=int, default=DEFAULT_ITEMS, help="catalogue size N")
    parser.add_argument("--model-users", type=int, default=DEFAULT_USERS_IN_MODEL,
                        help="users with a row in the model")
    parser.add_argument("--users", default=",".join(map(str, DEFAULT_USER_COUNTS)),
                        help="locust user counts, comma separated")
    parser.add_argument("--duration", default=DEFAULT_DURATION, help="locust run time per row")
    parser.add_argument("--reload-every-s", type=float, default=DEFAULT_RELOAD_EVERY_S)
    parser.add_argument("--instances", type=int, help="python model instances (default: configs')")
    parser.add_argument("--queue-delay-us", type=int, help="dynamic batching delay (default: configs')")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    user_counts = [int(u) for u in args.users.split(",") if u.strip()]
    duration = args.duration
    if args.quick:
        user_counts, duration = [8], "5s"
    run_bench(n_items=args.items, n_users_model=args.model_users, user_counts=user_counts,
              duration=duration, reload_every_s=args.reload_every_s, instances=args.instances,
              queue_delay_us=args.queue_delay_us)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
