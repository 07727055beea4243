"""`freshrec loadtest`: locust, headless, against the gRPC endpoint; and the pieces it shares.

    freshrec loadtest --users 32 --duration 60s                     # recommend only
    freshrec loadtest --users 32 --duration 60s --feedback-weight 1 # + feedback to the updater

Locust runs as a subprocess (`python -m locust -f clients/locustfile.py --headless ...`): its
gevent monkey-patching must not leak into the caller (pytest, bench.e2e), and a subprocess is
bounded by a timeout. Results come back through locust's CSV stats, parsed into `LoadResult`
rows. This module imports neither locust nor gevent; `clients/locustfile.py` imports the
request mix (`SkewedIds`, `LoadMix`) from here, so the mix is testable without locust.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from model_repository import contract as c

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PROJECT_ROOT = LOCUSTFILE.parent.parent
DEFAULT_DURATION = "60s"
# ids 1..N as the synthetic generator writes them (exporter.synthetic defaults); MovieLens ids are
# also dense from 1. Ids the model does not know are served too (history or popularity).
DEFAULT_ID_USERS = 2000
DEFAULT_ID_ITEMS = 1000
# Zipf exponent of who asks and what they touched: a few heavy users, a long tail (close to
# the synthetic generator's item popularity exponent, ITEM_ZIPF_EXPONENT = 1.1)
DEFAULT_ZIPF = 1.0
DEFAULT_HISTORY_FRACTION = 0.5
DEFAULT_MAX_HISTORY = 20
DEFAULT_K = 10
DEFAULT_RECOMMEND_WEIGHT = 10
DEFAULT_FEEDBACK_WEIGHT = 0
# locust needs a moment after -t to stop users and write the CSV
RUN_GRACE_S = 60.0
STOP_GRACE_S = 15.0
REQUEST_TYPE_RECOMMEND = "grpc"
REQUEST_TYPE_FEEDBACK = "grpc-feedback"
AGGREGATED = "Aggregated"


class LoadTestError(RuntimeError):
    """Locust did not run or did not write its statistics; the message holds its output tail."""


class SkewedIds:
    """Draws ids 1..n with Zipf(exponent) skew over a seeded random ranking of the ids, so the
    heavy ids are not simply the small ones. Costs one binary search per draw."""

    def __init__(self, n: int, *, exponent: float = DEFAULT_ZIPF, seed: int = 0):
        if n < 1:
            raise ValueError(f"SkewedIds: n must be >= 1, got {n}")
        rng = np.random.default_rng(seed)
        weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
        self._cdf = np.cumsum(weights / weights.sum())
        self._ids = rng.permutation(n).astype(np.int64) + 1  # rank r -> id

    def draw(self, rng: np.random.Generator, size: int | None = None):
        rank = np.searchsorted(self._cdf, rng.random(size), side="right").clip(max=len(self._ids) - 1)
        return self._ids[rank]


def _flag(flag: str, help_text: str) -> dict[str, str]:
    """A LoadMix field's command-line flag and help, the one place the flag is named."""
    return {"flag": flag, "help": help_text}


@dataclass(frozen=True)
class LoadMix:
    """What the locust users send. Weights are locust task weights (0 turns a task off). Each
    field but pad_inputs is a flag of `freshrec loadtest` and of the locustfile (`_flag`)."""

    n_users: int = field(default=DEFAULT_ID_USERS,
                         metadata=_flag("--id-users", "user ids drawn from 1..N"))
    n_items: int = field(default=DEFAULT_ID_ITEMS,
                         metadata=_flag("--id-items", "item ids drawn from 1..N"))
    zipf: float = field(default=DEFAULT_ZIPF,
                        metadata=_flag("--zipf", "Zipf exponent of user and item draws"))
    history_fraction: float = field(
        default=DEFAULT_HISTORY_FRACTION,
        metadata=_flag("--history-fraction", "share of recommend calls with a HISTORY"))
    max_history: int = field(default=DEFAULT_MAX_HISTORY,
                             metadata=_flag("--max-history", "HISTORY length is 1..this"))
    k: int = field(default=DEFAULT_K, metadata=_flag("--k", "K"))
    recommend_weight: int = field(default=DEFAULT_RECOMMEND_WEIGHT,
                                  metadata=_flag("--recommend-weight", "task weight of recommend"))
    feedback_weight: int = field(
        default=DEFAULT_FEEDBACK_WEIGHT,
        metadata=_flag("--feedback-weight", "task weight of feedback; 0 turns it off"))
    model: str = field(default=c.RECOMMEND, metadata=_flag("--model", "the model to ask"))
    # send HISTORY and EXCLUDE on every call, empty when unused: Triton's dynamic batcher only
    # batches requests carrying the same set of inputs, and a 50/50 mix of calls with and without
    # HISTORY halved recommend's throughput at N = 1e5 (8 users: 309 vs 622-695 req/s). An empty
    # HISTORY or EXCLUDE is the same as none (model_repository.serving), answers are identical.
    # Its flag is --unpadded, which turns it off.
    pad_inputs: bool = True

    def __post_init__(self):
        for name in ("n_users", "n_items", "max_history", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoadMix.{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.history_fraction <= 1.0:
            raise ValueError(f"LoadMix.history_fraction must be in [0, 1], got {self.history_fraction!r}")
        if self.recommend_weight < 0 or self.feedback_weight < 0:
            raise ValueError("LoadMix: task weights must be >= 0")
        if self.recommend_weight + self.feedback_weight == 0:
            raise ValueError("LoadMix: at least one of recommend_weight, feedback_weight must be > 0")

    def locust_args(self) -> list[str]:
        """The locustfile's own flags for this mix (see `add_locust_arguments`)."""
        args = []
        for f in _flagged_fields():
            args += [f.metadata["flag"], str(getattr(self, f.name))]
        return args + ([] if self.pad_inputs else ["--unpadded"])


def _flagged_fields():
    return [f for f in fields(LoadMix) if "flag" in f.metadata]


def _dest(f) -> str:
    """Where argparse puts a field's flag: --id-users -> id_users."""
    return f.metadata["flag"].removeprefix("--").replace("-", "_")


def add_mix_arguments(parser) -> None:
    """The flags of a `LoadMix`, shared by `freshrec loadtest` and the locustfile."""
    for f in _flagged_fields():
        parser.add_argument(f.metadata["flag"], type=type(f.default), default=f.default,
                            help=f"{f.metadata['help']} (default {f.default})")
    parser.add_argument("--unpadded", action="store_true",
                        help="omit unused HISTORY / EXCLUDE instead of sending them empty (batches worse)")


def add_locust_arguments(parser) -> None:
    """The locustfile's custom flags (locust's init_command_line_parser hook calls this)."""
    parser.add_argument("--updater", default=c.DEFAULT_UPDATER_URL,
                        help="updater gRPC address, for the feedback task")
    add_mix_arguments(parser)


def mix_from_options(options) -> LoadMix:
    return LoadMix(**{f.name: getattr(options, _dest(f)) for f in _flagged_fields()},
                   pad_inputs=not options.unpadded)


# ---------------------------------------------------------------------------------------------
# running locust


@dataclass(frozen=True)
class LoadResult:
    """One row of locust's stats: latencies in ms (locust rounds them: whole ms below 100 ms)."""

    request_type: str
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class LoadRun:
    exit_code: int
    results: list[LoadResult]
    output: str

    def row(self, name: str) -> LoadResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no locust stats row {name!r}; rows: {[r.name for r in self.results]}")


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def duration_s(text: str) -> int:
    """'60s', '2m', '1h30m', '90' -> seconds (locust's --run-time syntax)."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"duration {text!r}: expected e.g. 60s, 2m, 1h30m")
    h, m, s = (int(g) if g else 0 for g in match.groups())
    total = 3600 * h + 60 * m + s
    if total < 1:
        raise ValueError(f"duration {text!r} must be at least 1 s")
    return total


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "N/A" when a row has no requests
        return float("nan")


def read_stats(path: Path) -> list[LoadResult]:
    """Locust's `<prefix>_stats.csv` -> rows (the Aggregated row included)."""
    with open(path, newline="") as handle:
        return [LoadResult(request_type=row["Type"], name=row["Name"],
                           requests=int(row["Request Count"]), failures=int(row["Failure Count"]),
                           rps=_number(row["Requests/s"]), p50_ms=_number(row["50%"]),
                           p95_ms=_number(row["95%"]), p99_ms=_number(row["99%"]))
                for row in csv.DictReader(handle)]


def run_locust(url: str, *, users: int, duration: str, mix: LoadMix,
               updater_url: str = c.DEFAULT_UPDATER_URL, spawn_rate: float | None = None,
               csv_prefix: Path | None = None) -> LoadRun:
    """Run clients/locustfile.py headless for `duration` with `users` concurrent users against
    Triton's gRPC `url`, and return locust's stats. Loopback or wherever `url` points; bounded
    by `duration` plus a grace period."""
    seconds = duration_s(duration)
    with tempfile.TemporaryDirectory(prefix="freshrec-locust-") as scratch:
        prefix = Path(csv_prefix) if csv_prefix is not None else Path(scratch) / "locust"
        prefix.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
               "-u", str(users), "-r", str(spawn_rate or users), "-t", f"{seconds}s",
               "--host", url, "--updater", updater_url, "--csv", str(prefix),
               "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5",
               *mix.locust_args()]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        log.info("running %s", " ".join(cmd))
        process = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            stdout, _ = process.communicate(timeout=seconds + RUN_GRACE_S)
        except subprocess.TimeoutExpired:
            # SIGINT first: locust then stops its users and writes what it has
            process.send_signal(signal.SIGINT)
            try:
                stdout, _ = process.communicate(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, _ = process.communicate()
            raise LoadTestError(f"locust did not finish within {seconds + RUN_GRACE_S:.0f} s:\n"
                                + "\n".join((stdout or "").splitlines()[-30:])) from None
        done = subprocess.CompletedProcess(cmd, process.returncode, stdout, "")
        output = (done.stdout or "") + (done.stderr or "")
        stats = prefix.with_name(prefix.name + "_stats.csv")
        if not stats.exists():
            raise LoadTestError(f"locust exited with code {done.returncode} and wrote no stats:\n"
                                + "\n".join(output.splitlines()[-30:]))
        return LoadRun(done.returncode, read_stats(stats), output)


def format_results(results: list[LoadResult]) -> str:
    header = ["type", "name", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms"]
    body = [[r.request_type, r.name, str(r.requests), str(r.failures), f"{r.rps:.1f}",
             f"{r.p50_ms:g}", f"{r.p95_ms:g}", f"{r.p99_ms:g}"] for r in results]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in [header, *body])


# ---------------------------------------------------------------------------------------------
# the `freshrec loadtest` subcommand


def add_loadtest_parser(subparsers) -> argparse.ArgumentParser:
    """Register `freshrec loadtest` on an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("loadtest", help="run locust headless against the gRPC endpoint",
                              description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=10, help="concurrent locust users (default 10)")
    p.add_argument("--duration", default=DEFAULT_DURATION,
                   help=f"how long: 60s, 2m, 1h30m (default {DEFAULT_DURATION})")
    p.add_argument("--spawn-rate", type=float, help="users started per second (default: all at once)")
    p.add_argument("--url", default=c.DEFAULT_TRITON_URL,
                   help=f"Triton gRPC address (default {c.DEFAULT_TRITON_URL})")
    p.add_argument("--updater", default=c.DEFAULT_UPDATER_URL,
                   help=f"updater gRPC address, for feedback (default {c.DEFAULT_UPDATER_URL})")
    add_mix_arguments(p)
    p.add_argument("--csv", type=Path, help="keep locust's CSV files under this prefix")
    p.set_defaults(func=cmd_loadtest)
    return p


def cmd_loadtest(args: argparse.Namespace) -> int:
    """Run the load test, print the stats table; exit 1 when a request failed."""
    if args.users < 1:
        print("freshrec: --users must be >= 1", file=sys.stderr)
        return 1
    try:
        duration_s(args.duration)
        mix = mix_from_options(args)
    except ValueError as exc:
        print(f"freshrec: {exc}", file=sys.stderr)
        return 1
    print(f"locust: {args.users} users for {args.duration} against {args.url}"
          + (f", feedback to {args.updater}" if mix.feedback_weight else ""), flush=True)
    try:
        run = run_locust(args.url, users=args.users, duration=args.duration, mix=mix,
                         updater_url=args.updater, spawn_rate=args.spawn_rate, csv_prefix=args.csv)
    except LoadTestError as exc:
        print(f"freshrec: {exc}", file=sys.stderr)
        return 1
    print(format_results(run.results))
    failures = sum(r.failures for r in run.results if r.name != AGGREGATED)
    if failures:
        print(f"freshrec: {failures} requests failed; see locust's output:\n"
              + "\n".join(run.output.splitlines()[-15:]), file=sys.stderr)
        return 1
    return 0
