"""The updater's gRPC face: Feedback.Send / SendStream (durable intake) and Admin.

Intake validates each event (INVALID_ARGUMENT naming the field), appends the valid ones to the
durable log in one transaction, and only then replies. A call whose every event is bad fails as
a whole with INVALID_ARGUMENT; otherwise the reply lists the rejected events and the rest are
taken. Admin calls run on the engine thread and wait for it.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc

from updater.engine import CommandError, Engine
from updater.events import EventError, validate
from updater.log import FeedbackLog
from updater.proto import freshrec_updater_pb2 as pb
from updater.proto import freshrec_updater_pb2_grpc as pb_grpc
from updater.publisher import PublishError
from updater.triton_control import TritonControl

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 300.0
MAX_EVENTS_PER_CALL = 100_000
SERVING_MODELS = ("recommend", "retrieve", "user_tower")


def _optional(message, name):
    return getattr(message, name) if message.HasField(name) else None


class FeedbackService(pb_grpc.FeedbackServicer):
    def __init__(self, feedback_log: FeedbackLog, engine: Engine):
        self.log = feedback_log
        self.engine = engine

    def _take(self, events, first_index: int, reply: pb.SendReply) -> None:
        valid = []
        for index, e in enumerate(events, start=first_index):
            try:
                valid.append(validate(e.event_id, _optional(e, "user_id"), _optional(e, "item_id"),
                                      e.kind, e.value, _optional(e, "timestamp")))
            except EventError as exc:
                reply.rejected.add(index=index, event_id=e.event_id, field=exc.field,
                                   reason=exc.reason)
        stored, duplicates = self.log.append(valid) if valid else ([], [])
        reply.accepted += len(stored)
        reply.duplicate_event_ids.extend(duplicates)
        if stored:
            reply.last_offset = stored[-1].offset
        self.engine.notify(len(stored))

    def _finish(self, reply: pb.SendReply, total: int, context) -> pb.SendReply:
        if total == 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "events: no events sent")
        if len(reply.rejected) == total:
            first = reply.rejected[0]
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"every event rejected; event {first.index}: {first.field}: {first.reason}")
        return reply

    def Send(self, request, context):  # noqa: N802 - gRPC method name
        if len(request.events) > MAX_EVENTS_PER_CALL:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"events: more than {MAX_EVENTS_PER_CALL} in one call")
        reply = pb.SendReply()
        self._take(request.events, 0, reply)
        return self._finish(reply, len(request.events), context)

    def SendStream(self, request_iterator, context):  # noqa: N802
        reply, total = pb.SendReply(), 0
        for request in request_iterator:
            self._take(request.events, total, reply)  # each batch durable on arrival
            total += len(request.events)
        return self._finish(reply, total, context)


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, engine: Engine, triton: TritonControl):
        self.engine = engine
        self.triton = triton

    def _wait(self, future, context):
        try:
            return future.result(timeout=ADMIN_TIMEOUT_S)
        except CommandError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except PublishError as exc:
            context.abort(grpc.StatusCode.INTERNAL, str(exc))

    def Status(self, request, context):  # noqa: N802
        snap = self.engine.snapshot()
        reply = pb.StatusReply(
            published_version=snap["published_version"],
            last_published_offset=snap["last_published_offset"],
            log_offset=snap["log_offset"], applied_offset=snap["applied_offset"],
            queue_depth=snap["queue_depth"], events_per_s=snap["events_per_s"],
            kept_versions=snap["kept_versions"], users=snap["users"], items=snap["items"])
        reply.serving_versions.update(self.triton.serving_versions(SERVING_MODELS))
        for f in snap["failed_versions"]:
            reply.failed_versions.add(version=f.version, reason=f.reason, moved_to=f.moved_to)
        for r in snap["recent_publishes"]:
            reply.recent_publishes.add(
                version=r.version, feedback_offset=r.feedback_offset, started_at=r.started_at,
                kind=r.kind, **{k: v for k, v in r.timings.items()
                                if k in ("write_s", "rename_s", "verify_s", "load_s", "probe_s")})
        return reply

    def Publish(self, request, context):  # noqa: N802
        published, version, offset = self._wait(self.engine.submit(self.engine.publish_now), context)
        return pb.PublishReply(published=published, version=version, feedback_offset=offset,
                               message="published" if published else "nothing new to publish")

    def Rollback(self, request, context):  # noqa: N802
        to = _optional(request, "to_version")
        version, offset = self._wait(self.engine.submit(self.engine.rollback, to), context)
        return pb.PublishReply(published=True, version=version, feedback_offset=offset,
                               message=f"rolled back: version {version} serves the tables of "
                                       f"{to if to is not None else 'the previous version'}")

    def ForgetUser(self, request, context):  # noqa: N802
        user_id = _optional(request, "user_id")
        if user_id is None or user_id < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id: is required and must be >= 0")
        version, deleted, removed = self._wait(self.engine.submit(self.engine.forget_user, user_id),
                                               context)
        return pb.ForgetUserReply(version=version, deleted_events=deleted, removed_versions=removed)


def grpc_server(address: str, feedback_log: FeedbackLog, engine: Engine, triton: TritonControl,
                *, workers: int = 8) -> tuple[grpc.Server, int]:
    """A started grpcio server on `address` (host:port; port 0 picks one). Returns (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="intake"))
    pb_grpc.add_FeedbackServicer_to_server(FeedbackService(feedback_log, engine), server)
    pb_grpc.add_AdminServicer_to_server(AdminService(engine, triton), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port
