"""The Lua scripts against a real redis-server, each rule alone: the submit is idempotent
on the task id and bounded by max_queue; a claim issues increasing fence tokens and takes
only a queued task by its current entry; outcome and progress are refused without the
current token; a takeover acts only on a consumer whose liveness key is gone."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from corral.cluster import records
from corral.cluster.keys import Keys
from corral.cluster.reaper import take_over
from corral.cluster.scripts import RedisPart, Scripts, cancel
from corral.cluster.trust import Trust

from .claimscript import claim_script

K = Keys("t")
TID = "0190a5c0-0000-7000-8000-00000000000{}"
ATTEMPT = b'{"replica":0,"pid":1,"started":2.0,"node":"n","outcome":"succeeded"}'


# SUBMIT's last two arguments: the task's tenant and its MAC (not checked by Redis)
TENANT = ("acme", "mac")
# what every SUBMIT takes last: the task's options (none), its place in a spawn tree
# (none), its tenant and that one's MAC
LAST = ("", "", "", *TENANT)  # SUBMIT's last: start time, options, place, tenant, MAC


async def submit(s: Scripts, i: int, max_queue: int = 0) -> Any:
    tid = TID.format(i)
    return await s.submit(keys=[K.task(tid), K.stream("acme", "w", 0),
                                K.priorities("acme", "w"), K.agents,
                                K.live],
                          args=[tid, "w", b'{"x":1}', 0, "", "", "1.0", "n", max_queue, "0",
                                "", *LAST])


async def takeover(s: Scripts, tid: str, entry: Any, kind: str = "dead") -> Any:
    """The takeover of b/1's claim, as a reaper decides and TAKEOVER keeps it."""
    return await take_over(RedisPart(s, K, Trust(None, "t", print)), K.stream("acme", "w", 0),
                           entry, tid, "b/1", orphan=kind == "orphan",
                           reason="node b lost", kept_for=60, specs={})


async def claim(s: Scripts, c: Any, i: int, consumer: str = "n/1") -> Any:
    """Task i claimed by `consumer`, alive while it claims (dead after it, unless it was
    alive before: a takeover's tests find it dead)."""
    tid = TID.format(i)
    entry = await c.hget(K.task(tid), "entry")
    was = await c.exists(K.alive(consumer))
    await c.set(K.alive(consumer), b"{}")
    try:
        return await claim_script(s)(
            keys=[K.task(tid), K.attempts(tid), K.fence, K.stream("acme", "w", 0)],
            args=[consumer, consumer.split("/")[0], "2.0", entry,
                  records.claimed_attempt("n", 2.0), 2, "30.0", TENANT[0]])
    finally:
        if not was:
            await c.delete(K.alive(consumer))


async def finish(s: Scripts, c: Any, i: int, token: int, stream: str | None = None
                 ) -> Any:
    """`stream`: the task's entry's (ClusterTask.stream), its priority's unless given."""
    tid = TID.format(i)
    entry = await c.hget(K.task(tid), "entry")
    return await s.finish(keys=[K.task(tid), K.attempts(tid),
                                stream or K.stream("acme", "w", 0), K.outcomes, *K.listed],
                          args=[token, tid, "succeeded", b'{"ok":true}', b"", "3.0", entry,
                                0, 60, 2, "1", "mac", ATTEMPT])


async def test_submit_is_idempotent_on_the_id_and_bounded(client: Any) -> None:
    s = Scripts(client)
    assert await submit(s, 1, max_queue=2) == 1
    assert await submit(s, 1, max_queue=2) == 0  # a retried submit: no second entry
    assert await client.xlen(K.stream("acme", "w", 0)) == 1
    assert await submit(s, 2, max_queue=2) == 1
    assert await submit(s, 3, max_queue=2) == [b"full", 2]  # refused, nothing written
    assert await client.exists(K.task(TID.format(3))) == 0
    rec = await client.hgetall(K.task(TID.format(1)))
    assert (rec[b"status"], rec[b"fence"], rec[b"input"]) == (b"queued", b"0", b'{"x":1}')


async def test_a_task_is_queued_in_its_tenants_stream_and_claimed_by_its_tenant_alone(
        client: Any) -> None:
    """The stream is the tenant's agent's (decision 439): another tenant's agent of the
    name reads a stream of its own and finds nothing. An entry naming acme's task put in
    globex's stream by a Redis writer (the same entry id, so that it matches the record)
    is not claimed by globex's reader: it leaves globex's stream, and acme's task waits
    in acme's, unclaimed, for acme's agent."""
    s = Scripts(client)
    assert await submit(s, 1) == 1
    tid, acme, globex = TID.format(1), K.stream("acme", "w", 0), K.stream("globex", "w", 0)
    assert await client.smembers(K.agents) == {b"acme:w"}
    entry = await client.hget(K.task(tid), "entry")
    await client.xgroup_create(globex, "corral", "0", mkstream=True)
    await client.xadd(globex, {"task": tid}, id=entry)

    async def read_claim(stream: str, tenant: str) -> Any:
        [got] = await s.run([(s.read_claim, [K.fence, stream],
                              ["n/1", "n", "2.0", records.claimed_attempt("n", 2.0), 2,
                               "30.0", 10, K.prefix, 1, tenant])])
        return got

    read, claims, *_ = await read_claim(globex, "globex")
    assert (read, claims) == (1, [])  # read, not claimed
    assert await client.xlen(globex) == 0
    rec = await client.hgetall(K.task(tid))
    assert (rec[b"status"], rec[b"fence"], rec[b"tenant"]) == (b"queued", b"0", b"acme")
    read, claims, *_ = await read_claim(acme, "acme")
    assert (read, [c[2] for c in claims]) == (1, [tid.encode()])


async def test_max_queue_counts_the_tenants_agent_alone(client: Any) -> None:
    """acme's `w` has max_queue waiting: globex's `w` of the same name is not full."""
    s = Scripts(client)
    assert await submit(s, 1, max_queue=1) == 1
    assert await submit(s, 2, max_queue=1) == [b"full", 1]  # acme's is full
    tid = TID.format(3)
    assert await s.submit(keys=[K.task(tid), K.stream("globex", "w", 0),
                                K.priorities("globex", "w"), K.agents, K.live],
                          args=[tid, "w", b"{}", 0, "", "", "1.0", "n", 1, "0", "", "",
                                "", "globex", "mac"]) == 1
    assert await client.smembers(K.agents) == {b"acme:w", b"globex:w"}


async def test_max_queue_counts_what_waits_for_its_time_until_it_is_due(client: Any
                                                                        ) -> None:
    """A delayed task is held out of its stream, and counts against max_queue until its
    time, as the node's delays count: one a node of the version before left in its route's
    count (its CANCEL and DUE take it from the due set alone) counts no longer once due."""
    s = Scripts(client)
    now = time.time()

    async def delayed(i: int, at: float) -> Any:
        tid = TID.format(i)
        return await s.submit(keys=[K.task(tid), K.stream("acme", "w", 0),
                                    K.priorities("acme", "w"), K.agents, K.live],
                              args=[tid, "w", b"{}", 0, "", "", repr(at), "n", 1, "0", "",
                                    repr(at + 5), '{"delay":5}', "", *TENANT])

    assert await delayed(1, now) == 1
    assert await client.xlen(K.stream("acme", "w", 0)) == 0
    assert await delayed(2, now + 1) == [b"full", 1]
    assert await client.ttl(f"{K.prefix}held:acme:w") > 3600
    # (an old node's cancel: the due set alone)
    await client.zrem(K.due, TID.format(1))
    assert await delayed(2, now + 5.5) == 1  # task 1's time is past: it counts no longer
    assert await delayed(3, now + 6) == [b"full", 1]


async def test_max_queue_counts_what_waits_not_what_runs(client: Any) -> None:
    """A claimed entry stays in its stream (pending) until its outcome: it runs, it does
    not wait, and max_queue counts what waits unread alone, as one node's queue does."""
    s = Scripts(client)
    stream = K.stream("acme", "w", 0)
    await client.set(K.alive("n/1"), b"{}")

    async def read_claim() -> list[bytes]:
        [(_, claims, *_)] = await s.run([(s.read_claim, [K.fence, stream], [
            "n/1", "n", "2.0", records.claimed_attempt("n", 2.0), 2, "30.0", 1, K.prefix,
            1, "acme"])])
        return [c[2] for c in claims]

    assert await submit(s, 1, max_queue=1) == 1
    assert await submit(s, 2, max_queue=1) == [b"full", 1]  # 1 waits
    assert await read_claim() == [TID.format(1).encode()]
    assert await client.xlen(stream) == 1  # its entry, pending until its outcome
    assert await submit(s, 2, max_queue=1) == 1  # 1 runs, 2 waits
    assert await submit(s, 3, max_queue=1) == [b"full", 1]
    assert await read_claim() == [TID.format(2).encode()]
    assert await submit(s, 3, max_queue=1) == 1
    assert await client.xlen(stream) == 3


async def test_one_call_reads_and_claims_by_priority_its_share_of_what_waits(
        client: Any) -> None:
    """READ_CLAIM: the streams read highest priority first up to the count, at most the
    node's share of what waits unread when others serve the agent too; a stale entry
    read is counted, not claimed, and leaves its stream; each claim its own token, as
    CLAIM's; each stream's newest entry answered (where a wait for more starts)."""
    s = Scripts(client)
    high, low = K.stream("acme", "w", 5), K.stream("acme", "w", 0)
    for i in range(1, 7):  # 1, 2, 5 and 6 at priority 0, 3 and 4 at 5
        tid = TID.format(i)
        prio = 5 if i in (3, 4) else 0
        assert await s.submit(keys=[K.task(tid), K.stream("acme", "w", prio),
                                    K.priorities("acme", "w"),
                                    K.agents, K.live],
                              args=[tid, "w", b'{"x":1}', prio, "", "", "1.0", "n", 0,
                                    "0", "", *LAST]) == 1
    await client.hset(K.task(TID.format(3)), "status", "cancelled")  # 3 is stale

    async def read_claim(count: int, serving: int = 1) -> Any:
        [got] = await s.run([(s.read_claim, [K.fence, high, low],
                              ["n/1", "n", "2.0", records.claimed_attempt("n", 2.0), 2,
                               "30.0", count, K.prefix, serving, TENANT[0]])])
        return got

    async def newest() -> list[Any]:
        return [(await client.xrevrange(st, count=1))[0][0] for st in (high, low)]

    # two nodes serve the agent: of the 6 waiting, its share is 3 (held back from more)
    read, claims, lasts, held = await read_claim(10, serving=2)
    assert (read, held) == (3, 1)  # 3 (stale) and 4 from the higher stream, then 1
    assert [(c[0], c[2].decode(), c[3], c[4], c[5], c[10]) for c in claims] == [
        (0, TID.format(4), 1, 0, b'{"x":1}', None), (1, TID.format(1), 2, 0, b'{"x":1}', None)]
    assert claims[0][6:10] == [b"30.0", b"2", b"5", b"1.0"]  # the claimer's defaults
    assert lasts == await newest()
    assert await client.xlen(high) == 1  # the stale entry deleted, 4's kept (running)
    rec = await client.hgetall(K.task(TID.format(4)))
    assert (rec[b"status"], rec[b"fence"], rec[b"owner"]) == (b"running", b"1", b"n/1")
    # 3 wait: its share 2, held back; then the last one, its whole share
    assert [len(x) if isinstance(x, list) else x for x in await read_claim(10, 2)] == [
        2, 2, 2, 1]
    read, claims, _, held = await read_claim(10, 2)
    assert (read, [c[2].decode() for c in claims], held) == (1, [TID.format(6)], 0)
    assert await read_claim(5) == [0, [], await newest(), 0]  # nothing more to read


async def test_claims_fence_and_only_the_holder_writes(client: Any) -> None:
    s = Scripts(client)
    await submit(s, 1)
    await submit(s, 2)
    got1, got2 = await claim(s, client, 1), await claim(s, client, 2)
    token1, base, raw, timeout, retries, prio, created = got1
    assert (token1, base, raw, timeout, retries, prio, created) == (
        1, 0, b'{"x":1}', b"30.0", b"2", b"0", b"1.0")  # the claimer's defaults filled in
    assert got2[0] == 2  # tokens increase across the cluster
    assert await claim(s, client, 1) is None  # running: not claimed twice
    tid = TID.format(1)
    assert await s.progress(keys=[K.task(tid), K.outcomes],
                            args=[token1 + 5, b'{"p":1}', tid]) == 0
    assert await s.progress(keys=[K.task(tid), K.outcomes], args=[token1, b'{"p":1}', tid]) == 1
    assert await finish(s, client, 1, token1 + 5) == 0  # a stale token: refused
    assert await finish(s, client, 1, token1) == 1
    assert await finish(s, client, 1, token1) == 0  # never twice
    rec = await client.hgetall(K.task(tid))
    assert (rec[b"status"], rec[b"output"], rec[b"progress"]) == (
        b"succeeded", b'{"ok":true}', b'{"p":1}')
    assert 0 < await client.ttl(K.task(tid)) <= 60
    info = records.info(tid, rec, await client.lrange(K.attempts(tid), 0, -1))
    assert [(a.node, a.outcome) for a in info.attempts] == [("n", "succeeded")]
    assert await client.xlen(K.stream("acme", "w", 0)) == 1  # its entry deleted (task 2 waits)
    # the outcome rides along on the outcomes stream: a waiting client reads no record
    [(_, fields)] = await client.xrange(K.outcomes)
    assert fields == {b"task": tid.encode(), b"status": b"succeeded",
                      b"output": b'{"ok":true}', b"error": b"", b"attempts": b"[" + ATTEMPT + b"]",
                      b"fence": str(token1).encode(), b"mac": b"mac"}
    carried = records.inline_result(tid, fields)
    assert carried is not None and (carried.status, carried.output, carried.error) == (
        "succeeded", msgspec.Raw(b'{"ok":true}'), None)
    assert [(a.node, a.pid) for a in carried.attempts] == [("n", 1)]


async def test_a_takeover_needs_the_consumer_dead(client: Any) -> None:
    s = Scripts(client)
    await submit(s, 1)
    token, *_ = await claim(s, client, 1, consumer="b/1")
    tid = TID.format(1)
    entry = await client.hget(K.task(tid), "entry")

    async def take() -> Any:
        return await takeover(s, tid, entry)

    await client.set(K.alive("b/1"), b"{}")
    assert await take() is None  # alive: never taken
    await client.delete(K.alive("b/1"))
    assert await take() == b"requeued"
    assert await take() is None  # the entry is stale now
    rec = await client.hgetall(K.task(tid))
    # (a loss within an agent's default retry_lost: no retry spent)
    assert (rec[b"status"], rec[b"fence"], rec[b"retries_left"]) == (b"queued", b"0", b"2")
    assert rec[b"entry"] != entry
    [attempt] = await client.lrange(K.attempts(tid), 0, -1)
    assert msgspec.json.decode(attempt)["error"] == "node b lost"
    assert await finish(s, client, 1, token) == 0  # the old holder is refused


async def test_a_task_cancelled_while_it_waits_again_keeps_its_attempts_no_longer_than_it(
        client: Any) -> None:
    """A task that ran, was taken over and waits again has attempts; cancelled then, its
    attempts expire with its record (the beat's trim forgets ids older than
    keep_tasks_for, trusting their keys to have expired: a list without an expiry would
    stay in Redis for ever)."""
    s = Scripts(client)
    await submit(s, 1)
    await claim(s, client, 1, consumer="b/1")
    tid = TID.format(1)
    entry = await client.hget(K.task(tid), "entry")
    assert await takeover(s, tid, entry) == b"requeued"
    assert await client.llen(K.attempts(tid)) == 1
    assert await client.ttl(K.attempts(tid)) == -1  # waiting: kept while it waits
    assert await cancel(RedisPart(s, K, Trust(None, "t", print)), tid, 60) == b"cancelled"
    assert await client.hget(K.task(tid), "status") == b"cancelled"
    assert await client.llen(K.attempts(tid)) == 1  # still readable, for as long as it
    assert 0 < await client.ttl(K.task(tid)) <= 60
    assert 0 < await client.ttl(K.attempts(tid)) <= 60
    assert await client.zrange(K.done, 0, -1) == [tid.encode()]
    assert await client.xlen(K.stream("acme", "w", 0)) == 0  # its entry gone with it


async def test_a_task_asked_to_cancel_whose_node_died_is_not_run_again(client: Any) -> None:
    """`corral cancel` of a task running elsewhere marks it for its node's next beat; a
    node dead before that beat leaves it to the takeover, which ends it cancelled (with
    retries left, or as an orphan, it would otherwise run again)."""
    s = Scripts(client)
    cancelled = b'{"code":-32003,"message":"cancelled while running"}'
    for i, kind in ((1, "dead"), (2, "orphan")):
        await submit(s, i)
        await claim(s, client, i, consumer="b/1")
        tid = TID.format(i)
        assert await cancel(RedisPart(s, K, Trust(None, "t", print)), tid, 60) == b"asked"
        entry = await client.hget(K.task(tid), "entry")
        assert await takeover(s, tid, entry, kind) == b"cancelled"
        rec = await client.hgetall(K.task(tid))
        assert (rec[b"status"], rec[b"error"], rec[b"fence"], rec[b"retries_left"]) == (
            b"cancelled", cancelled, b"0", b"2")
        [attempt] = await client.lrange(K.attempts(tid), 0, -1)
        assert msgspec.json.decode(attempt)["outcome"] == "lost"
        assert 0 < await client.ttl(K.task(tid)) <= 60
        assert 0 < await client.ttl(K.attempts(tid)) <= 60
    assert await client.xlen(K.stream("acme", "w", 0)) == 0  # neither waits to run again
    assert await client.zrange(K.done, 0, -1) == [TID.format(i).encode() for i in (1, 2)]
    assert await client.exists(K.live) == 0


async def test_scripts_redis_has_forgotten_are_loaded_again(client: Any) -> None:
    """A restarted Redis (or SCRIPT FLUSH) knows no script: the calls answered NOSCRIPT,
    having done nothing, and run once the scripts are loaded again."""
    s = Scripts(client)
    await submit(s, 1)
    await client.script_flush()
    tid = TID.format(2)
    got = await s.run([(s.submit, [K.task(tid), K.stream("acme", "w", 0), K.priorities("acme", "w"),
                                   K.agents, K.live],
                        [tid, "w", b"null", 0, "", "", "1.0", "n", 0, "0", "", *LAST]),
                       (s.progress, [K.task(tid), K.outcomes], [7, b"{}", tid])])
    assert got == [1, 0]  # submitted once; the progress refused (no such claim)
    assert await client.xlen(K.stream("acme", "w", 0)) == 2


async def test_the_listed_tasks_follow_each_task_to_its_end_and_stay_bounded(
        client: Any) -> None:
    """`corral tasks` reads two sorted sets the scripts keep: a task is live from its
    submit (a retried submit adds nothing) until it ends, by its outcome, a cancel while
    queued or a takeover with no retries left; then it is finished, of which a node's beat
    keeps the newest keep_tasks."""
    s = Scripts(client)
    for i in range(1, 5):
        await submit(s, i)
    await submit(s, 1)
    ids = [TID.format(i) for i in range(1, 5)]
    assert await client.zrange(K.live, 0, -1) == [i.encode() for i in ids]
    token, *_ = await claim(s, client, 1)
    assert await finish(s, client, 1, token) == 1
    entry = await client.hget(K.task(ids[1]), "entry")
    assert await cancel(RedisPart(s, K, Trust(None, "t", print)), ids[1], 60) == b"cancelled"
    await claim(s, client, 3, consumer="b/1")
    await client.hset(K.task(ids[2]), "retry_lost", 0)  # (at most once: lost at once)
    entry = await client.hget(K.task(ids[2]), "entry")
    assert await takeover(s, ids[2], entry) == b"lost"
    assert await client.zrange(K.live, 0, -1) == [ids[3].encode()]
    assert await client.zrange(K.done, 0, -1) == [i.encode() for i in ids[:3]]
    # bounded: a node's beat takes out the oldest beyond keep_tasks (TRIM, exactly those,
    # their records deleted in the same step) and the ids made before the cutoff
    older = [f"00000000-{n:04x}-7000-8000-000000000000" for n in range(10)]
    await client.zadd(K.done, dict.fromkeys(older, 0))
    for o in older[:3]:
        await client.hset(K.task(o), "status", "succeeded")
        await client.rpush(K.attempts(o), "{}")
    token, *_ = await claim(s, client, 4)
    assert await finish(s, client, 4, token) == 1
    assert await client.zcard(K.done) == 14
    assert await s.trim(keys=[K.done], args=[12, "00000000-0000", K.prefix]) == [
        o.encode() for o in older[:2]]
    assert [await client.exists(K.task(o), K.attempts(o)) for o in older[:3]] == [0, 0, 2]
    assert await s.trim(keys=[K.done], args=[12, "00000000-0000", K.prefix]) == []
    assert await s.trim(keys=[K.done], args=[100, "00000000-0005", K.prefix]) == []
    assert await client.zrange(K.done, 0, 0) == [older[5].encode()]
    assert await client.zrange(K.done, -1, -1) == [ids[3].encode()]
    assert await client.zcard(K.done) == 9
    assert await client.exists(K.live) == 0


async def test_progress_goes_on_the_outcomes_stream_only_when_a_client_waits(
        client: Any) -> None:
    s = Scripts(client)
    waited, alone = TID.format(1), TID.format(2)
    for tid, watched in ((waited, "1"), (alone, "0")):
        assert await s.submit(keys=[K.task(tid), K.stream("acme", "w", 0),
                                    K.priorities("acme", "w"),
                                    K.agents, K.live],
                              args=[tid, "w", b"null", 0, "", "", "1.0", "n", 0, watched,
                                    "", *LAST]) == 1
    t1, *_ = await claim(s, client, 1)
    t2, *_ = await claim(s, client, 2)
    for tid, token in ((waited, t1), (alone, t2)):
        assert await s.progress(keys=[K.task(tid), K.outcomes],
                                args=[token, b'{"progress":1}', tid]) == 1
    # the record has both; the stream only the one a client waits for
    assert await client.hget(K.task(alone), "progress") == b'{"progress":1}'
    [(_, fields)] = await client.xrange(K.outcomes)
    assert fields == {b"task": waited.encode(), b"progress": b'{"progress":1}'}
    assert records.inline_result(waited, fields) is None  # not an outcome


async def test_an_incarnation_whose_key_lapsed_claims_nothing_and_reads_nothing(
        client: Any) -> None:
    """A claim that reaches Redis after its node's liveness key lapsed (the node is yet to
    fence itself, or its call was delayed past the lapse) takes nothing and holds no entry:
    CLAIM, READ_CLAIM and SUBMIT_CLAIM alike. Before decision 515 it claimed the task for
    the dead consumer, which retention then removed with its pending entry: the task stayed
    running for nobody (found by bench_cluster_capacity, 50 nodes on a loaded machine)."""
    from .test_submit_claim import submit_claim

    s = Scripts(client)
    stream = K.stream("acme", "w", 0)
    assert await submit(s, 1) == 1
    entry = await client.hget(K.task(TID.format(1)), "entry")
    assert await claim_script(s)(
        keys=[K.task(TID.format(1)), K.attempts(TID.format(1)), K.fence, stream],
        args=["gone/1", "gone", "2.0", entry, records.claimed_attempt("gone", 2.0), 2, "30.0",
              "acme"]) is None
    [got] = await s.run([(s.read_claim, [K.fence, stream],
                          ["gone/1", "gone", "2.0", records.claimed_attempt("gone", 2.0), 2,
                           "30.0", 10, K.prefix, 1, "acme"])])
    assert got[:2] == [0, []]
    assert await submit_claim(s, 2, consumer="gone/1") == [1]  # submitted, not claimed
    for i in (1, 2):
        rec = await client.hgetall(K.task(TID.format(i)))
        assert (rec[b"status"], rec.get(b"owner")) == (b"queued", None)
    assert (await client.xpending(stream, "corral"))["pending"] == 0  # held by nobody
    # a live node reads and claims both
    [got] = await s.run([(s.read_claim, [K.fence, stream],
                          ["n/1", "n", "2.0", records.claimed_attempt("n", 2.0), 2,
                           "30.0", 10, K.prefix, 1, "acme"])])
    assert [c[2].decode() for c in got[1]] == [TID.format(1), TID.format(2)]


async def test_a_dead_consumer_leaves_its_group_only_while_it_holds_nothing(
        client: Any) -> None:
    """DROP_CONSUMER checks and removes in one step: a consumer alive, or holding an entry,
    stays (what it holds is a reaper's to take over); a dead one holding nothing goes."""
    s = Scripts(client)
    stream = K.stream("acme", "w", 0)
    assert await submit(s, 1) == 1
    await client.xgroup_createconsumer(stream, "corral", "idle/1")
    await client.set(K.alive("b/1"), b"{}")
    [got] = await s.run([(s.read_claim, [K.fence, stream],
                          ["b/1", "b", "2.0", records.claimed_attempt("b", 2.0), 2,
                           "30.0", 10, K.prefix, 1, "acme"])])
    assert got[0] == 1
    await client.delete(K.alive("b/1"))  # b/1 holds task 1's entry, and dies

    async def drop(consumer: str) -> Any:
        return await s.drop_consumer(keys=[stream, K.alive(consumer)], args=[consumer])

    assert await drop("n/1") == 0  # alive (the fixture's)
    assert await drop("b/1") == 0  # dead, but holds task 1's entry
    assert await drop("idle/1") == 1
    assert [c["name"] for c in await client.xinfo_consumers(stream, "corral")] == [b"b/1"]
