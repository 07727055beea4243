"""The updater's Prometheus metrics (issue 29), served on --metrics-port at /metrics.

Events are counted as the intake takes them and admin calls as they end; every other value is
read from the engine when Prometheus scrapes (`EngineCollector`), so nothing is kept twice.
No label holds a user or item id: labels are event kinds, outcomes, refused fields, call names,
publish phases, model names and arms, each from a fixed set.

    freshrec_feedback_events_total{kind, outcome, field}   outcome: accepted | duplicate |
                                                            rejected (field: the refused one)
    freshrec_admin_calls_total{call, outcome}               forget_user, push, add_items, ...
    freshrec_publish_phase_seconds{phase}                   histogram: write, rename, verify,
                                                            load, probe, swap (Status's timings)
    freshrec_train_batch_seconds                            histogram: one batch trained
    freshrec_publishes_total{kind}, freshrec_publish_failures_total
    freshrec_log_offset, freshrec_applied_offset, freshrec_published_offset
    freshrec_log_lag_events                                 logged minus applied
    freshrec_queue_depth                                    logged events not published yet
    freshrec_serving_version{model}
    freshrec_served_newest_event_age_seconds                now minus the newest event the
                                                            serving version holds (its time)
    freshrec_unserved_oldest_event_age_seconds              how long the oldest logged event no
                                                            version serves yet has waited (0:
                                                            none waits): staleness
    freshrec_quarantined_versions
    freshrec_triton_restarts_total
    freshrec_impressions_total, freshrec_exposed_events_total{arm},
    freshrec_exposed_hits_total{arm}                        hit rate of served answers
                                                            (updater.exposure)
    freshrec_cpu_seconds_total{part}                        training, publishing, quality
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from model_repository.canary import ARM_CODES
from updater.events import KINDS

log = logging.getLogger(__name__)

OTHER = "other"  # a kind outside KINDS (a rejected event's)
PHASES = ("write", "rename", "verify", "load", "probe", "swap")
_ARMS = {code: arm for arm, code in ARM_CODES.items()}
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class UpdaterMetrics:
    """The counters and histograms the updater moves as it works, in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.events = Counter("freshrec_feedback_events", "feedback events by kind and outcome",
                              ("kind", "outcome", "field"), registry=self.registry)
        self.admin = Counter("freshrec_admin_calls", "Admin calls by call and outcome",
                             ("call", "outcome"), registry=self.registry)
        self.phases = Histogram("freshrec_publish_phase_seconds", "a publish's phases",
                                ("phase",), buckets=_BUCKETS, registry=self.registry)
        self.train_batch = Histogram("freshrec_train_batch_seconds", "one batch of events trained",
                                     buckets=_BUCKETS, registry=self.registry)
        self.publishes = Counter("freshrec_publishes", "versions published, by kind", ("kind",),
                                 registry=self.registry)
        self.publish_failures = Counter("freshrec_publish_failures",
                                        "publishes that failed (retried after a back-off)",
                                        registry=self.registry)
        for kind in (*KINDS, OTHER):  # every series exists from the start: rate() sees the first
            self.events.labels(kind, "accepted", "")

    def event(self, kind: str, outcome: str, field: str = "", *, n: int = 1) -> None:
        self.events.labels(kind if kind in KINDS else OTHER, outcome, field).inc(n)

    def admin_call(self, call: str, outcome: str) -> None:
        self.admin.labels(call, outcome).inc()

    def published(self, record) -> None:
        """A publisher.PublishRecord: its kind and each phase it timed."""
        self.publishes.labels(record.kind.replace(" ", "_")).inc()
        for name, seconds in record.timings.items():
            phase = name.removesuffix("_s")
            if phase in PHASES:
                self.phases.labels(phase).observe(seconds)

    def serve(self, host: str, port: int):
        """Start /metrics on host:port (0: any free port); returns (server, bound port)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_port


class EngineCollector:
    """Gauges and counters read off the engine (and the supervisor's state) at each scrape."""

    def __init__(self, engine, *, restarts=lambda: 0, serving_versions=lambda: {}):
        self.engine = engine
        self.restarts = restarts
        self.serving_versions = serving_versions

    def collect(self):
        engine = self.engine
        now = time.time()
        log_offset = engine.log.last_offset()
        gauges = {
            "freshrec_log_offset": ("the feedback log's newest offset", log_offset),
            "freshrec_applied_offset": ("trained up to this offset", engine.applied_offset),
            "freshrec_published_offset": ("the serving version holds events up to this offset",
                                          engine.published_offset),
            "freshrec_log_lag_events": ("logged events not trained yet",
                                        max(log_offset - engine.applied_offset, 0)),
            "freshrec_queue_depth": ("logged events no version serves yet",
                                     max(log_offset - engine.published_offset, 0)),
            "freshrec_served_newest_event_age_seconds": (
                "now minus when the newest event the serving version holds arrived",
                now - newest if (newest := engine.served_newest_time()) is not None else 0.0),
            "freshrec_unserved_oldest_event_age_seconds": (
                "how long the oldest logged event no version serves yet has waited",
                engine.unserved_age(now)),
            "freshrec_quarantined_versions": ("versions that failed verification, moved aside",
                                              len(engine.publisher.failed)),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=float(value))
        versions = GaugeMetricFamily("freshrec_serving_version", "the version each model serves",
                                     labels=("model",))
        for model, version in self.serving_versions().items():
            versions.add_metric((model,), float(version))
        yield versions
        yield CounterMetricFamily("freshrec_triton_restarts", "tritonserver restarts by the "
                                  "supervisor", value=float(self.restarts()))
        exposure = engine.exposure
        yield CounterMetricFamily("freshrec_impressions", "answers recorded and read",
                                  value=float(exposure.impressions))
        events = CounterMetricFamily("freshrec_exposed_events", "positive events whose user was "
                                     "shown an answer in the window", labels=("arm",))
        hits = CounterMetricFamily("freshrec_exposed_hits", "of them, the item in such an answer",
                                   labels=("arm",))
        for code, arm in _ARMS.items():
            count = exposure.count(code)
            events.add_metric((arm,), float(count.events))
            hits.add_metric((arm,), float(count.hits))
        yield events
        yield hits
        yield CounterMetricFamily("freshrec_unexposed_events", "positive events whose user was "
                                  "shown nothing in the window", value=float(exposure.unexposed))
        cpu = CounterMetricFamily("freshrec_cpu_seconds", "the engine thread's CPU by part",
                                  labels=("part",))
        for part, seconds in (*engine.cpu_s.items(), ("quality", engine.quality.cpu_s)):
            cpu.add_metric((part,), float(seconds))
        yield cpu
