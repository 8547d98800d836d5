"""`corral tasks` of a cluster, read from two sorted sets the task scripts keep (`live`,
`done`), never by scanning keys. Every score is 0 and task ids (UUIDv7) sort by time: a
page is a range by id, newest first; other filters are applied to the records, a batch at
a time. A member whose record has expired is dropped as it is met; a record that does not parse (a
Redis writer's) is passed over, never the listing's failure.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import methods as m
from ..supervisor.tasks import TERMINAL, TaskStatus
from ..supervisor.tasks.durable import Sees, unknown_cursor
from ..supervisor.tasks.taskmachine import UNFINISHED
from ..taskoptions import NO_FILTERS, TaskFilters, admits
from .connection import read, read_all
from .keys import Keys
from .records import options_in, when
from .trust import Trust

BATCH = 256  # ids read from each set, and records then read, per round trip
# a record's `created` is stamped just after its id is made: the range by id starts this
# much earlier, and `created` itself decides
ID_SLACK = 1.0
_FIELDS = ("agent", "status", "priority", "created", "started", "finished", "node", "tenant",
           "tenant_mac", "options")


def id_floor(t: float) -> str:
    """The smallest id made at `t` or later, as a prefix (a UUIDv7's first 48 bits are its
    time in milliseconds)."""
    h = f"{max(0, int(t * 1000)):012x}"
    return f"{h[:8]}-{h[8:12]}"


async def page(redis: Any, keys: Keys, trust: Trust, *, agent: str | None,
               status: str | None,
               since: float | None, limit: int, before: str | None,
               sees: Sees | None, filters: TaskFilters = NO_FILTERS
               ) -> tuple[list[m.TaskSummary], str | None]:
    """Up to `limit` tasks, newest last, and the cursor of the older ones (None: none
    left); `unknown_cursor` for a `before` that names no task `sees` admits."""
    if before is not None:
        owner, tenant, mac = await read(lambda: redis.hmget(
            keys.task(before), "agent", "tenant", "tenant_mac"))
        if owner is None or (sees is not None and not sees(
                owner.decode(), trust.tenant_of(before, owner, tenant, mac))):
            raise unknown_cursor(before)
    sets = [keys.live] if status in UNFINISHED else [keys.done] if status in TERMINAL \
        else keys.listed
    high = f"({before}" if before is not None else "+"
    low = f"[{id_floor(since - ID_SLACK)}" if since is not None else "-"
    found: list[m.TaskSummary] = []
    gone: list[bytes] = []
    while len(found) <= limit:
        ids, more = await _next_ids(redis, sets, high, low)
        if not ids:
            break
        for tid, rec in zip(ids, await _records(redis, keys, ids), strict=True):
            try:
                summary = _summary(tid, rec, trust)
            except ValueError:  # a Redis writer's garbage in it: not listed, kept
                continue
            if summary is None:
                gone.append(tid)
            elif ((agent is None or summary.agent == agent)
                  and (status is None or summary.status == status)
                  and (since is None or summary.created >= since)
                  and (sees is None or sees(summary.agent, summary.tenant))
                  and admits(filters, summary.options)):
                found.append(summary)
        high = f"({ids[-1].decode()}"
        if not more:
            break
    if gone:  # expired records: out of the listing for good
        await redis.zrem(keys.live, *gone)
        await redis.zrem(keys.done, *gone)
    if len(found) <= limit:
        return found[::-1], None
    kept = found[:limit]
    return kept[::-1], kept[-1].task_id


async def _next_ids(redis: Any, sets: list[str], high: str, low: str
                    ) -> tuple[list[bytes], bool]:
    """The next ids below `high`, newest first, from the sets merged, and whether more
    may follow. Read in one transaction, so a task that ends meanwhile (moving from one
    set to the other) is in exactly one of them."""
    def fill(pipe: Any) -> None:
        for key in sets:
            pipe.zrange(key, high, low, desc=True, bylex=True, offset=0, num=BATCH)

    got: list[list[bytes]] = await read_all(redis, fill, transaction=True)
    full = [ids[-1] for ids in got if len(ids) == BATCH]
    merged = sorted({i for ids in got for i in ids}, reverse=True)
    if not full:
        return merged, False
    # below the highest last id of a full batch, that set may hold ids not yet read
    floor = max(full)
    return [i for i in merged if i >= floor], True


async def _records(redis: Any, keys: Keys, ids: list[bytes]) -> list[list[Any]]:
    def fill(pipe: Any) -> None:
        for tid in ids:
            # (a member that is no UTF-8 names no record: dropped as one expired)
            t = tid.decode(errors="replace")
            pipe.hmget(keys.task(t), *_FIELDS)
            pipe.llen(keys.attempts(t))

    got = await read_all(redis, fill)
    return [[*got[i], got[i + 1]] for i in range(0, len(got), 2)]


def _summary(tid: bytes, rec: list[Any], trust: Trust) -> m.TaskSummary | None:
    agent, status, priority, created, started, finished, node, tenant, mac, options, \
        attempts = rec
    if agent is None or status is None:
        return None
    st = status.decode()
    return m.TaskSummary(
        task_id=tid.decode(), agent=agent.decode(), status=st, priority=int(priority),
        created=float(created), started=when(started), finished=when(finished),
        attempts=attempts,
        # the node running it, or that ran it last; none while it waits
        node=node.decode() if node and st != TaskStatus.QUEUED else msgspec.UNSET,
        tenant=trust.tenant_of(tid.decode(), agent, tenant, mac),
        options=options_in(options or None))
