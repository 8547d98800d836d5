"""What the supervisor counts: its own figures (Stats) and its heartbeat loop's work."""

from __future__ import annotations

import msgspec


class HeartbeatWork(msgspec.Struct):
    """What the heartbeat loop did, in total since start: its cost per tick is
    busy_seconds / rounds, its longest single turn of the loop longest_slice."""

    rounds: int = 0
    slices: int = 0
    visits: int = 0
    samples: int = 0
    pings: int = 0  # sent: only to workers silent for half their heartbeat_timeout
    # pings not sent: the worker was found parked on its stdin (process_replica._parked)
    parked: int = 0
    most_visits: int = 0  # in one turn of the loop (bounded by HEARTBEAT_SLICE)
    busy_seconds: float = 0.0
    longest_slice: float = 0.0
    replicas: int = 0  # in the last round
    slices_per_round: int = 0
    sample_every_rounds: int = 1
    # seconds between looks at a quiet worker found parked, where the fleet is large
    # enough that the heartbeat's budget bounds them (below timeout/2: every timeout/2)
    look_every: float = 0.0


class Stats(msgspec.Struct):
    spawned: int = 0
    restarts: int = 0
    # restarts by what ended the life restarted (lifecycle.Cause: crash, hang, cap, ...)
    restarts_by_cause: dict[str, int] = {}
    failures: int = 0  # entered Failed
    spawn_failures: int = 0
    cold_fallbacks: int = 0  # warm starts asked for and not possible (reason in the log)
    exits: int = 0
    # processes still not reaped KILL_GRACE after SIGKILL (uninterruptible sleep): stop()
    # returned without them
    stuck_after_kill: int = 0
    active: int = 0  # live processes now
    loop_stalls: int = 0  # heartbeat ticks at least a second late (see listening.py)
    longest_stall: float = 0.0
    subscriber_failures: int = 0  # event stream deliveries that raised (stream.py)
