"""The `freshrec` command. Each subcommand imports its heavy modules only when chosen, so
`freshrec --help` is instant. User errors print one line on stderr and exit 1."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from model_repository import contract as c  # names and defaults only: light

log = logging.getLogger("freshrec")



TRAIN_FLAGS = ("dim", "epochs", "lr", "l2", "negatives")  # `build` flags that set TrainConfig fields


class UserError(Exception):
    """Something the user can fix; printed as one line."""


def _id_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer ids, got {text!r}") from None


def cmd_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from exporter.build import BuildError, build, describe_choice
    from exporter.data import DataError
    from exporter.train import TrainConfig

    given = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}
    # the tower is chosen, not searched: --tower sets what the search starts from
    base = {"tower": args.tower} if args.tower is not None else {}
    try:
        config = replace(TrainConfig(), **base, **given) if given or base else None
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    for flag, value in (("--popularity-weight", args.popularity_weight),
                        ("--popularity-half-life-days", args.popularity_half_life_days),
                        ("--session-minutes", args.session_minutes),
                        ("--session-popularity-weight", args.session_popularity_weight)):
        if value is not None and not 0 <= value < float("inf"):
            raise UserError(f"{flag} must be >= 0, got {value:g}")
    started = time.monotonic()
    feedback, feedback_offset = None, 0
    if args.feedback_log is not None:
        from freshrec.retrain import FeedbackSourceError, logged_feedback

        try:
            feedback, feedback_offset = logged_feedback(args.feedback_log,
                                                        redis_prefix=args.redis_prefix,
                                                        say=_progress_printer(args.quiet))
        except FeedbackSourceError as exc:
            raise UserError(str(exc)) from exc
        print(f"feedback log: {len(feedback)} positive events up to offset {feedback_offset}")
    try:
        result = build(
            args.out, data=args.data, items=args.items, synthetic=args.synthetic, force=args.force,
            # the demo's events end now, as a live log's would (issue 27: a log that ended years
            # ago left the trend prior to whatever the first clicks were)
            synthetic_kwargs={"end_s": time.time()} if args.synthetic else None,
            progress=not args.quiet, text_encoder=False if args.no_text_encoder else None,
            config=config, search=not (args.no_search or given),
            search_budget_s=args.search_budget_s, popularity_weight=args.popularity_weight,
            popularity_half_life_s=(None if args.popularity_half_life_days is None
                                    else args.popularity_half_life_days * 86400.0),
            session_s=None if args.session_minutes is None else args.session_minutes * 60.0,
            session_popularity_weight=args.session_popularity_weight,
            feedback=feedback, feedback_offset=feedback_offset,
        )
    except (BuildError, DataError) as exc:
        raise UserError(str(exc)) from exc
    print(f"data: {result.ratings}")
    if result.search is not None:
        print(describe_choice(result.search))
    print("quality on the latest 20% of events by time (trained on the earliest 80%):")
    print(result.quality_table)
    print(f"{result.tower} user tower exported to ONNX "
          f"(max |onnx - torch| = {result.onnx_max_abs_err:.2e})")
    if result.text_parity_max_abs_err is not None:
        print(f"text encoder (all-MiniLM-L6-v2) exported to ONNX "
              f"(max |onnx - torch| = {result.text_parity_max_abs_err:.2e})")
        print(f"cold items ({result.cold_items} titled items held out of training, rows from "
              "their projected titles), test targets that are cold items only:")
        print(result.cold_quality_table)
    else:
        print("text encoder: not built (no item titles, or --no-text-encoder)")
    if result.tensorrt_plan is not None:
        print(f"TensorRT plan: {result.tensorrt_plan}")
    else:
        print("TensorRT plan: not built (needs a CUDA device and the tensorrt package)")
    if feedback is not None:
        print(f"exported: fitted again on every event, the feedback up to log offset "
              f"{feedback_offset} included (push it: freshrec push {args.out})")
    print(f"repository: {result.repository} (version 1) in {time.monotonic() - started:.1f} s")
    return 0


def _progress_printer(quiet: bool):
    """Long reads say how far they are, on stderr, unless --quiet."""
    if quiet:
        return lambda _message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def serving_repository(path: Path) -> Path:
    """The model repository to serve: ``path`` itself, or the repository inside a build's output
    folder (`freshrec build --out DIR` writes DIR/repository). UserError naming what to pass
    when it is neither."""
    from exporter import REPOSITORY_DIR

    if (path / c.RETRIEVE).is_dir():
        return path
    if (path / REPOSITORY_DIR / c.RETRIEVE).is_dir():
        return path / REPOSITORY_DIR
    raise UserError(f"{path} is not a model repository (no {c.RETRIEVE}/ in it, nor in "
                    f"{path / REPOSITORY_DIR}): pass the folder `freshrec build --out DIR` wrote, "
                    f"DIR or DIR/{REPOSITORY_DIR}")


def cmd_serve(args: argparse.Namespace) -> int:
    from freshrec.processes import SetupError, TritonServer, UpdaterExited, UpdaterProcess
    from freshrec.supervisor import CHECK_EVERY_S, Supervisor
    from updater.access import (
        TOKEN_ENV,
        AccessError,
        read_token,
        require_token_off_loopback,
        server_credentials,
        triton_restriction_flags,
    )
    from updater.main import UpdaterConfig, intake_flags

    try:  # before anything starts: an open updater is refused, and says why
        token = read_token(args.token_file)
        require_token_off_loopback(args.host, token)
        server_credentials(args.tls_cert, args.tls_key)
    except AccessError as exc:
        raise UserError(str(exc)) from exc
    access_args = (("--feedback-needs-token",) if args.feedback_needs_token else ()) + (
        ("--tls-cert", str(args.tls_cert), "--tls-key", str(args.tls_key),
         "--triton-tls-ca", str(args.tls_ca or args.tls_cert)) if args.tls_cert else ())
    repository = serving_repository(Path(args.repository))
    log_path = Path(args.log) if args.log else repository.parent / "tritonserver.log"
    # load every model the repository has: text_encoder only exists in builds with titles
    models = tuple(m for m in (c.USER_TOWER, c.TEXT_ENCODER, c.RETRIEVE, c.RECOMMEND)
                   if (repository / m).is_dir())
    server = TritonServer(repository, models=models, host=args.host, grpc_port=args.grpc_port,
                          http_port=args.http_port, metrics_port=args.metrics_port,
                          log_path=log_path, extra_args=tuple(triton_restriction_flags(token)),
                          tls=(args.tls_cert, args.tls_key, args.tls_ca or args.tls_cert)
                          if args.tls_cert else None)

    redis_args = (("--redis", args.redis, "--redis-prefix", args.redis_prefix) if args.redis
                  else ()) + intake_flags(args)

    def make_updater():
        return UpdaterProcess(repository, server.grpc_url, host=args.host, port=args.updater_port,
                              log_path=repository.parent / "updater.log",
                              args=redis_args + access_args,
                              # the token in the child's environment, never on its command line
                              env={**os.environ, TOKEN_ENV: token} if token else None,
                              metrics_port=args.updater_metrics_port,
                              triton_metrics_url=f"http://{args.host}:{server.metrics_port}/metrics",
                              tls_ca=args.tls_ca or args.tls_cert)

    def say(message):
        print(f"freshrec: {message}", file=sys.stderr, flush=True)

    supervisor = Supervisor(server, make_updater=None if args.no_updater else make_updater,
                            state_dir=UpdaterConfig(repository).state_path, say=say)
    started = time.monotonic()
    try:
        supervisor.start()
    except SetupError as exc:
        raise UserError(str(exc)) from exc
    except UpdaterExited as exc:
        raise UserError(f"the updater did not start: {exc}") from exc
    updater = supervisor.updater
    updater_note = (f", updater {updater.url} (metrics {args.host}:{args.updater_metrics_port}, "
                    f"log {updater.log_path})" if updater else "")
    print(
        f"freshrec ready in {time.monotonic() - started:.1f} s: gRPC {server.grpc_url} "
        f"(HTTP {args.host}:{server.http_port}, metrics {args.host}:{server.metrics_port}); "
        f"server log {log_path}{updater_note}. Ctrl-C stops.",
        flush=True,
    )
    stop = {"now": False}

    def _request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
        stop["now"] = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    try:
        while not stop["now"]:
            supervisor.check()
            time.sleep(CHECK_EVERY_S)
    finally:
        code = supervisor.stop()
        restarts = supervisor.triton_restarts
        print(f"freshrec stopped (tritonserver exit code {code}"
              + (f", restarted {restarts} times after crashes" if restarts else "") + ")", flush=True)
    return 0


def _updater_call(args: argparse.Namespace, method: str, *call_args, **kwargs):
    """Call UpdaterClient(args.updater).<method>; an RPC error is one line on stderr."""
    import grpc

    from clients import UpdaterClient
    from updater.access import AccessError, read_token

    try:
        token = read_token(args.token_file)
    except AccessError as exc:
        raise UserError(str(exc)) from exc
    try:
        with UpdaterClient(args.updater, token=token, tls_ca=args.tls_ca) as client:
            return getattr(client, method)(*call_args, **kwargs)
    except grpc.RpcError as exc:
        raise UserError(f"{method} failed: {exc.code().name}: {exc.details()}") from exc


def cmd_updater(args: argparse.Namespace) -> int:
    from updater.settings import one_blas_thread

    one_blas_thread()  # before updater.main imports numpy
    from updater.main import config_from_args, run_updater

    logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        run_updater(config_from_args(args))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    result = _updater_call(args, "feedback", args.user, args.item, args.kind, value=args.value,
                           event_id=args.event_id, timestamp=args.timestamp)
    if result.rejected:  # (a call whose only event is refused fails in _updater_call instead)
        first = result.rejected[0]
        raise UserError(f"rejected ({first['code']}): {first['field']}: {first['reason']}")
    print(json.dumps({"accepted": result.accepted, "duplicate": bool(result.duplicate_event_ids),
                      "offset": result.last_offset}))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_updater_call(args, "status"), indent=2))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    print(json.dumps(_updater_call(args, "publish"), indent=2))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    print(json.dumps(_updater_call(args, "rollback", args.to), indent=2))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    repository = serving_repository(args.dir).resolve()
    if args.auto and args.canary is None:
        raise UserError("--auto decides a canary: give --canary SHARE too")
    print(json.dumps(_updater_call(args, "push", repository, force=args.force,
                                   canary=args.canary or 0.0, auto=args.auto), indent=2))
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    if args.promote or args.rollback:
        print(json.dumps(_updater_call(args, "end_canary", promote=args.promote), indent=2))
        return 0
    canary = _updater_call(args, "status")["canary"]
    if canary is None:
        raise UserError("no canary has run since the updater started")
    print(json.dumps(canary, indent=2))
    return 0


def _share(text: str) -> float:
    """--canary: "10%" or "0.1" -> 0.1, in (0, 1)."""
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share like 10% or 0.1, got {text!r}") from None
    if not 0 < share < 1:
        raise argparse.ArgumentTypeError(f"the share must be above 0 and below 100%, got {text!r}")
    return share


def cmd_forget_user(args: argparse.Namespace) -> int:
    print(json.dumps(_updater_call(args, "forget_user", args.user), indent=2))
    return 0


def cmd_items_add(args: argparse.Namespace) -> int:
    from exporter.data import DataError, read_new_items

    try:
        items = read_new_items(args.file, max_title_chars=c.MAX_TEXT_CHARS)
    except (DataError, OSError) as exc:
        raise UserError(str(exc)) from exc
    print(f"adding {len(items)} items from {args.file} (encoding their titles on the server)...",
          file=sys.stderr, flush=True)
    reply = _updater_call(args, "add_items", [
        {"item_id": int(i), "title": t, "category": cat}
        for i, t, cat in zip(items.ids, items.titles, items.categories)])
    print(json.dumps(reply, indent=2))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Triton's readiness (server and each model, its own endpoints) and the updater's standard
    gRPC health service; prints JSON, exits 0 only when all are ready."""
    from clients.channel import probe
    from clients.client import triton_client

    triton: dict = {"url": args.url}
    try:
        client = triton_client(args.url, tls_ca=args.tls_ca)
        triton["ready"] = bool(client.is_server_ready(client_timeout=5.0))
        triton["models"] = {m: bool(client.is_model_ready(m, client_timeout=5.0))
                            for m in args.models}
        client.close()
    except Exception as exc:  # noqa: BLE001 - unreachable is the answer, said
        triton.update(ready=False, error=str(exc).splitlines()[0])
    report = {"triton": triton}
    healthy = triton["ready"] and all(triton.get("models", {}).values())
    if not args.no_updater:
        state = probe(args.updater, tls_ca=args.tls_ca)
        report["updater"] = {"url": args.updater, "status": state}
        healthy = healthy and state == "SERVING"
    report["healthy"] = healthy
    print(json.dumps(report, indent=2))
    return 0 if healthy else 1


def cmd_recommend(args: argparse.Namespace) -> int:
    from tritonclient.utils import InferenceServerException

    if args.user is None and args.text is None:
        raise UserError("give --user ID, --text TEXT, or both")

    from clients import Client

    try:
        with Client(args.url, tls_ca=args.tls_ca) as client:
            answer = client.recommend(
                args.user, k=args.k, history=args.history, exclude=args.exclude,
                exclude_seen=args.exclude_seen, text=args.text,
            )
    except InferenceServerException as exc:
        raise UserError(f"recommend failed: {exc}") from exc
    asked = {"user_id": args.user} if args.user is not None else {}
    if args.text is not None:
        asked["text"] = args.text
    print(json.dumps({**asked, **answer.to_json()}, indent=2))
    return 0


def _redis_prefix_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--redis-prefix", default=c.DEFAULT_REDIS_PREFIX,
                        help=f"{what} (default {c.DEFAULT_REDIS_PREFIX})")


def _updater_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--updater", default=c.DEFAULT_UPDATER_URL,
                        help=f"updater gRPC address (default {c.DEFAULT_UPDATER_URL})")
    parser.add_argument("--token-file", type=Path,
                        help="a file whose first line is the updater's bearer token (else the "
                             "FRESHREC_TOKEN environment variable, if set)")
    parser.add_argument("--tls-ca", type=Path,
                        help="the PEM of the CA to trust, for servers serving TLS")


def _updater_command(sub, name: str, func, help_text: str) -> argparse.ArgumentParser:
    """A subcommand that calls the updater's API: its --updater flag and its handler set."""
    p = sub.add_parser(name, help=help_text)
    _updater_flag(p)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshrec", description="A recommendation server on Triton that learns while it serves."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    from clients.loadtest import add_loadtest_parser

    add_loadtest_parser(sub)

    from exporter import DEFAULT_SEARCH_BUDGET_S, DEFAULT_TOWER  # constants: light
    from model_repository.retrieve_schema import TOWER_KINDS  # exporter has imported it: light

    p = sub.add_parser("build", help="train a base model and export a Triton model repository")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="ratings file: u.data, ratings.dat or ratings.csv")
    source.add_argument("--synthetic", action="store_true", help="generate a synthetic data set")
    p.add_argument("--items", type=Path, help="item file with titles (u.item, movies.dat/.csv, items.csv)")
    p.add_argument("--out", type=Path, required=True, help="output folder (repository/ goes in it)")
    p.add_argument("--force", action="store_true", help="replace an existing repository")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-text-encoder", action="store_true",
                   help="no text_encoder model, text projection or cold-item hold-out "
                        "(default: built when the items have titles)")
    p.add_argument("--no-search", action="store_true",
                   help="train with the default settings instead of choosing them on a "
                        "validation slice (no popularity prior)")
    p.add_argument("--search-budget-s", type=float, default=DEFAULT_SEARCH_BUDGET_S,
                   help=f"time for choosing the settings (default {DEFAULT_SEARCH_BUDGET_S:g}; the "
                        "first candidate always runs)")
    for name, kind, what in (("dim", int, "embedding size"), ("epochs", int, "training epochs"),
                             ("lr", float, "learning rate"), ("l2", float, "L2 regularisation"),
                             ("negatives", int, "sampled negatives per batch")):
        p.add_argument(f"--{name}", type=kind, help=f"{what} (given settings turn the search off)")
    p.add_argument("--popularity-weight", type=float,
                   help="the popularity prior's weight by hand (0: none), over the search's "
                        "choice or without a search")
    p.add_argument("--popularity-half-life-days", type=float,
                   help="the prior's half-life in days by hand (0: all-time counts), over the "
                        "search's choice or without a search")
    p.add_argument("--session-minutes", type=float,
                   help="the prior's session gate by hand: a user whose newest history event is "
                        "less than this many minutes old gets --session-popularity-weight "
                        "(0: no gate), over the search's choice or without a search")
    p.add_argument("--session-popularity-weight", type=float,
                   help="the prior's weight for a user in session, by hand")
    p.add_argument("--tower", choices=TOWER_KINDS,
                   help=f"the user tower: sequence (query = user row + a self-attention encoder "
                        f"over the last history items) or pooled (user row + recency-pooled "
                        f"history + an MLP); default {DEFAULT_TOWER}. The search still runs")
    p.add_argument("--feedback-log", metavar="PATH|URL",
                   help="retrain: also train on the updater's logged feedback (its feedback.sqlite, "
                        "the folder holding it, or its redis:// URL) up to the log's newest offset, "
                        "which the new base records; a push replays what came after")
    _redis_prefix_flag(p, "with a redis:// --feedback-log: its key prefix")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("serve", help="start tritonserver on a model repository")
    p.add_argument("--repository", type=Path, default=Path("var/demo/repository"),
                   help="a model repository, or the --out folder of `freshrec build` "
                        "(default var/demo/repository)")
    p.add_argument("--host", default=c.DEFAULT_HOST, help=f"address to bind (default {c.DEFAULT_HOST})")
    p.add_argument("--grpc-port", type=int, default=c.DEFAULT_GRPC_PORT,
                   help=f"Triton gRPC port, what clients call (default {c.DEFAULT_GRPC_PORT})")
    p.add_argument("--http-port", type=int, default=c.DEFAULT_HTTP_PORT,
                   help=f"Triton HTTP port (default {c.DEFAULT_HTTP_PORT})")
    p.add_argument("--metrics-port", type=int, default=c.DEFAULT_METRICS_PORT,
                   help=f"Triton metrics port (default {c.DEFAULT_METRICS_PORT})")
    p.add_argument("--updater-metrics-port", type=int, default=c.DEFAULT_UPDATER_METRICS_PORT,
                   help="the updater's Prometheus metrics port (default "
                        f"{c.DEFAULT_UPDATER_METRICS_PORT}; `freshrec status` names both)")
    p.add_argument("--log", type=Path, help="server log file (default: beside the repository)")
    p.add_argument("--updater-port", type=int, default=c.DEFAULT_UPDATER_PORT,
                   help=f"updater sidecar gRPC port (default {c.DEFAULT_UPDATER_PORT})")
    p.add_argument("--no-updater", action="store_true", help="serve only; no feedback, no updates")
    p.add_argument("--token-file", type=Path,
                   help="a file whose first line is the bearer token the updater's Admin calls "
                        "need (else FRESHREC_TOKEN); required with a --host that is not loopback")
    p.add_argument("--feedback-needs-token", action="store_true",
                   help="the updater's Feedback calls need the token too")
    p.add_argument("--tls-cert", type=Path,
                   help="the updater's and Triton's gRPC ports serve TLS with this PEM certificate")
    p.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    p.add_argument("--tls-ca", type=Path,
                   help="the CA that signed --tls-cert, to probe the updater (default: "
                        "--tls-cert itself, a self-signed certificate)")
    p.add_argument("--redis", metavar="URL",
                   help="the updater keeps the event log and live history in this Redis "
                        "(redis://host:port or unix:///path, run with appendonly yes and "
                        "appendfsync always); apps may send events straight to it. Default: SQLite")
    _redis_prefix_flag(p, "prefix of freshrec's Redis keys")
    from updater.main import add_arguments as add_updater_arguments  # argparse only: light
    from updater.main import add_intake_arguments

    add_intake_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("updater", help="run the updater sidecar alone (next to a running Triton)")
    add_updater_arguments(p)
    p.set_defaults(func=cmd_updater)

    p = _updater_command(sub, "feedback", cmd_feedback, "send one feedback event to the updater")
    p.add_argument("--user", type=int, required=True, help="external user id")
    p.add_argument("--item", type=int, required=True, help="external item id")
    p.add_argument("--kind", default="click", help="click | purchase | rating | skip (default click)")
    p.add_argument("--value", type=float, default=0.0, help="the rating, for --kind rating (1..5)")
    p.add_argument("--event-id", help="idempotency key (default: a random one)")
    p.add_argument("--timestamp", type=float, help="Unix seconds (default: now)")
    _updater_command(sub, "status", cmd_status, "the updater's status (prints JSON)")
    _updater_command(sub, "publish", cmd_publish, "publish a version with all durable feedback now")
    p = _updater_command(sub, "rollback", cmd_rollback,
                         "serve the previous (or a named) version's tables again")
    p.add_argument("--to", type=int, help="the version to roll back to (default: the previous one)")
    p = _updater_command(sub, "push", cmd_push,
                         "serve a retrained base (freshrec build --feedback-log ... --out DIR): "
                         "verified, the logged events after its offset replayed onto it, "
                         "switched to under traffic (prints JSON)")
    p.add_argument("dir", type=Path, help="the build's --out folder (or its repository/)")
    p.add_argument("--force", action="store_true",
                   help="push even when its build scored below the serving base's")
    p.add_argument("--canary", type=_share, metavar="SHARE",
                   help="serve it to this share of users only (10%% or 0.1), chosen by a stable "
                        "hash of the user id, beside the serving version; both arms learn")
    p.add_argument("--auto", action="store_true",
                   help="with --canary: promote it when its users' hit rate is not worse, roll "
                        "it back when it is (updater.canary's sequential rule)")
    p = _updater_command(sub, "health", cmd_health,
                         "is it up: Triton's ready endpoints (server and models) and the "
                         "updater's gRPC health service; JSON, exit code 0 only when all are")
    p.add_argument("--url", default=c.DEFAULT_TRITON_URL,
                   help=f"Triton gRPC address (default {c.DEFAULT_TRITON_URL})")
    p.add_argument("--models", nargs="+", default=[c.RECOMMEND, c.RETRIEVE], metavar="MODEL",
                   help=f"models that must be ready (default {c.RECOMMEND} {c.RETRIEVE})")
    p.add_argument("--no-updater", action="store_true",
                   help="Triton only (a server started with --no-updater)")
    p = _updater_command(sub, "canary", cmd_canary,
                         "the running canary's arms, hit rates and decision (prints JSON); "
                         "--promote or --rollback ends it")
    ends = p.add_mutually_exclusive_group()
    ends.add_argument("--promote", action="store_true",
                      help="every user on the canary's lineage (the control's events since it "
                           "started trained in)")
    ends.add_argument("--rollback", action="store_true",
                      help="every user back on the serving lineage")
    p = _updater_command(sub, "forget-user", cmd_forget_user,
                         "remove a user's row, history and logged events")
    p.add_argument("--user", type=int, required=True, help="external user id")

    p = sub.add_parser("items", help="manage the catalogue: items add --file new_items.csv")
    items = p.add_subparsers(dest="items_command", required=True)
    p = items.add_parser("add", help="add items from their titles (CSV: id,title[,category]); "
                                     "they are served once the command returns")
    p.add_argument("--file", type=Path, required=True,
                   help="UTF-8 CSV with the header id,title or id,title,category")
    _updater_flag(p)
    p.set_defaults(func=cmd_items_add)

    p = sub.add_parser("recommend", help="ask the server for a user's top-K items (prints JSON)")
    p.add_argument("--user", type=int, help="external user id (required unless --text is given)")
    p.add_argument("--text", help="query text: blended with the user's taste, or, without --user, "
                                  "a text search over the catalogue")
    p.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    p.add_argument("--history", type=_id_list, help="recent item ids, most recent last: 1,2,3")
    p.add_argument("--exclude", type=_id_list, help="item ids never to return: 4,5")
    p.add_argument("--exclude-seen", action="store_true", help="also exclude the history used")
    p.add_argument("--url", default=c.DEFAULT_TRITON_URL,
                   help=f"gRPC address (default {c.DEFAULT_TRITON_URL})")
    p.add_argument("--tls-ca", type=Path,
                   help="the PEM of the CA to trust, for a server whose gRPC port serves TLS")
    p.set_defaults(func=cmd_recommend)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except UserError as exc:
        print(f"freshrec: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
