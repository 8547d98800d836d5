"""`corral tasks` of a cluster (cluster/listing.py) against a real redis-server, with
records written by the task scripts themselves: pages by id across the live and finished
sets (past a batch of ids), the filters, the cursor, and members whose records expired."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from corral.cluster import listing, records
from corral.cluster.keys import Keys
from corral.cluster.scripts import Scripts
from corral.cluster.trust import Trust
from corral.jsonrpc import RpcError
from corral.supervisor.tasks.ids import IdClock

from .claimscript import claim_script

K = Keys("t")
T0 = 1_750_000_000.0  # the first task's time; each next one a millisecond later


async def submit_many(s: Scripts, agents: list[str]) -> list[str]:
    """A task per agent named, each a millisecond after the one before (ids and records
    as a node makes them)."""
    clock = IdClock()
    ids = [clock.make(int((T0 + i / 1000) * 1e9)) for i in range(len(agents))]
    got = await s.run([(s.submit, [K.task(t), K.stream("acme", a, 0),
                                   K.priorities("acme", a), K.agents,
                                   K.live],
                        [t, a, b"null", 0, "", "", repr(T0 + i / 1000), "n", 0, "0", "",
                         "", "", "", "acme", "mac"])
                       for i, (t, a) in enumerate(zip(ids, agents, strict=True))])
    assert got == [1] * len(ids)
    return ids


async def finish(s: Scripts, c: Any, tid: str, agent: str, status: str) -> None:
    entry = await c.hget(K.task(tid), "entry")
    got = await claim_script(s)(
        keys=[K.task(tid), K.attempts(tid), K.fence, K.stream("acme", agent, 0)],
        args=["n/1", "n", "2.0", entry, records.claimed_attempt("n", 2.0), 0, "30.0", "acme"])
    if status == "running":
        return
    assert await s.finish(
        keys=[K.task(tid), K.attempts(tid), K.stream("acme", agent, 0), K.outcomes, *K.listed],
        args=[got[0], tid, status, b"1", b"", "3.0", entry, 0, 60, 0, "0", "mac",
              b'{"replica":0,"pid":1,"started":2.0,"node":"n","outcome":"%s"}'
              % status.encode()]) == 1


NO_KEY = Trust(None, "test", print)  # records as they are (a cluster without key_file)


async def page(c: Any, **kw: Any) -> tuple[list[str], str | None]:
    args: dict[str, Any] = {"agent": None, "status": None, "since": None, "limit": 100,
                            "before": None, "sees": None, **kw}
    got, nxt = await listing.page(c, K, NO_KEY, **args)
    return [t.task_id for t in got], nxt


async def test_pages_run_newest_last_across_both_sets_and_past_a_batch(client: Any) -> None:
    s = Scripts(client)
    n = listing.BATCH * 2 + 10
    ids = await submit_many(s, ["w"] * n)
    # every third one finished: the two sets interleave by id
    for tid in ids[::3]:
        await finish(s, client, tid, "w", "succeeded")
    assert await client.zcard(K.done) == len(ids[::3])
    got, nxt = await page(client, limit=n)
    assert (got, nxt) == (ids, None)
    # a page at a time, from the newest, each `next` the `before` of the one after
    pages, before = [], None
    while True:
        got, before = await page(client, limit=200, before=before)
        pages.append(got)
        if before is None:
            break
    assert [len(p) for p in pages] == [200, 200, n - 400]
    assert [t for p in reversed(pages) for t in p] == ids


async def test_filters_hold_on_every_page(client: Any) -> None:
    s = Scripts(client)
    agents = ["a", "b"] * 300
    ids = await submit_many(s, agents)
    for tid, agent in list(zip(ids, agents, strict=True))[:40]:
        await finish(s, client, tid, agent, "failed" if agent == "a" else "running")
    of_a = [t for t, a in zip(ids, agents, strict=True) if a == "a"]
    got, nxt = await page(client, agent="a", limit=250)
    assert (got, nxt) == (of_a[-250:], of_a[-250])
    got, nxt = await page(client, agent="a", limit=250, before=nxt)
    assert (got, nxt) == (of_a[:-250], None)
    assert (await page(client, status="failed")) == (of_a[:20], None)
    assert (await page(client, status="running"))[0] == [
        t for t, a in zip(ids[:40], agents[:40], strict=True) if a == "b"]
    assert (await page(client, status="queued", limit=1000))[0] == ids[40:]
    assert (await page(client, agent="nobody")) == ([], None)
    # a caller that sees only agent b: a's tasks are absent, its cursor too

    def sees(agent: str, tenant: str | None) -> bool:
        return agent == "b"

    got, _ = await page(client, sees=sees, limit=1000)
    assert got == [t for t, a in zip(ids, agents, strict=True) if a == "b"]
    with pytest.raises(RpcError) as err:
        await page(client, sees=sees, before=of_a[5])
    assert err.value.message == (f"no such task: {of_a[5]} (the cursor `before` names no "
                                 "task kept: pruned, or never accepted; list again from "
                                 "the newest)")
    # since: created at or after a time (the ids' milliseconds bound the range read)
    got, _ = await page(client, since=T0 + 0.5985, limit=1000)
    assert got == ids[-1:]
    got, _ = await page(client, since=T0 + 0.590, limit=1000)
    assert got == ids[590:]


async def test_the_running_node_shows_and_expired_records_leave(client: Any) -> None:
    s = Scripts(client)
    ids = await submit_many(s, ["w"] * 3)
    await finish(s, client, ids[0], "w", "succeeded")
    await finish(s, client, ids[1], "w", "running")
    got, _ = await listing.page(client, K, NO_KEY, agent=None, status=None, since=None, limit=10,
                                before=None, sees=None)
    assert [(t.status, t.node, t.attempts) for t in got] == [
        ("succeeded", "n", 1), ("running", "n", 1), ("queued", msgspec.UNSET, 0)]
    await client.delete(K.task(ids[0]))  # its 7 days are over
    assert (await page(client)) == (ids[1:], None)
    assert await client.zrange(K.done, 0, -1) == []  # dropped as it was met
    with pytest.raises(RpcError) as err:
        await page(client, before=ids[0])
    assert err.value.message.startswith(f"no such task: {ids[0]} (the cursor")
