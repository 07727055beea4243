"""The updater's gRPC face: Feedback.Send / SendStream / SendEach (durable intake) and Admin.

Intake validates each event (INVALID_ARGUMENT naming the field), refuses one naming an item the
serving catalogue does not know (NOT_FOUND naming item_id; updater.admission), appends the rest
to the durable log (which writes their users' live histories too) in one transaction, and only
then replies. A call whose every event is refused fails as a whole, with the first refusal's
code; otherwise the reply lists the rejected events, each with its code, and the rest are taken.
A SendEach session replies to each request so (its rejected events listed, the stream going on);
each open session holds a worker thread, so at most ``max_sessions`` are open. Admin calls run
on the engine thread and wait for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from model_repository import contract as c
from model_repository.redis_layout import INVALID_ARGUMENT, NOT_FOUND
from model_repository.serving import RequestError, decode_text
from updater.access import TokenInterceptor
from updater.admission import not_found_reason
from updater.engine import CommandError, Engine
from updater.events import EventError, validate
from updater.feedback_log import EventLog
from updater.proto import freshrec_updater_pb2 as pb
from updater.proto import freshrec_updater_pb2_grpc as pb_grpc
from updater.publisher import PublishError
from updater.supervision import read_supervisor_state
from updater.triton_control import TextRefused, TritonControl, TritonError

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 300.0
MAX_EVENTS_PER_CALL = 100_000
MAX_ITEMS_PER_CALL = 10_000
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # 10,000 titles of 2,000 characters fit
ENCODE_LOG_EVERY = 20  # batches
SERVING_MODELS = ("recommend", "retrieve", "user_tower")


def _optional(message, name):
    return getattr(message, name) if message.HasField(name) else None


class FeedbackService(pb_grpc.FeedbackServicer):
    def __init__(self, feedback_log: EventLog, engine: Engine, *, max_sessions: int = 4):
        """``max_sessions``: SendEach streams open at once (each holds a gRPC worker thread)."""
        self.log = feedback_log
        self.engine = engine
        self._sessions = threading.BoundedSemaphore(max_sessions)
        self.max_sessions = max_sessions

    def _take(self, events, first_index: int, reply: pb.SendReply) -> None:
        valid, indexes, rejected = [], [], []
        metrics = self.engine.metrics
        for index, e in enumerate(events, start=first_index):
            try:
                valid.append(validate(e.event_id, _optional(e, "user_id"), _optional(e, "item_id"),
                                      e.kind, e.value, _optional(e, "timestamp")))
                indexes.append(index)
            except EventError as exc:
                rejected.append(pb.Rejected(index=index, event_id=e.event_id, field=exc.field,
                                            reason=exc.reason, code=INVALID_ARGUMENT))
                metrics.event(e.kind, "rejected", exc.field)
        unknown = self.engine.catalogue.unknown([e.item_id for e in valid])
        for e, bad in zip(valid, unknown):
            if bad:
                metrics.event(e.kind, "rejected", "item_id")
        rejected.extend(pb.Rejected(index=index, event_id=e.event_id, field="item_id",
                                    reason=not_found_reason(e.item_id), code=NOT_FOUND)
                        for index, e, bad in zip(indexes, valid, unknown) if bad)
        reply.rejected.extend(sorted(rejected, key=lambda r: r.index))
        valid = [e for e, bad in zip(valid, unknown) if not bad]
        stored, duplicates = self.log.append(valid) if valid else ([], [])
        for kind, n in Counter(e.kind for e in stored).items():  # one increment a kind
            metrics.event(kind, "accepted", n=n)
        if duplicates:
            kinds = {e.event_id: e.kind for e in valid}
            for kind, n in Counter(kinds.get(i, "") for i in duplicates).items():
                metrics.event(kind, "duplicate", n=n)
        reply.accepted += len(stored)
        reply.duplicate_event_ids.extend(duplicates)
        if stored:
            reply.last_offset = stored[-1].offset
        self.engine.notify(len(stored), stored[-1].offset if stored else 0)

    def _finish(self, reply: pb.SendReply, total: int, context) -> pb.SendReply:
        if total == 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "events: no events sent")
        if len(reply.rejected) == total:
            first = reply.rejected[0]
            context.abort(getattr(grpc.StatusCode, first.code),
                          f"every event rejected; event {first.index}: {first.field}: {first.reason}")
        return reply

    def _check_size(self, request, context) -> None:
        if len(request.events) > MAX_EVENTS_PER_CALL:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"events: more than {MAX_EVENTS_PER_CALL} in one call")

    def Send(self, request, context):  # noqa: N802 - gRPC method name
        self._check_size(request, context)
        reply = pb.SendReply()
        self._take(request.events, 0, reply)
        return self._finish(reply, len(request.events), context)

    def SendStream(self, request_iterator, context):  # noqa: N802
        reply, total = pb.SendReply(), 0
        for request in request_iterator:
            self._take(request.events, total, reply)  # each batch durable on arrival
            total += len(request.events)
        return self._finish(reply, total, context)

    def SendEach(self, request_iterator, context):  # noqa: N802
        if not self._sessions.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.max_sessions} SendEach sessions are open already; use Send")
        try:
            for request in request_iterator:
                self._check_size(request, context)
                if not request.events:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "events: no events sent")
                reply = pb.SendReply()
                self._take(request.events, 0, reply)
                yield reply
        finally:
            self._sessions.release()


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, engine: Engine, triton: TritonControl, *, state_dir: Path | None = None,
                 metrics_urls: dict[str, str] | None = None):
        self.engine = engine
        self.triton = triton
        self.state_dir = state_dir
        self.metrics_urls = dict(metrics_urls or {})

    def _wait(self, call: str, future, context):
        """The engine's answer to an Admin call, counted by call and outcome (updater.metrics)."""
        outcome = "ok"
        try:
            return future.result(timeout=ADMIN_TIMEOUT_S)
        except CommandError as exc:
            outcome = exc.code
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except PublishError as exc:
            outcome = "INTERNAL"
            context.abort(grpc.StatusCode.INTERNAL, str(exc))
        except BaseException:
            outcome = "failed"
            raise
        finally:
            self.engine.metrics.admin_call(call, outcome)

    def Status(self, request, context):  # noqa: N802
        snap = self.engine.snapshot()
        reply = pb.StatusReply(
            published_version=snap["published_version"],
            last_published_offset=snap["last_published_offset"],
            log_offset=snap["log_offset"], applied_offset=snap["applied_offset"],
            queue_depth=snap["queue_depth"], events_per_s=snap["events_per_s"],
            kept_versions=snap["kept_versions"], users=snap["users"], items=snap["items"],
            training_cpu_s=snap["training_cpu_s"], publishing_cpu_s=snap["publishing_cpu_s"],
            quality_cpu_s=snap["quality_cpu_s"],
            **{name: snap[name] for name in ("catalogue_items", "catalogue_grows",
                                             "new_users_last_min", "max_new_users_per_min",
                                             "deferred_new_user_events")})
        loaded = self.triton.serving_versions(SERVING_MODELS)
        reply.loaded_versions.update(loaded)
        reply.serving_versions.update(loaded)
        try:  # the running retrieve switches to data-only versions itself: ask it
            reply.serving_versions[c.RETRIEVE] = self.triton.answering_version(self.engine.probe_user())
        except TritonError:
            reply.serving_versions[c.RETRIEVE] = -1
        if self.state_dir is not None:
            reply.triton_restarts = int(read_supervisor_state(self.state_dir)["triton_restarts"])
        if snap["new_user_rows"] is not None:
            reply.new_user_rows.CopyFrom(pb.NewUserRows(**snap["new_user_rows"]))
        if snap["canary"] is not None:
            canary = dict(snap["canary"])
            arms = {arm: pb.CanaryArm(**canary.pop(arm))
                    for arm in ("control", "canary", "control_asked", "canary_asked")}
            reply.canary.CopyFrom(pb.CanaryStatus(**canary, **arms))
        reply.exposure.CopyFrom(pb.Exposure(**snap["exposure"]))
        reply.metrics_urls.update(self.metrics_urls)
        running, superseded = snap["quality"]
        reply.serving_quality.CopyFrom(_quality_message(running))
        reply.recent_quality.extend(_quality_message(r) for r in superseded)
        for f in snap["failed_versions"]:
            reply.failed_versions.add(version=f.version, reason=f.reason, moved_to=f.moved_to)
        for r in snap["recent_publishes"]:
            reply.recent_publishes.add(
                version=r.version, feedback_offset=r.feedback_offset, started_at=r.started_at,
                kind=r.kind, **{k: v for k, v in r.timings.items()
                                if k in ("write_s", "rename_s", "verify_s", "load_s", "probe_s", "swap_s")})
        return reply

    def Publish(self, request, context):  # noqa: N802
        published, version, offset = self._wait("publish", self.engine.submit(self.engine.publish_now),
                                                context)
        return pb.PublishReply(published=published, version=version, feedback_offset=offset,
                               message="published" if published else "nothing new to publish")

    def Rollback(self, request, context):  # noqa: N802
        to = _optional(request, "to_version")
        version, offset = self._wait("rollback", self.engine.submit(self.engine.rollback, to),
                                     context)
        return pb.PublishReply(published=True, version=version, feedback_offset=offset,
                               message=f"rolled back: version {version} serves the tables of "
                                       f"{to if to is not None else 'the previous version'}")

    def Push(self, request, context):  # noqa: N802
        if not request.path:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "path: is required")
        path = Path(request.path)
        if not path.is_absolute():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"path: must be absolute (the updater's own view), got {request.path!r}")
        share = request.canary_share  # its range is the engine's to check
        if request.auto and not share:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "auto: needs a canary_share")
        done = self._wait("push", self.engine.submit(self.engine.push, path, request.force, share,
                                             request.auto), context)
        return pb.PushReply(version=done.version, feedback_offset=done.feedback_offset,
                            replayed=done.replayed, judged=done.judged, push_s=done.push_s)

    def EndCanary(self, request, context):  # noqa: N802
        version, message = self._wait("end_canary",
                                      self.engine.submit(self.engine.end_canary, request.promote),
                                      context)
        return pb.PublishReply(published=True, version=version,
                               feedback_offset=self.engine.published_offset, message=message)

    def ForgetUser(self, request, context):  # noqa: N802
        user_id = _optional(request, "user_id")
        if user_id is None or user_id < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id: is required and must be >= 0")
        version, deleted, removed = self._wait("forget_user",
                                               self.engine.submit(self.engine.forget_user, user_id),
                                               context)
        return pb.ForgetUserReply(version=version, deleted_events=deleted, removed_versions=removed)


    def AddItems(self, request, context):  # noqa: N802
        item_ids, titles = self._new_items(request, context)
        engine = self.engine
        try:  # both checked again on the engine thread; here they save the encoding
            engine.check_new_items(item_ids)
            engine.text_projection()
        except CommandError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        started = time.perf_counter()
        text_emb = self._encode(titles, context)
        encode_s = time.perf_counter() - started
        version, publish_s = self._wait("add_items",
            engine.submit(engine.add_items, np.asarray(item_ids, np.int64), text_emb), context)
        log.info("added %d items (encoded in %.2f s); retrieve %s serves them", len(item_ids),
                 encode_s, version)
        return pb.AddItemsReply(version=version, item_ids=item_ids, encode_s=encode_s,
                                publish_s=publish_s)

    @staticmethod
    def _new_items(request, context) -> tuple[list[int], list[str]]:
        """(ids, decoded titles), or INVALID_ARGUMENT naming items[i].field: all or nothing."""
        if not request.items:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "items: no items sent")
        if len(request.items) > MAX_ITEMS_PER_CALL:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"items: {len(request.items)} in one call, the limit is {MAX_ITEMS_PER_CALL}")
        item_ids, titles, first = [], [], {}
        for i, item in enumerate(request.items):
            field = f"items[{i}]"
            item_id = _optional(item, "item_id")
            if item_id is None or item_id < 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}.item_id: is required and "
                                                                "must be >= 0")
            if item_id in first:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}.item_id: {item_id} repeats "
                                                                f"items[{first[item_id]}]")
            first[item_id] = i
            try:
                title = decode_text(item.title, f"{field}.title")
            except RequestError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if len(item.category) > c.MAX_CATEGORY_CHARS:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{field}.category: {len(item.category)} characters, the limit is "
                              f"{c.MAX_CATEGORY_CHARS}")
            item_ids.append(int(item_id))
            titles.append(title)
        return item_ids, titles

    def _encode(self, titles: list[str], context) -> np.ndarray:
        """(N, TEXT_DIM) from the served text_encoder, in batches; a refused title is
        INVALID_ARGUMENT naming its index."""
        batches = range(0, len(titles), c.MAX_BATCH_SIZE)
        out = []
        for n, start in enumerate(batches):
            batch = titles[start:start + c.MAX_BATCH_SIZE]
            try:
                out.append(self.triton.encode(batch))
            except TextRefused:
                for i, title in enumerate(batch, start=start):  # which one: ask one at a time
                    try:
                        self.triton.encode([title])
                    except TextRefused as exc:
                        reason = str(exc).removeprefix(f"{c.TEXT} ")
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"items[{i}].title {reason}")
                raise
            except TritonError as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"encoding the titles failed: {exc}")
            if (n + 1) % ENCODE_LOG_EVERY == 0:
                log.info("encoded %d of %d titles", start + len(batch), len(titles))
        return np.concatenate(out)


def _quality_message(record) -> pb.QualityRecord:
    """An updater.quality.QualityRecord as Status shows it (no parent, no parent record: 0)."""
    raw = record.to_dict()
    return pb.QualityRecord(**{**raw, "parent": raw["parent"] or 0,
                               "parent_hit_rate": raw["parent_hit_rate"] or 0.0})


def grpc_server(address: str, feedback_log: EventLog, engine: Engine, triton: TritonControl,
                *, workers: int = 8, state_dir: Path | None = None,
                metrics_urls: dict[str, str] | None = None, health=None,
                token: str | None = None, feedback_needs_token: bool = False,
                credentials=None) -> tuple[grpc.Server, int]:
    """A started grpcio server on `address` (host:port; port 0 picks one). Returns (server, port).
    ``state_dir``: where the supervisor's state file is read from (updater.supervision);
    ``health``: an updater.health.UpdaterHealth to serve beside them; ``token``: Admin (and
    with ``feedback_needs_token`` Feedback) answers only calls that carry it; ``credentials``:
    grpc server credentials for TLS (updater.access)."""
    interceptors = [TokenInterceptor(token, feedback=feedback_needs_token)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="intake"),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
                         interceptors=interceptors)
    pb_grpc.add_FeedbackServicer_to_server(
        FeedbackService(feedback_log, engine, max_sessions=max(1, workers // 2)), server)
    pb_grpc.add_AdminServicer_to_server(AdminService(engine, triton, state_dir=state_dir,
                                                     metrics_urls=metrics_urls), server)
    if health is not None:
        health.add_to(server)
    port = (server.add_secure_port(address, credentials) if credentials is not None
            else server.add_insecure_port(address))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port
