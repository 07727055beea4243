"""The `freshrec` command. Each subcommand imports its heavy modules only when chosen, so
`freshrec --help` is instant. User errors print one line on stderr and exit 1."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("freshrec")

DEFAULT_URL = "127.0.0.1:8001"


class UserError(Exception):
    """Something the user can fix; printed as one line."""


def _id_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer ids, got {text!r}") from None


def cmd_build(args: argparse.Namespace) -> int:
    from exporter.build import BuildError, build
    from exporter.data import DataError

    started = time.monotonic()
    try:
        result = build(
            args.out, data=args.data, items=args.items, synthetic=args.synthetic, force=args.force,
            progress=not args.quiet,
        )
    except (BuildError, DataError) as exc:
        raise UserError(str(exc)) from exc
    print(f"data: {result.ratings}")
    print(result.quality_table)
    print(f"user tower exported to ONNX (max |onnx - torch| = {result.onnx_max_abs_err:.2e})")
    if result.tensorrt_plan is not None:
        print(f"TensorRT plan: {result.tensorrt_plan}")
    else:
        print("TensorRT plan: not built (needs a CUDA device and the tensorrt package)")
    print(f"repository: {result.repository} (version 1) in {time.monotonic() - started:.1f} s")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from freshrec.server import SetupError, TritonServer
    from model_repository import contract as c

    repository = Path(args.repository)
    log_path = Path(args.log) if args.log else repository.parent / "tritonserver.log"
    server = TritonServer(
        repository,
        models=(c.USER_TOWER, c.RETRIEVE, c.RECOMMEND),
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_path=log_path,
    )
    started = time.monotonic()
    try:
        server.start()
    except SetupError as exc:
        raise UserError(str(exc)) from exc
    print(
        f"freshrec ready in {time.monotonic() - started:.1f} s: gRPC {server.grpc_url} "
        f"(HTTP {args.host}:{server.http_port}, metrics {args.host}:{server.metrics_port}); "
        f"server log {log_path}. Ctrl-C stops.",
        flush=True,
    )
    stop = {"now": False}

    def _request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
        stop["now"] = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    try:
        while not stop["now"]:
            if server.process is None or server.process.poll() is not None:
                raise UserError(f"tritonserver exited unexpectedly; see {log_path}")
            time.sleep(0.2)
    finally:
        code = server.stop()
        print(f"freshrec stopped (tritonserver exit code {code})", flush=True)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from tritonclient.utils import InferenceServerException

    from clients import Client

    try:
        with Client(args.url) as client:
            answer = client.recommend(
                args.user, k=args.k, history=args.history, exclude=args.exclude,
                exclude_seen=args.exclude_seen,
            )
    except InferenceServerException as exc:
        raise UserError(f"recommend failed: {exc}") from exc
    print(json.dumps({"user_id": args.user, **answer.to_json()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshrec", description="A recommendation server on Triton that learns while it serves."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="train a base model and export a Triton model repository")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="ratings file: u.data, ratings.dat or ratings.csv")
    source.add_argument("--synthetic", action="store_true", help="generate a synthetic data set")
    p.add_argument("--items", type=Path, help="item file with titles (u.item, movies.dat/.csv, items.csv)")
    p.add_argument("--out", type=Path, required=True, help="output folder (repository/ goes in it)")
    p.add_argument("--force", action="store_true", help="replace an existing repository")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("serve", help="start tritonserver on a model repository")
    p.add_argument("--repository", type=Path, default=Path("var/demo/repository"))
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log", type=Path, help="server log file (default: beside the repository)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("recommend", help="ask the server for a user's top-K items (prints JSON)")
    p.add_argument("--user", type=int, required=True, help="external user id")
    p.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    p.add_argument("--history", type=_id_list, help="recent item ids, most recent last: 1,2,3")
    p.add_argument("--exclude", type=_id_list, help="item ids never to return: 4,5")
    p.add_argument("--exclude-seen", action="store_true", help="also exclude the history used")
    p.add_argument("--url", default=DEFAULT_URL, help=f"gRPC address (default {DEFAULT_URL})")
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
