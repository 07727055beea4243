"""Locust load against freshrec over gRPC: `recommend` through tritonclient.grpc, feedback
through the updater's gRPC API (UpdaterClient), each call reported to locust's request events,
so its stats, CSV and web UI show them.

    locust -f clients/locustfile.py --host 127.0.0.1:8001 --updater 127.0.0.1:50051 \
        --feedback-weight 1            # web UI on :8089
    freshrec loadtest --users 32 --duration 60s   # the same, headless

Each locust user is a closed loop with no think time, so N users keep N requests in flight.
Who asks, and which items fill HISTORY and feedback, follow Zipf skew over the id ranges
(`--id-users`, `--id-items`); `--history-fraction` of recommend calls carry a HISTORY of 1 to
`--max-history` items; unused HISTORY / EXCLUDE go as empty tensors unless `--unpadded`
(see `LoadMix.pad_inputs`). Flags: `clients.loadtest.add_locust_arguments`.
"""

import csv
import itertools
import os
import sys
import time

# locust has monkey-patched the standard library by now (its import does); grpc needs its own
# switch to yield to gevent instead of blocking the one OS thread every locust user shares
import grpc.experimental.gevent as grpc_gevent  # isort: skip
from locust import User, constant, events, stats, task  # isort: skip

grpc_gevent.init_gevent()

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from clients.client import recommend_inputs  # noqa: E402
from clients.loadtest import (  # noqa: E402
    REQUEST_TYPE_FEEDBACK,
    REQUEST_TYPE_RECOMMEND,
    SkewedIds,
    add_locust_arguments,
    mix_from_options,
)
from clients.updater_client import UpdaterClient  # noqa: E402
from model_repository import contract as c  # noqa: E402

TIMEOUT_S = 30.0
_seeds = itertools.count(1)


_environment = None


@events.init_command_line_parser.add_listener
def _flags(parser):
    add_locust_arguments(parser)


@events.init.add_listener
def _keep_environment(environment, **_):
    global _environment
    _environment = environment


@events.quit.add_listener
def _exit_now(exit_code, **_):
    """Leave as soon as locust is done, skipping interpreter finalization: there grpc's gevent
    integration hangs the process on a busy host (measured: 7 of 12 two-second headless runs,
    32 users, 2 busy cores, printed their summary and never exited). Locust writes its CSV
    files only every second and closes them after this event, so write the final tables here
    first, from the same stats and with locust's own writer."""
    prefix = getattr(_environment.parsed_options, "csv_prefix", None) if _environment else None
    if prefix:
        writer = stats.StatsCSV(_environment, stats.PERCENTILES_TO_REPORT)
        for suffix, write in (("stats", writer.requests_csv), ("failures", writer.failures_csv),
                              ("exceptions", writer.exceptions_csv)):
            with open(f"{prefix}_{suffix}.csv", "w", newline="") as handle:
                write(csv.writer(handle))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def _strip_scheme(host: str) -> str:
    return host.split("://", 1)[-1].rstrip("/")


class FreshrecUser(User):
    """One client: recommend (and, with a feedback weight, feedback) in a closed loop."""

    wait_time = constant(0)
    host = c.DEFAULT_TRITON_URL

    def on_start(self):
        options = self.environment.parsed_options
        self.mix = mix_from_options(options)
        seed = next(_seeds)
        self.rng = np.random.default_rng(seed)
        # same seed for every user: they share one "who is heavy" ranking of ids
        self.users = SkewedIds(self.mix.n_users, exponent=self.mix.zipf, seed=0)
        self.items = SkewedIds(self.mix.n_items, exponent=self.mix.zipf, seed=1)
        total = self.mix.recommend_weight + self.mix.feedback_weight
        self.p_feedback = self.mix.feedback_weight / total
        self.triton = grpcclient.InferenceServerClient(_strip_scheme(self.host))
        self.outputs = [grpcclient.InferRequestedOutput(n) for n in (c.ITEM_IDS, c.SCORES, c.VERSION)]
        self.updater = UpdaterClient(options.updater, timeout_s=TIMEOUT_S) if self.p_feedback else None

    def on_stop(self):
        self.triton.close()
        if self.updater is not None:
            self.updater.close()

    @task
    def act(self):
        if self.p_feedback and self.rng.random() < self.p_feedback:
            self.feedback()
        else:
            self.recommend()

    def _report(self, request_type, name, started, length, exc):
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=(time.perf_counter() - started) * 1e3,
            response_length=length, exception=exc, context={})

    def recommend(self):
        user = int(self.users.draw(self.rng))
        history = None
        if self.rng.random() < self.mix.history_fraction:
            history = self.items.draw(self.rng, int(self.rng.integers(1, self.mix.max_history + 1)))
        name = self.mix.model if history is None else f"{self.mix.model} +history"
        if self.mix.pad_inputs:  # same inputs on every call, so Triton can batch them together
            inputs = recommend_inputs(user, k=self.mix.k, history=[] if history is None else history,
                                      exclude=[])
        else:
            inputs = recommend_inputs(user, k=self.mix.k, history=history)
        started, length, error = time.perf_counter(), 0, None
        try:
            result = self.triton.infer(self.mix.model, inputs, outputs=self.outputs,
                                       client_timeout=TIMEOUT_S)
            length = int(result.as_numpy(c.ITEM_IDS).size)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to locust
            error = exc
        self._report(REQUEST_TYPE_RECOMMEND, name, started, length, error)

    def feedback(self):
        user, item = int(self.users.draw(self.rng)), int(self.items.draw(self.rng))
        started, length, error = time.perf_counter(), 0, None
        try:
            reply = self.updater.feedback(user, item, "click")
            length = reply.accepted
            if reply.rejected:
                raise RuntimeError(f"rejected: {reply.rejected[0]}")
        except Exception as exc:  # noqa: BLE001 - every failure is reported to locust
            error = exc
        self._report(REQUEST_TYPE_FEEDBACK, "feedback", started, length, error)
