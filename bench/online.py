"""freshrec online in a replay: a fresh updater beside a running stack, each event sent as feedback
right after its question (bench.replay.OnlineRecommender), a publish per window or none, and
what it cost in CPU: the updater's process, its engine thread's learning, and with
`--intake redis` the redis-server's, less what it ran while the app asked."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from bench.replay import REPLAY_UPDATER_ARGS, OnlineRecommender, ReplayResult, replay
from exporter.data import Interactions


def online_replay(stack, train: Interactions, test: Interactions, *, window_events: int,
                  scored: list[int], updater_args: Sequence[str] = (), publish: bool = True,
                  shown_skips: int = 0, intake: str = "grpc", redis_fsync: str = "always",
                  scratch: Path, after_learn=None) -> tuple[ReplayResult, int]:
    """freshrec online over ``stack`` (a running serving_stack): a fresh updater (no publish of
    its own), each event sent right after its question, a publish per window when ``publish``.
    Returns (the result with its CPU seconds, the publishes made)."""
    from freshrec.processes import RedisServer

    redis_server = (RedisServer(log_path=scratch / "redis.log", appendfsync=redis_fsync)
                    if intake == "redis" else nullcontext())
    with redis_server as redis:
        redis_args = ("--redis", redis.url) if redis is not None else ()
        updater = stack.start_updater(args=REPLAY_UPDATER_ARGS + redis_args + tuple(updater_args))
        online = OnlineRecommender(stack.grpc_url, updater.url, shown_skips=shown_skips,
                                   redis_url=redis.url if redis is not None else None,
                                   ask_meter=redis.run_time_s if redis is not None else None,
                                   publish=publish, after_learn=after_learn)
        try:
            cpu_started, learned = updater.cpu_s(), learning_cpu_s(online.updater.status())
            redis_started = redis.run_time_s() if redis is not None else 0.0
            result = replay(train, test, online, window_events=window_events,
                            scored_windows=scored)
            result.cpu_s = updater.cpu_s() - cpu_started
            result.learn_cpu_s = learning_cpu_s(online.updater.status()) - learned
            if redis is not None:
                result.redis_cpu_s = redis.run_time_s() - redis_started
                # the app asks and sends in turn, so what redis ran while it asked is retrieve's
                # reads (serving), but for the updater's polls then: added back
                result.redis_ask_cpu_s = max(0.0, online.ask_cpu_s - updater_read_s(redis.url))
        finally:
            online.close()
            stack.stop_updaters()
    return result, online.publishes


def learning_cpu_s(status: dict) -> float:
    """The updater's engine thread so far: row training and publishes (Admin.Status)."""
    return status["training_cpu_s"] + status["publishing_cpu_s"]


# the updater's own reads of the log (the engine's stream reads and its offset polls); any of
# them made while the app asked is added back to the update cost
UPDATER_READ_COMMANDS = ("xrange", "get")


def updater_read_s(redis_url: str) -> float:
    """Print the redis-server's busiest commands over the replay (INFO commandstats) and return
    the seconds it spent inside the updater's read commands (time inside each command, measured
    by Redis; the intake script's own GETs are in it too, so it overstates)."""
    from model_repository.redis_layout import redis_client

    with redis_client(redis_url) as r:
        stats = r.info("commandstats")
        totals = r.info("stats")
    busiest = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:8]
    print("redis-server over the online replay: " + ", ".join(
        f"{name.removeprefix('cmdstat_')} {v['calls']} calls {v['usec'] / 1e6:.2f} s" for name, v in busiest)
        + f"; {totals.get('total_connections_received')} connections, "
          f"{totals.get('total_commands_processed')} commands")
    return sum(stats.get(f"cmdstat_{name}", {}).get("usec", 0) for name in UPDATER_READ_COMMANDS) / 1e6
