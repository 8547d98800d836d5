"""What the cluster's Redis is configured to do against what docs/cluster.md asks of it:
AOF on, `appendfsync` everysec or always, `maxmemory-policy noeviction`, and the replicas
`ack_replicas` counts on. A Redis that loses or evicts writes loses acknowledged tasks,
outcomes or a node's liveness without a word; a node says so when it joins and whenever
the answer changes (read again every CHECK_BEATS beats: an operator may change them
live)."""

from __future__ import annotations

from typing import Any

CHECK_BEATS = 30
FSYNC_OK = ("everysec", "always")


def judged(config: dict[str, str]) -> list[str]:
    """The warnings for what CONFIG GET answered (an empty list: as the docs ask)."""
    out = []
    if config.get("appendonly", "yes") != "yes":
        out.append("Redis runs without AOF (appendonly no): a Redis restart loses every "
                   "task and outcome written since its last snapshot; set appendonly yes")
    elif config.get("appendfsync", "everysec") not in FSYNC_OK:
        out.append(f"Redis's appendfsync is {config['appendfsync']}: a crash of its host "
                   "may lose acknowledged tasks; set everysec or always")
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        out.append(f"Redis's maxmemory-policy is {policy}: when full it evicts keys (a "
                   "task, an outcome, a node's liveness) without a word; set noeviction")
    return out


def replicas_short(connected: int, wanted: int) -> str | None:
    """The warning when the primary has fewer replicas than [cluster] ack_replicas asks
    to confirm each acknowledged write (replicas.py), or None."""
    if connected >= wanted:
        return None
    return (f"Redis's primary has {connected} replicas connected, and ack_replicas asks "
            f"for {wanted}: no task, outcome or step is acknowledged until "
            f"{'one is' if wanted - connected == 1 else 'they are'} back (submissions "
            "are refused, outcomes wait)")


async def warnings(redis: Any, wanted: int) -> list[str]:
    """The warnings for the Redis `redis` talks to, whose writes `wanted` replicas are
    to confirm; one saying so when it refuses CONFIG (an ACL user without it, a renamed
    command)."""
    from redis.exceptions import ResponseError

    try:
        got = await redis.config_get("appendonly", "appendfsync", "maxmemory-policy")
    except ResponseError as exc:
        out = [f"cannot read Redis's configuration ({exc}): check by hand that it runs "
               "with appendonly yes, appendfsync everysec and maxmemory-policy noeviction"]
    else:
        out = judged({_text(k): _text(v) for k, v in got.items()})
    if wanted:
        try:
            info = await redis.info("replication")
        except ResponseError as exc:
            out.append(f"cannot read Redis's replicas ({exc}): check by hand that its "
                       f"primary has the {wanted} ack_replicas asks for")
        else:
            short = replicas_short(int(info.get("connected_slaves", 0)), wanted)
            out += [short] if short is not None else []
    return out


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
