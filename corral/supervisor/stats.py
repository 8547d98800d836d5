"""What the supervisor counts: its own figures (Stats, corral.statsresults': `stats.get`
answers them) and its heartbeat loop's work."""

from __future__ import annotations

import msgspec

from ..statsresults import Stats as Stats


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
