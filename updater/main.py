"""`freshrec updater` / `python -m updater`: recover, then serve feedback and admin on gRPC.

Start-up order: open the durable log, recover the newest good version (Triton made to serve it),
start the engine (which replays the log after that version), and only then listen, so the first
answered Status already describes a recovered updater.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from model_repository import contract as c
from model_repository.live_history import history_path, write_store_choice
from model_repository.redis_layout import RedisKeys
from updater.access import (
    TOKEN_ENV,
    AccessError,
    read_token,
    require_token_off_loopback,
    server_credentials,
    triton_control_headers,
)
from updater.settings import (
    DEFAULT_ATTRIBUTION_WINDOW_S,
    DEFAULT_COOCCURRENCE_FITTED,
    DEFAULT_FOLD_IN_EVENTS,
    DEFAULT_FOLD_IN_USERS,
    DEFAULT_IMPRESSION_SKIPS,
    DEFAULT_KEEP_VERSIONS,
    DEFAULT_LR,
    DEFAULT_MAX_NEW_USERS_PER_MIN,
    DEFAULT_MAX_STEP,
    DEFAULT_NEGATIVES,
    DEFAULT_NEW_USER_ROWS,
    DEFAULT_PUBLISH_EVERY_EVENTS,
    DEFAULT_PUBLISH_EVERY_S,
    DEFAULT_QUALITY_EVENTS_PER_BATCH,
    DEFAULT_SHARD_KIB,
    DEFAULT_SKIP_WEIGHT,
    DEFAULT_USER_STEPS,
    NEW_USER_ROWS,
    USER_STEPS,
    IntakePolicy,
    PublishPolicy,
    QualityPolicy,
    TrainerConfig,
)

log = logging.getLogger(__name__)

LOG_FILE = "feedback.sqlite"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
STATE_DIR = "updater"  # beside the repository, never inside it (Triton scans that folder)


@dataclass(frozen=True)
class UpdaterConfig:
    repository: Path
    triton_url: str = c.DEFAULT_TRITON_URL
    host: str = c.DEFAULT_HOST
    port: int = c.DEFAULT_UPDATER_PORT
    state_dir: Path | None = None
    port_file: Path | None = None  # where to write the port listened on, once ready
    policy: PublishPolicy = field(default_factory=PublishPolicy)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    intake: IntakePolicy = field(default_factory=IntakePolicy)
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    redis_url: str | None = None  # the event log and live history in Redis (updater.redis_log)
    redis_prefix: str = c.DEFAULT_REDIS_PREFIX
    metrics_port: int = c.DEFAULT_UPDATER_METRICS_PORT  # Prometheus /metrics (updater.metrics)
    triton_metrics_url: str = ""  # Triton's, for Status to name beside the updater's
    # access (updater.access): the bearer token Admin (and Feedback, if asked) requires, and TLS
    token: str | None = field(default=None, repr=False)
    feedback_needs_token: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    triton_tls_ca: Path | None = None  # Triton's gRPC port serves TLS signed by this CA

    def __post_init__(self):
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise ValueError(f"UpdaterConfig.{name} must be in [0, 65535], got "
                                 f"{getattr(self, name)!r}")
        if self.redis_url is not None and not self.redis_url.startswith(REDIS_SCHEMES):
            raise ValueError(f"UpdaterConfig.redis_url must start with one of {', '.join(REDIS_SCHEMES)}, "
                             f"got {self.redis_url!r}")
        RedisKeys(self.redis_prefix)  # ValueError naming it
        require_token_off_loopback(self.host, self.token)
        if self.feedback_needs_token and self.token is None:
            raise AccessError("--feedback-needs-token: give the token (--token-file PATH or "
                              f"{TOKEN_ENV})")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir if self.state_dir is not None
                    else Path(self.repository).parent / STATE_DIR)

    @property
    def log_path(self) -> Path:
        return self.state_path / LOG_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The updater's flags, shared by `freshrec updater` and `python -m updater`."""
    parser.add_argument("--repository", type=Path, default=Path("var/demo/repository"),
                        help="the Triton model repository Triton serves")
    parser.add_argument("--triton", default=c.DEFAULT_TRITON_URL,
                        help=f"Triton gRPC address (default {c.DEFAULT_TRITON_URL})")
    parser.add_argument("--host", default=c.DEFAULT_HOST, help=f"address to bind (default {c.DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=c.DEFAULT_UPDATER_PORT,
                        help=f"updater gRPC port (default {c.DEFAULT_UPDATER_PORT}; 0: any free one)")
    parser.add_argument("--metrics-port", type=int, default=c.DEFAULT_UPDATER_METRICS_PORT,
                        help="Prometheus metrics at /metrics on this port (default "
                             f"{c.DEFAULT_UPDATER_METRICS_PORT}; 0: any free one; `freshrec "
                             "status` names it)")
    parser.add_argument("--triton-metrics-url", default="",
                        help="Triton's metrics URL, for `freshrec status` to name beside the "
                             "updater's (freshrec serve passes it)")
    parser.add_argument("--token-file", type=Path,
                        help=f"a file whose first line is the bearer token Admin calls need "
                             f"(else the {TOKEN_ENV} environment variable; required when --host "
                             "is not loopback)")
    parser.add_argument("--feedback-needs-token", action="store_true",
                        help="Feedback calls need the token too")
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate "
                                                      "(with --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    parser.add_argument("--triton-tls-ca", type=Path,
                        help="Triton's gRPC port serves TLS: trust this CA (PEM)")
    parser.add_argument("--port-file", type=Path,
                        help="once ready, write the port listened on to this file (for --port 0)")
    parser.add_argument("--state-dir", type=Path,
                        help="where the feedback log lives (default: updater/ beside the repository)")
    parser.add_argument("--redis", metavar="URL",
                        help="keep the event log and live history in this Redis (redis://host:port "
                             "or unix:///path; run it with appendonly yes, appendfsync always): apps "
                             "may then send events straight to it (clients.RedisEventWriter). "
                             "Default: SQLite files in --state-dir")
    parser.add_argument("--redis-prefix", default=c.DEFAULT_REDIS_PREFIX,
                        help=f"prefix of every key freshrec keeps in Redis "
                             f"(default {c.DEFAULT_REDIS_PREFIX})")
    parser.add_argument("--publish-every-s", type=float, default=DEFAULT_PUBLISH_EVERY_S,
                        help="publish at most this often while events arrive (T)")
    parser.add_argument("--publish-every-events", type=int, default=DEFAULT_PUBLISH_EVERY_EVENTS,
                        help="publish after this many new events even before T (M)")
    parser.add_argument("--keep-versions", type=int, default=DEFAULT_KEEP_VERSIONS,
                        help="published versions kept for rollback")
    parser.add_argument("--shard-kib", type=int, default=DEFAULT_SHARD_KIB,
                        help=f"table shard size in published versions (default {DEFAULT_SHARD_KIB} KiB)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="row-wise Adagrad learning rate")
    parser.add_argument("--negatives", type=int, default=DEFAULT_NEGATIVES,
                        help="sampled negative items per event")
    parser.add_argument("--max-step", type=float, default=DEFAULT_MAX_STEP,
                        help="clip of one event's step per row (L2 norm)")
    parser.add_argument("--fold-in-events", type=int, default=DEFAULT_FOLD_IN_EVENTS,
                        help="items with fewer positive events fold their users' queries into "
                             f"their rows (default {DEFAULT_FOLD_IN_EVENTS}: off)")
    parser.add_argument("--impression-skips", type=int, default=DEFAULT_IMPRESSION_SKIPS,
                        metavar="N",
                        help="a positive event also trains the top N items of the newest answer "
                             "its user was shown in the attribution window, but the one taken, "
                             f"as skips (default {DEFAULT_IMPRESSION_SKIPS}: off)")
    parser.add_argument("--skip-weight", type=float, default=DEFAULT_SKIP_WEIGHT,
                        help=f"how hard a skip pushes the item away, against a click's 1 "
                             f"(default {DEFAULT_SKIP_WEIGHT:g}; 0: skips train nothing)")
    for flag, what in (("--no-row-updates", "events train no row (user, item, negatives): "
                                            "publishes carry only the counts and histories"),
                       ("--no-count-updates", "events move no popularity or trend count: "
                                              "publishes carry only the rows and histories")):
        parser.add_argument(flag, action="store_true", help=f"{what} (an ablation, bench.ablation)")
    parser.add_argument("--user-steps", choices=USER_STEPS, default=DEFAULT_USER_STEPS,
                        help="whose user rows the gradient steps move: trained (a row the build "
                             "fitted; a new user is served from their history), all, or none "
                             f"(default {DEFAULT_USER_STEPS})")
    parser.add_argument("--cooccurrence-rows", choices=("all", "unfitted"),
                        default="all" if DEFAULT_COOCCURRENCE_FITTED else "unfitted",
                        help="in a closed-form version, whose item rows learn from the "
                             "co-occurrence map at each event: all items, or only those outside "
                             "the fit (default all)")
    parser.add_argument("--new-user-rows", choices=NEW_USER_ROWS, default=DEFAULT_NEW_USER_ROWS,
                        help="the row of a user the build did not fit: a times a fitted row's "
                             "length along the mean of their history's item rows; auto chooses "
                             "a in 0, 0.5, 1 from this deployment's traffic (0: history alone) "
                             f"(default {DEFAULT_NEW_USER_ROWS})")
    add_intake_arguments(parser)
    parser.add_argument("--quality-events-per-batch", type=int,
                        default=DEFAULT_QUALITY_EVENTS_PER_BATCH,
                        help="positive events of each batch asked of the serving version for its "
                             "quality record, the hit rate in `freshrec status` and its manifest "
                             f"(default {DEFAULT_QUALITY_EVENTS_PER_BATCH}; 0: off)")
    parser.add_argument("--attribution-window-s", type=float,
                        default=DEFAULT_ATTRIBUTION_WINDOW_S,
                        help="a positive event is attributed to the answers its user was shown "
                             "this long before it (the exposure hit rate, and what a canary is "
                             f"judged on) (default {DEFAULT_ATTRIBUTION_WINDOW_S:g})")
    parser.add_argument("--fold-in-users", action="store_true", default=DEFAULT_FOLD_IN_USERS,
                        help="users with at most --fold-in-events history items take the scaled "
                             "mean of their items' rows as their row (off by default; needs "
                             "--fold-in-events > 0)")


def add_intake_arguments(parser: argparse.ArgumentParser) -> None:
    """What feedback may enter (updater.admission); `freshrec serve` passes them on too."""
    parser.add_argument("--grow-catalogue-from-feedback", action="store_true",
                        help="take events naming any item id, and give a new one a row (off by "
                             "default: an item the serving version does not know is NOT_FOUND; "
                             "`freshrec items add` adds items)")
    parser.add_argument("--max-new-users-per-min", type=int, default=DEFAULT_MAX_NEW_USERS_PER_MIN,
                        help=f"new user rows a minute (default {DEFAULT_MAX_NEW_USERS_PER_MIN}); "
                             "past it a new user's events are logged and in their live history "
                             "but train nothing until the minute allows a row")


def intake_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The intake flags of ``args`` as updater arguments (for `freshrec serve`)."""
    grow = ("--grow-catalogue-from-feedback",) if args.grow_catalogue_from_feedback else ()
    return (*grow, "--max-new-users-per-min", str(args.max_new_users_per_min))


def config_from_args(args: argparse.Namespace) -> UpdaterConfig:
    return UpdaterConfig(
        repository=args.repository, triton_url=args.triton, host=args.host, port=args.port,
        state_dir=args.state_dir, port_file=args.port_file, redis_url=args.redis,
        redis_prefix=args.redis_prefix, metrics_port=args.metrics_port,
        triton_metrics_url=args.triton_metrics_url, token=read_token(args.token_file),
        feedback_needs_token=args.feedback_needs_token, tls_cert=args.tls_cert,
        tls_key=args.tls_key, triton_tls_ca=args.triton_tls_ca,
        intake=IntakePolicy(grow_catalogue=args.grow_catalogue_from_feedback,
                            max_new_users_per_min=args.max_new_users_per_min),
        policy=PublishPolicy(every_s=args.publish_every_s, every_events=args.publish_every_events,
                             keep_versions=args.keep_versions, shard_kib=args.shard_kib),
        trainer=TrainerConfig(lr=args.lr, negatives=args.negatives, max_step=args.max_step,
                              fold_in_events=args.fold_in_events,
                              fold_in_users=args.fold_in_users, skip_weight=args.skip_weight,
                              row_updates=not args.no_row_updates,
                              count_updates=not args.no_count_updates,
                              user_steps=args.user_steps, new_user_rows=args.new_user_rows,
                              cooccurrence_fitted=args.cooccurrence_rows == "all",
                              impression_skips=args.impression_skips),
        quality=QualityPolicy(events_per_batch=args.quality_events_per_batch,
                              attribution_window_s=args.attribution_window_s))


def run_updater(config: UpdaterConfig, *, stop: threading.Event | None = None) -> None:
    """Run until `stop` is set or SIGINT/SIGTERM arrives (main thread only)."""
    from updater.engine import Engine
    from updater.feedback_log import FeedbackLog
    from updater.health import UpdaterHealth
    from updater.metrics import EngineCollector
    from updater.publisher import Publisher
    from updater.service import grpc_server
    from updater.triton_control import TritonControl

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    if config.redis_url is not None:
        from updater.redis_log import RedisFeedbackLog

        feedback_log = RedisFeedbackLog(config.redis_url, prefix=config.redis_prefix)
    else:
        feedback_log = FeedbackLog(config.log_path,
                                   live_history=history_path(Path(config.repository) / c.RETRIEVE))
    triton = TritonControl(config.triton_url, control_headers=triton_control_headers(config.token),
                           tls_ca=config.triton_tls_ca)
    publisher = Publisher(config.repository, triton, keep_versions=config.policy.keep_versions,
                          shard_bytes=config.policy.shard_kib * 1024)
    engine = Engine(feedback_log, publisher, policy=config.policy, trainer_config=config.trainer,
                    intake=config.intake, quality=config.quality)
    engine.recover()
    write_store_choice(publisher.model_dir, config.redis_url, config.redis_prefix)  # tell retrieve
    engine.start()
    metrics_server, metrics_port = engine.metrics.serve(config.host, config.metrics_port)
    engine.metrics.registry.register(EngineCollector(
        engine, restarts=lambda: _triton_restarts(config.state_path),
        serving_versions=lambda: _serving_versions(triton, publisher)))
    metrics_urls = {"updater": f"http://{config.host}:{metrics_port}/metrics",
                    **({"triton": config.triton_metrics_url} if config.triton_metrics_url else {})}
    health = UpdaterHealth(ready=lambda: _ready(engine, triton, config.triton_url))
    server, port = grpc_server(f"{config.host}:{config.port}", feedback_log, engine, triton,
                               state_dir=config.state_path, metrics_urls=metrics_urls,
                               health=health, token=config.token,
                               feedback_needs_token=config.feedback_needs_token,
                               credentials=server_credentials(config.tls_cert, config.tls_key))
    health.start()
    if config.port_file is not None:
        _write_port_file(config.port_file, port)
    log.warning("updater ready on %s:%s (log %s, Triton %s, serving retrieve %s)",
                config.host, port, config.redis_url or config.log_path, config.triton_url,
                publisher.current)
    try:
        stop.wait()
    finally:
        health.stop()
        server.stop(grace=2).wait()
        metrics_server.shutdown()
        engine.stop()
        feedback_log.close()
        triton.close()
        log.warning("updater stopped")


def _ready(engine, triton, triton_url: str) -> tuple[bool, str]:
    """The health service's test: the engine thread runs and Triton answers."""
    if not engine.running():
        return False, "the engine thread stopped"
    if not triton.is_live():
        return False, f"Triton at {triton_url} does not answer"
    return True, ""


def _triton_restarts(state_dir: Path) -> int:
    from updater.supervision import read_supervisor_state

    return int(read_supervisor_state(state_dir)["triton_restarts"])


def _serving_versions(triton, publisher) -> dict[str, int]:
    """The version each model serves: retrieve's newest published one (its publish waited for
    the switch), the others as Triton reports them (none when Triton does not answer)."""
    from updater.service import SERVING_MODELS
    from updater.triton_control import TritonError

    try:
        versions = triton.serving_versions(SERVING_MODELS)
    except TritonError:
        versions = {}
    if publisher.current is not None:
        versions[c.RETRIEVE] = publisher.current
    return versions


def _write_port_file(path: Path, port: int) -> None:
    """Write-then-rename, so a reader polling for the file never sees half a number."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(str(port))
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m updater", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:  # a flag out of range: one line naming it, as `freshrec updater` does
        parser.error(str(exc))
    run_updater(config)
    return 0
