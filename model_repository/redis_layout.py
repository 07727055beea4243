"""freshrec's Redis layout, defined once: every key name, the event stream's fields in order, the
intake script's KEYS and ARGV, and how its replies read.

The updater (updater.redis_log: the log, the intake and forget scripts), retrieve
(model_repository.live_history.redis_store: the history lists), apps (clients.RedisEventWriter)
and bench.peers all go through this module; none spells a key, a field or a position of its own.
It sits in model_repository so that clients/ may import it without importing updater/ (layers:
model_repository <- updater <- clients).

One deployment per key prefix. The per-user history keys are not declared to the scripts (one
key per user), so this needs a single Redis, not a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from model_repository.contract import DEFAULT_REDIS_PREFIX

# an event as the stream stores it: (stream field, Event attribute), in this order. The same order
# is that of an event's strings in the intake script's ARGV (`intake_args`).
STREAM_FIELDS = (("id", "event_id"), ("u", "user_id"), ("i", "item_id"), ("k", "kind"),
                 ("v", "value"), ("t", "timestamp"))
EVENT_FIELDS = tuple(attribute for _, attribute in STREAM_FIELDS)
STREAM_FIELD = dict((attribute, field) for field, attribute in STREAM_FIELDS)

# the intake script's KEYS, in order (RedisKeys attribute names), and its ARGV: these first, then
# len(EVENT_FIELDS) strings per event
INTAKE_KEYS = ("events", "offset", "event_ids", "last_at", "clock", "history_len", "items",
               "catalogue_grows")
INTAKE_ARGV_HEAD = ("now", "history_prefix")  # now: '' is Redis's clock

# why the intake refused an event: the gRPC status names the updater answers with
INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True)
class RedisKeys:
    """Every key freshrec keeps in Redis, under one prefix (one deployment per prefix): the log's,
    the live history's and the catalogue's."""

    prefix: str = DEFAULT_REDIS_PREFIX

    def __post_init__(self):
        if not self.prefix or any(ch.isspace() for ch in self.prefix):
            raise ValueError(f"redis prefix must be non-empty with no spaces, got {self.prefix!r}")

    @property
    def events(self) -> str:  # the log: a stream (STREAM_FIELDS), entry id 0-<offset>
        return f"{self.prefix}:events"

    @property
    def offset(self) -> str:  # the newest offset handed out (INCR)
        return f"{self.prefix}:offset"

    @property
    def event_ids(self) -> str:  # a set of event ids: a re-sent event is a duplicate
        return f"{self.prefix}:event_ids"

    @property
    def history_prefix(self) -> str:  # + user id: a list of item ids, most recent last
        return f"{self.prefix}:history:"

    def history(self, user_id: int) -> str:
        return f"{self.history_prefix}{int(user_id)}"

    @property
    def last_at(self) -> str:  # hash user id -> newest positive event time
        return f"{self.prefix}:last_at"

    @property
    def clock(self) -> str:  # the newest positive event time of all
        return f"{self.prefix}:clock"

    @property
    def pending_forgets(self) -> str:  # a set of user ids
        return f"{self.prefix}:pending_forgets"

    @property
    def intake_script(self) -> str:  # the intake's Lua source, for apps sending straight here
        return f"{self.prefix}:intake.lua"

    @property
    def history_len(self) -> str:  # how many items a user's list keeps
        return f"{self.prefix}:history_len"

    @property
    def items(self) -> str:  # a set of the item ids events may name: the serving catalogue
        return f"{self.prefix}:items"

    @property
    def catalogue_grows(self) -> str:  # "1": any item id is taken (the catalogue grows from it)
        return f"{self.prefix}:catalogue_grows"


def redis_client(url: str, **options):
    """A redis-py client for ``url`` (redis://host:port/db or unix:///path/to/socket)."""
    import redis

    return redis.Redis.from_url(url, **options)


def intake_keys(keys: RedisKeys) -> list[str]:
    """The intake script's KEYS for a deployment."""
    return [getattr(keys, name) for name in INTAKE_KEYS]


def _text(value) -> str:
    """A field as the script reads it: '' for missing, integers as digits, floats exactly (repr
    round-trips; nan and inf come out as Lua's tonumber reads them)."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def intake_args(keys: RedisKeys, rows: Iterable[Sequence], *, now: float | None = None) -> list[str]:
    """The script's ARGV for rows of EVENT_FIELDS; None marks a missing field (a missing
    timestamp is Redis's clock, or ``now`` when given)."""
    args = ["" if now is None else repr(float(now)), keys.history_prefix]
    for row in rows:
        args.extend(_text(v) for v in row)
    return args


@dataclass(frozen=True)
class IntakeOutcome:
    """One event's fate in the intake script: its offset (stored), a duplicate, or refused
    (``code``: INVALID_ARGUMENT or NOT_FOUND, ``field`` named)."""

    offset: int = 0
    duplicate: bool = False
    code: str = ""
    field: str = ""
    reason: str = ""


def parse_outcomes(replies: Sequence) -> list[IntakeOutcome]:
    """The script's reply, one entry per event: the offset (0: a duplicate), or a refusal as
    ``code <TAB> field <TAB> reason``."""
    out = []
    for reply in replies:
        if isinstance(reply, int):
            out.append(IntakeOutcome(offset=reply, duplicate=reply == 0))
        else:
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            code, field, reason = text.split("\t", 2)
            out.append(IntakeOutcome(code=code, field=field, reason=reason))
    return out


def event_fields(entry: dict) -> dict[str, str]:
    """A stream entry's fields (decoded), by Event attribute."""
    return {attribute: entry[field] for field, attribute in STREAM_FIELDS}
