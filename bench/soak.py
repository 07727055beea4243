"""Soak: thousands of publishes under load, as `freshrec serve` runs them (not in CI).

    python -m bench.soak                    # 10,000 publishes (~10-15 min on 2 cores)
    python -m bench.soak --publishes 500    # a short run

A small model is built; tritonserver and the updater run under the supervisor `freshrec serve`
uses (freshrec.supervisor: a crashed server is restarted and counted). CLIENTS threads call
`recommend` in a closed loop the whole time. The peer in the same run is that load with nothing
published (BASELINE_S seconds first). Then a feedback thread sends clicks continuously and the
updater publishes back to back (`--publish-every-s 0`: every publish is a new version, switched
to inside the running retrieve) until PUBLISHES versions have been published. Reported: failed
requests, p50/p99 latency of the baseline and of the first and last tenth of the soak (by
time), publishes and their median switch time, tritonserver restarts, and the resident memory of
tritonserver and of the retrieve stub at the start and end of the soak.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.report import machine_header, print_table

CLIENTS = 4
PUBLISHES = 10_000
BASELINE_S = 20.0
FEEDBACK_EVERY_S = 0.005
BENCH_DATA = dict(n_users=2000, n_items=1500, n_events=60_000, n_categories=12, seed=5)


def rss_mib(pid: int | None) -> float:
    """Resident memory of a process (VmRSS), MiB; NaN when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return float("nan")


def stub_pid(triton_pid: int, model: str) -> int | None:
    """The python backend stub of `model`: a child of tritonserver whose argv names its folder."""
    try:
        children = Path(f"/proc/{triton_pid}/task/{triton_pid}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "triton_python_backend_stub" in argv and f"/{model}/" in argv:
            return int(pid)
    return None


class Load:
    """``clients`` threads asking recommend; each sample is (monotonic end time, seconds, ok,
    the VERSION that answered or -1)."""

    def __init__(self, url: str, users: np.ndarray, *, clients: int = CLIENTS):
        self.url, self.users = url, users
        self.samples: list[tuple[float, float, bool, int]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._ask, args=(n,), daemon=True)
                        for n in range(clients)]

    def _ask(self, seed: int) -> None:
        from clients import Client

        rng = np.random.default_rng(seed)
        with Client(self.url, timeout_s=10.0) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    version = client.recommend(int(rng.choice(self.users)), k=10).version
                    ok = True
                except Exception:  # noqa: BLE001 - counted and reported
                    version, ok = -1, False
                self.samples.append((time.monotonic(), time.perf_counter() - started, ok,
                                     version))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def between(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        return [s for s in self.samples if start <= s[0] < end]


def latency_row(label: str, samples, **extra) -> list:
    ok = [s[1] for s in samples if s[2]]
    p50, p99 = (np.quantile(ok, [0.5, 0.99]) * 1e3) if ok else (float("nan"), float("nan"))
    return [label, len(samples), sum(1 for s in samples if not s[2]), p50, p99,
            extra.get("publishes", ""), extra.get("restarts", ""), extra.get("triton", ""),
            extra.get("stub", "")]


def soak(publishes: int) -> None:
    from clients import UpdaterClient
    from exporter.build import build
    from exporter.train import TrainConfig
    from freshrec.processes import TritonServer, UpdaterProcess
    from freshrec.supervisor import CHECK_EVERY_S, Supervisor
    from model_repository import contract as c
    from model_repository import retrieve_schema as schema
    from model_repository import versions
    from updater.main import UpdaterConfig

    with tempfile.TemporaryDirectory(prefix="freshrec-soak-") as scratch:
        scratch = Path(scratch)
        repository = build(scratch, synthetic=True, synthetic_kwargs=BENCH_DATA,
                           config=TrainConfig(epochs=2), progress=False, tensorrt=False,
                           text_encoder=False).repository
        _, tables = versions.load_tables(repository / c.RETRIEVE / "1")
        users, items = np.array(tables[schema.USER_IDS]), np.array(tables[schema.ITEM_IDS])
        server = TritonServer(repository, models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
                              grpc_port=0, http_port=0, metrics_port=0,
                              log_path=scratch / "tritonserver.log")
        supervisor = Supervisor(
            server, state_dir=UpdaterConfig(repository).state_path,
            make_updater=lambda: UpdaterProcess(repository, server.grpc_url,
                                                log_path=scratch / "updater.log",
                                                args=("--publish-every-s", "0")),
            say=lambda message: print(f"supervisor: {message}", flush=True)).start()
        watching = threading.Event()

        def watch():
            while not watching.wait(CHECK_EVERY_S):
                supervisor.check()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            rows, swaps = _run(supervisor, server, users, items, publishes, UpdaterClient)
        finally:
            watching.set()
            watcher.join()
            supervisor.stop()
    print(f"\n{publishes} publishes under {CLIENTS} recommend threads, feedback flowing "
          f"({BENCH_DATA['n_users']} users x {BENCH_DATA['n_items']} items, d=32); latency ms; "
          f"RSS MiB at the start and end of the soak")
    print_table(["phase", "requests", "failed", "p50", "p99", "publishes", "Triton restarts",
                 "tritonserver RSS", "retrieve stub RSS"], rows)
    if swaps:
        print(f"switch inside retrieve, last {len(swaps)} publishes: median "
              f"{statistics.median(swaps) * 1e3:.1f} ms, max {max(swaps) * 1e3:.1f} ms")


def _run(supervisor, server, users, items, publishes, UpdaterClient):  # noqa: N803 - a class
    with Load(server.grpc_url, users) as load, UpdaterClient(supervisor.updater.url) as up:
        base_start = time.monotonic()
        time.sleep(BASELINE_S)
        base_end = time.monotonic()
        first_version = up.status()["published_version"]
        memory_start = (rss_mib(server.process.pid), rss_mib(stub_pid(server.process.pid, "retrieve")))
        sending = threading.Event()

        def feed():
            rng = np.random.default_rng(11)
            n = 0
            with UpdaterClient(supervisor.updater.url) as feeder:
                while not sending.is_set():
                    n += 1
                    try:
                        feeder.feedback(int(rng.choice(users)), int(rng.choice(items)), "click",
                                        event_id=f"soak-{n}")
                    except Exception:  # noqa: BLE001 - the updater restarting: send it again
                        time.sleep(0.1)
                    time.sleep(FEEDBACK_EVERY_S)

        feeder = threading.Thread(target=feed, daemon=True)
        soak_start = time.monotonic()
        feeder.start()
        last_report, done = soak_start, 0
        try:
            while done < publishes:
                time.sleep(1.0)
                status = up.status()
                done = status["published_version"] - first_version
                if time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    print(f"soak: {done} of {publishes} publishes, "
                          f"{sum(1 for s in load.samples if not s[2])} failed requests", flush=True)
        finally:
            sending.set()
            feeder.join()
        soak_end = time.monotonic()
        memory_end = (rss_mib(server.process.pid), rss_mib(stub_pid(server.process.pid, "retrieve")))
        swaps = [r["swap_s"] for r in up.status()["recent_publishes"] if r["swap_s"] > 0]
    tenth = (soak_end - soak_start) / 10
    restarts = supervisor.triton_restarts
    rows = [
        latency_row("baseline: no publishes", load.between(base_start, base_end)),
        latency_row("soak: first tenth", load.between(soak_start, soak_start + tenth),
                    triton=memory_start[0], stub=memory_start[1]),
        latency_row("soak: last tenth", load.between(soak_end - tenth, soak_end),
                    triton=memory_end[0], stub=memory_end[1]),
        latency_row("soak: all", load.between(soak_start, soak_end), publishes=done,
                    restarts=restarts),
    ]
    return rows, swaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=PUBLISHES,
                        help=f"how many versions to publish (default {PUBLISHES})")
    args = parser.parse_args(argv)
    print(machine_header([f"method: {CLIENTS} closed-loop recommend threads over gRPC the whole "
                          f"time; {BASELINE_S:.0f} s with no publishes first (the peer), then "
                          "feedback + back-to-back publishes"]))
    soak(args.publishes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
