"""A client for freshrec's updater sidecar: feedback events and admin calls over gRPC.

    with UpdaterClient("127.0.0.1:50051") as up:
        up.feedback(user_id=7, item_id=42, kind="click")
        up.status()["serving_versions"]["retrieve"]

Errors are grpc.RpcError; bad events come back as INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc

from clients.channel import channel as access_channel
from clients.closing import ClosedOnExit
from model_repository import contract as c
from updater.proto import freshrec_updater_pb2 as pb
from updater.proto import freshrec_updater_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
ADMIN_TIMEOUT_S = 300.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # updater.service.MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class FeedbackResult:
    accepted: int
    duplicate_event_ids: list[str]
    rejected: list[dict] = field(default_factory=list)  # {index, event_id, field, reason, code}
    last_offset: int = 0


def _event(event: Mapping) -> pb.Event:
    message = pb.Event(event_id=str(event.get("event_id") or uuid.uuid4().hex),
                       kind=str(event.get("kind", "")), value=float(event.get("value", 0.0)))
    for name in ("user_id", "item_id"):
        if event.get(name) is not None:
            setattr(message, name, int(event[name]))
    if event.get("timestamp") is not None:
        message.timestamp = float(event["timestamp"])
    return message


def _result(reply: pb.SendReply) -> FeedbackResult:
    return FeedbackResult(
        accepted=reply.accepted, duplicate_event_ids=list(reply.duplicate_event_ids),
        rejected=[{"index": r.index, "event_id": r.event_id, "field": r.field, "reason": r.reason,
                   "code": r.code} for r in reply.rejected],
        last_offset=reply.last_offset)


def _as_dict(message) -> dict:
    """A reply as plain Python (ints stay ints, unlike protobuf's JSON mapping of int64)."""
    out = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = dict(value)
        elif fd.is_repeated:
            out[fd.name] = [_as_dict(v) if fd.message_type is not None else v for v in value]
        elif fd.message_type is not None:  # absent (never set): None
            out[fd.name] = _as_dict(value) if message.HasField(fd.name) else None
        else:
            out[fd.name] = value
    return out


class FeedbackSession:
    """One Feedback.SendEach stream: ``send(events)`` returns once they are durable and in their
    users' live histories, as feedback_batch does, without a call's setup per batch (measured in
    bench.intake). Rejected events come back in the result; the session goes on. A context
    manager; `close` ends the stream."""

    _END = object()

    def __init__(self, stub: pb_grpc.FeedbackStub):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._replies = stub.SendEach(iter(self._requests.get, self._END))

    def send(self, events: Iterable[Mapping]) -> FeedbackResult:
        self._requests.put(pb.SendRequest(events=[_event(e) for e in events]))
        return _result(next(self._replies))

    def close(self) -> None:
        self._requests.put(self._END)
        if self._replies.done():  # ended already: its error came back from `send`
            return
        for _ in self._replies:  # the server ends the stream once it has read the end
            pass

    def __enter__(self) -> FeedbackSession:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._replies.cancel()


class UpdaterClient(ClosedOnExit):
    """`UpdaterClient(url)`: feedback, feedback_batch, feedback_stream, feedback_session, status,
    publish, rollback, forget_user, add_items. A context manager."""

    def __init__(self, url: str = c.DEFAULT_UPDATER_URL, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 token: str | None = None, tls_ca: str | None = None):
        """``token``: sent as a bearer token on every call (an updater with --token-file needs
        it for Admin); ``tls_ca``: a PEM file of the CA to trust, for an updater serving TLS."""
        self.url = url
        self.timeout_s = timeout_s
        self._channel = access_channel(
            url, token=token, tls_ca=tls_ca,
            options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self._feedback = pb_grpc.FeedbackStub(self._channel)
        self._admin = pb_grpc.AdminStub(self._channel)

    def feedback(self, user_id: int, item_id: int, kind: str = "click", *, value: float = 0.0,
                 event_id: str | None = None, timestamp: float | None = None) -> FeedbackResult:
        """Send one event; returns once it is durable. A missing event_id gets a random one, so
        retry with the same explicit event_id to stay idempotent."""
        return self.feedback_batch([{"event_id": event_id, "user_id": user_id, "item_id": item_id,
                                     "kind": kind, "value": value, "timestamp": timestamp}])

    def feedback_batch(self, events: Iterable[Mapping]) -> FeedbackResult:
        """Send events (dicts with event_id, user_id, item_id, kind, value, timestamp) in one call."""
        request = pb.SendRequest(events=[_event(e) for e in events])
        return _result(self._feedback.Send(request, timeout=self.timeout_s))

    def feedback_stream(self, batches: Iterable[Iterable[Mapping]]) -> FeedbackResult:
        """Client-streaming: each batch is committed as it arrives; one reply for the stream."""
        requests = (pb.SendRequest(events=[_event(e) for e in batch]) for batch in batches)
        return _result(self._feedback.SendStream(requests, timeout=self.timeout_s))

    def feedback_session(self) -> FeedbackSession:
        """A SendEach stream for many sends in a row (an app's event pipeline, a replay)."""
        return FeedbackSession(self._feedback)

    def status(self) -> dict:
        return _as_dict(self._admin.Status(pb.StatusRequest(), timeout=self.timeout_s))

    def publish(self) -> dict:
        return _as_dict(self._admin.Publish(pb.PublishRequest(), timeout=ADMIN_TIMEOUT_S))

    def rollback(self, to: int | None = None) -> dict:
        request = pb.RollbackRequest() if to is None else pb.RollbackRequest(to_version=to)
        return _as_dict(self._admin.Rollback(request, timeout=ADMIN_TIMEOUT_S))

    def push(self, repository, *, force: bool = False, canary: float = 0.0,
             auto: bool = False) -> dict:
        """Serve a retrained base: `repository` is a build's (DIR/repository) as the updater's
        host sees it. Returns once Triton serves it: {version, feedback_offset, replayed,
        judged, push_s}. Refused (FAILED_PRECONDITION) when its build scored below the serving
        base's, unless ``force``. ``canary`` in (0, 1): to that share of users only (``auto``:
        promoted or rolled back by the updater's decision rule)."""
        request = pb.PushRequest(path=str(repository), force=force, canary_share=canary,
                                 auto=auto)
        return _as_dict(self._admin.Push(request, timeout=ADMIN_TIMEOUT_S))

    def end_canary(self, *, promote: bool) -> dict:
        """Promote the running canary or roll it back; returns once every user is served from
        the result: {published, version, feedback_offset, message}."""
        return _as_dict(self._admin.EndCanary(pb.EndCanaryRequest(promote=promote),
                                              timeout=ADMIN_TIMEOUT_S))

    def forget_user(self, user_id: int) -> dict:
        return _as_dict(self._admin.ForgetUser(pb.ForgetUserRequest(user_id=user_id),
                                               timeout=ADMIN_TIMEOUT_S))

    def add_items(self, items: Iterable[Mapping]) -> dict:
        """Add catalogue items from their titles (dicts with item_id, title, optional category);
        returns once Triton serves the version holding them: {version, item_ids, encode_s,
        publish_s}. All or nothing: one bad item and none is added."""
        request = pb.AddItemsRequest()
        for item in items:
            title = item.get("title", b"")
            message = request.items.add(
                title=title if isinstance(title, bytes) else str(title).encode(),
                category=str(item.get("category") or ""))
            if item.get("item_id") is not None:
                message.item_id = int(item["item_id"])
        return _as_dict(self._admin.AddItems(request, timeout=ADMIN_TIMEOUT_S))

    def wait_ready(self, *, timeout_s: float = 120.0, process=None) -> dict:
        """Poll Status until the updater answers; `process` (a Popen) fails fast if it died."""
        deadline = time.monotonic() + timeout_s
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"updater exited with code {process.returncode}")
            try:
                return self.status()
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self._channel.close()
