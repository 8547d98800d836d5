"""What the cluster's Redis is configured to do against what docs/cluster.md asks of it:
AOF on, `appendfsync` everysec or always, `maxmemory-policy noeviction`. A Redis that
loses or evicts writes loses acknowledged tasks, outcomes or a node's liveness without a
word; a node says so when it joins and whenever the answer changes (CONFIG is read again
every CHECK_BEATS beats: an operator may change it live)."""

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


async def warnings(redis: Any) -> list[str]:
    """The warnings for the Redis `redis` talks to; one saying so when it refuses CONFIG
    (an ACL user without it, a renamed command: then the operator checks by hand).
    RedisError otherwise (Redis away: nothing is known)."""
    from redis.exceptions import ResponseError

    try:
        got = await redis.config_get("appendonly", "appendfsync", "maxmemory-policy")
    except ResponseError as exc:
        return [f"cannot read Redis's configuration ({exc}): check by hand that it runs "
                "with appendonly yes, appendfsync everysec and maxmemory-policy noeviction"]
    return judged({_text(k): _text(v) for k, v in got.items()})


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
