"""Claim at submission (cluster/submitclaim.py, scripts.SUBMIT_CLAIM): a node with a free
slot submits and claims in one script call. The script alone against a real redis-server
(a fenced claim of a recorded task; no task jumps a backlog or a higher priority; the
task claimed as it was added goes to the claimed stream, waking no reader, and is taken
over or given back into its priority's stream: decision 797), and
real daemons: the task starts on the submitter, once; the submitter takes only what it
has slots for, the other node the rest at once; the submitter killed -9 right after the
submit, or paused past its TTL: the task is taken over, one outcome, the late write
refused."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.cli.client import CallFailed
from corral.cluster import records
from corral.cluster.keys import GROUP, Keys
from corral.cluster.membership import Membership
from corral.cluster.reaper import Reaper, take_over
from corral.cluster.scripts import RedisPart, Scripts
from corral.cluster.trust import Trust
from corral.supervisor.config import ClusterSettings

from ..daemon_harness import in_process
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_methods import Raw
from .harness import STEADY_TTL, Node, cluster_table, nodes, sleeper
from .test_scripts import LAST, TID, finish, submit

pytestmark = pytest.mark.timeout(60)
K = Keys("t")


async def submit_claim(s: Scripts, i: int, prio: int = 0, consumer: str = "n/1") -> Any:
    tid = TID.format(i)
    return await s.submit_claim(
        keys=[K.task(tid), K.stream("acme", "w", prio), K.priorities("acme", "w"), K.agents, K.live,
              K.fence],
        args=[tid, "w", b'{"x":1}', prio, "", "", "1.0", "n", 0, "0", "", consumer,
              consumer.split("/")[0], "2.0", records.claimed_attempt("n", 2.0), 2, "30.0",
              K.prefix, *LAST])


async def test_one_call_submits_and_claims_a_task_fenced_as_any_claim(client: Any) -> None:
    s = Scripts(client)
    got = await submit_claim(s, 1)
    tid, stream = TID.format(1), K.claimed("acme", "w")
    entry = await client.hget(K.task(tid), "entry")
    assert got == [1, [stream.encode(), entry, tid.encode(), 1, 0, b'{"x":1}', b"30.0", b"2",
                       b"0", b"1.0", None, None, None, b""]]
    rec = await client.hgetall(K.task(tid))
    assert (rec[b"status"], rec[b"fence"], rec[b"owner"], rec[b"node"], rec[b"started"],
            rec[b"stream"]) == (b"running", b"1", b"n/1", b"n", b"2.0",
                                K.stream("acme", "w", 0).encode())
    # a cluster task like any other: listed, its entry pending with the claimer (what the
    # reaper takes over when the claimer dies), in the route's claimed stream
    assert await client.zscore(K.live, tid) == 0
    pending = await client.xpending_range(stream, GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry, b"n/1")]
    assert await submit_claim(s, 1) == [0]  # a retried submit: no second task, no claim
    assert await finish(s, client, 1, 2, stream) == 0  # a stale token's write: refused
    assert (await client.hgetall(K.task(tid)))[b"status"] == b"running"
    assert await finish(s, client, 1, 1, stream) == 1
    assert await client.xlen(stream) == 0  # acknowledged and deleted with the outcome


async def test_a_task_claimed_as_submitted_wakes_no_reader_of_its_agents_streams(
        client: Any) -> None:
    """Nothing waits unread: the entry goes to the claimed stream, which no puller reads
    or waits on; its priority's stream gets none (a blocking XREAD wakes only on an
    entry added to a stream it waits on: decision 797)."""
    s = Scripts(client)
    await submit_claim(s, 1, prio=5)
    await submit_claim(s, 2)
    for prio in (5, 0):
        info = await client.xinfo_stream(K.stream("acme", "w", prio))
        assert (info["length"], info["entries-added"]) == (0, 0)
    assert await client.xlen(K.claimed("acme", "w")) == 2
    assert await client.zrange(K.priorities("acme", "w"), 0, -1) == [b"0", b"5"]


async def test_a_claimed_as_submitted_task_of_a_dead_node_waits_in_its_prioritys_stream(
        client: Any) -> None:
    """The reaper finds the entry pending in the claimed stream with a dead consumer:
    the task is queued again in its record's stream (its priority's), which the pullers
    read, and claimed from there; the dead claimer's late outcome is refused."""
    s = Scripts(client)
    await client.set(K.alive("b/1"), b"{}")
    got = await submit_claim(s, 1, prio=5, consumer="b/1")
    await client.delete(K.alive("b/1"))
    tid, claimed, home = TID.format(1), K.claimed("acme", "w"), K.stream("acme", "w", 5)
    reaper = Reaper(s, K, None, Membership(  # type: ignore[arg-type]
        s, K, None, ClusterSettings(redis="", name="t", node="r"), "r",
        lambda: (1, 0, {}), print), print, 60, {})
    assert await reaper.streams() == [K.stream("acme", "w", 5), claimed]
    entry = got[1][1]
    assert await take_over(reaper, claimed, entry, tid, "b/1", orphan=False,
                           reason="node b lost", kept_for=60, specs={}) == b"requeued"
    rec = await client.hgetall(K.task(tid))
    [(moved, _)] = await client.xrange(home)
    assert (rec[b"status"], rec[b"fence"], rec[b"entry"], rec[b"stream"]) == (
        b"queued", b"0", moved, home.encode())
    assert (await client.xlen(claimed),
            (await client.xpending(claimed, GROUP))["pending"]) == (0, 0)
    assert await finish(s, client, 1, got[1][3], claimed) == 0
    again = await submit_claim(s, 2, prio=5)  # behind it: the oldest waiting is claimed
    assert (again[1][0], again[1][2], again[1][4]) == (home.encode(), tid.encode(), 1)


async def test_a_claimed_as_submitted_task_given_back_waits_in_its_prioritys_stream(
        client: Any) -> None:
    """A stopping node's hand-back of it (Reaper.hand_back, its holder alive): queued
    again in its record's stream."""
    s = Scripts(client)
    got = await submit_claim(s, 1, prio=5)
    tid, claimed, home = TID.format(1), K.claimed("acme", "w"), K.stream("acme", "w", 5)
    part = RedisPart(s, K, Trust(None, "t", print))
    assert await take_over(part, claimed, got[1][1], tid, "n/1", orphan=False,
                           reason="node n stopped", kept_for=60, specs={},
                           live=True) == b"requeued"
    [(moved, _)] = await client.xrange(home)
    assert (await client.hget(K.task(tid), "entry"), await client.xlen(claimed)) == (
        moved, 0)


async def test_no_task_jumps_a_backlog_or_a_higher_priority(client: Any) -> None:
    s = Scripts(client)
    assert await submit(s, 1) == 1  # waiting, unread, at priority 0
    tid2 = TID.format(2)
    assert await s.submit(keys=[K.task(tid2), K.stream("acme", "w", 5),
                                K.priorities("acme", "w"), K.agents,
                                K.live],
                          args=[tid2, "w", b"{}", 5, "", "", "1.0", "n", 0, "0", "",
                                    *LAST]) == 1
    first = await submit_claim(s, 3)
    assert first[1][2] == tid2.encode()  # the higher priority's first
    second = await submit_claim(s, 4)
    assert second[1][2] == TID.format(1).encode()  # then the oldest waiting
    statuses = [(await client.hget(K.task(TID.format(i)), "status")) for i in (1, 2, 3, 4)]
    assert statuses == [b"running", b"running", b"queued", b"queued"]


async def test_the_entry_just_added_is_claimed_as_claim_claims_it(client: Any) -> None:
    """The script claims the entry it just added without re-reading the record: the
    record, the reply and the attempts are what claim() makes of a backlog's entry."""
    s = Scripts(client)
    by_fresh = await submit_claim(s, 3)  # nothing waits before 3: its own entry
    assert await submit(s, 1) == 1
    by_claim = await submit_claim(s, 2)  # claims 1, the backlog's: claim()
    assert (by_claim[1][2], by_fresh[1][2]) == (TID.format(1).encode(),
                                               TID.format(3).encode())
    assert (by_fresh[1][3], by_claim[1][3]) == (1, 2)  # each its own fence token
    assert by_fresh[1][4:] == by_claim[1][4:]
    one = await client.hgetall(K.task(TID.format(1)))
    three = await client.hgetall(K.task(TID.format(3)))
    differs = {b"fence", b"entry", b"created", b"submitted_on"}
    assert {k: v for k, v in one.items() if k not in differs} == {
        k: v for k, v in three.items() if k not in differs}
    assert (await client.lrange(K.attempts(TID.format(1)), 0, -1)
            == await client.lrange(K.attempts(TID.format(3)), 0, -1))
    # a stale token's write refused, the claim's own accepted
    assert await finish(s, client, 3, 2) == 0
    assert await finish(s, client, 3, 1) == 1


async def test_a_new_task_with_attempts_already_is_claimed_by_claim(client: Any) -> None:
    """An attempts list already there (a record expired before its attempts): the claim
    counts it, as claim() does, rather than take the task for a first attempt."""
    s = Scripts(client)
    await client.rpush(K.attempts(TID.format(1)), b'{"old":1}')
    got = await submit_claim(s, 1)
    assert (got[1][2], got[1][4]) == (TID.format(1).encode(), 1)
    assert await client.llen(K.attempts(TID.format(1))) == 2


# -- real daemons ------------------------------------------------------------------------
def two(tmp: Path, redis: RedisServer, *, retries: int = 0, concurrency: int = 1) -> Any:
    """Two nodes on the steady TTL: a node lapsed under the short one at load claims
    nothing at its submissions (not a member), and one paused past its TTL lapsed again
    once back; a kill or a pause still lapses a node, a few seconds later."""
    worker = sleeper("sleepy", retries=retries, concurrency=concurrency)
    return nodes(tmp, redis, {"a": worker, "b": worker}, ttl=STEADY_TTL)


def both_alive(a: Node) -> bool:
    return sum(n["alive"] for n in a.nodes()["nodes"]) == 2


def sleep_task(n: Node, seconds: float) -> str:
    return str(n.call("tasks.submit", {"agent": "sleepy",
                                       "input": {"do": "sleep", "seconds": seconds}}
                      )["task_id"])


def claimed_at_submission(ns: dict[str, Node], seconds: float
                          ) -> tuple[str, dict[str, dict[str, Any]]]:
    """A sleep submitted to node a, which a claims at its submission (its slot free, its
    pull's read in flight, if any, answered first: decision 2181), and each node's
    cluster counts before it."""
    before = {name: cluster_stats(n) for name, n in ns.items()}
    task_id = sleep_task(ns["a"], seconds)
    assert cluster_stats(ns["a"])["claimed_at_submit"] == (
        before["a"]["claimed_at_submit"] + 1)
    return task_id, before


def cluster_stats(n: Node) -> dict[str, Any]:
    return dict(n.call("stats.get")["cluster"])


def test_a_task_submitted_where_a_slot_is_free_starts_there_once(
        tmp: Path, redis: RedisServer) -> None:
    with two(tmp, redis) as ns:
        a = ns["a"]
        wait_until(lambda: both_alive(a), what="a and b alive")
        task_id, before = claimed_at_submission(ns, 0.05)
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded" and done["output"]["attempt"] == 1
        assert [(x["node"], x["outcome"]) for x in done["attempts"]] == [("a", "succeeded")]
        assert done["started"] <= done["attempts"][0]["started"]  # the claim, then the run
        stats = cluster_stats(a)
        assert (stats["claimed_at_submit"] - before["a"]["claimed_at_submit"],
                stats["claimed"] - before["a"]["claimed"]) == (1, 1)
        assert cluster_stats(ns["b"])["claimed"] == before["b"]["claimed"]


def submit_in_one_write(node: Node | Path, n: int, seconds: float) -> list[str]:
    """`n` sleeps submitted to `node` (or the control socket at that path) in one write
    to its socket (one batch or several, as its loop's turns cut the write); their task
    ids."""
    enc = msgspec.json.Encoder()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(node if isinstance(node, Path) else node.sock))
        sock.sendall(b"".join(enc.encode({
            "jsonrpc": "2.0", "id": i, "method": "tasks.submit",
            "params": {"agent": "sleepy", "input": {"do": "sleep", "seconds": seconds}}})
            + b"\n" for i in range(n)))
        f = sock.makefile("rb")
        return [msgspec.json.decode(f.readline())["result"]["task_id"] for _ in range(n)]


def test_a_burst_the_submitter_has_no_slots_for_starts_on_the_other_node_at_once(
        tmp: Path, redis: RedisServer) -> None:
    with two(tmp, redis, concurrency=2) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: both_alive(a), what="a and b alive")
        ids = submit_in_one_write(a, 4, 2.0)
        done = [a.call("tasks.get", {"task_id": t, "wait": True}) for t in ids]
        assert [d["status"] for d in done] == ["succeeded"] * 4
        # no task waited for another's end: two on each node, each started at once
        assert sorted(d["attempts"][0]["node"] for d in done) == ["a", "a", "b", "b"]
        assert all(d["attempts"][0]["started"] - d["created"] < 1.5 for d in done)
        assert cluster_stats(a)["claimed_at_submit"] <= 2
        assert cluster_stats(b)["claimed_at_submit"] == 0


async def test_a_pull_reads_for_the_slots_free_when_it_reads_not_before_its_lookup(
        tmp: Path, redis: RedisServer) -> None:
    """A burst that takes the node's slots by claims at submission while its pull loop
    looks its streams up leaves the rest in the streams: the pull that follows reads
    nothing until a slot frees. Fails with the slots counted before the lookup: the read
    claims the rest too, to wait here for a slot (a loaded host's burst ran three tasks on
    its submitter, the last after another's end, with a slot free on the other node)."""
    (tmp / "a").mkdir()
    sock = tmp / "a" / "corral.sock"
    # (the steady TTL: on the short one a loaded host's node, on the test's own loop,
    # fenced itself during the burst, which it then took as no member, claiming none)
    async with in_process(tmp / "a", sleeper("sleepy", concurrency=2),
                          toml=cluster_table(redis, "a", ttl=STEADY_TTL)) as d:
        puller = d.cluster.puller
        lookup = puller._streams
        burst: list[str] = []
        submitted = asyncio.Event()

        async def a_burst_during_the_lookup(agent: Any) -> list[str]:
            streams = await lookup(agent)
            if not burst and d.cluster.membership.member:
                burst.append("")  # (one burst: the lookups after it go on meanwhile)
                burst[:] = await asyncio.to_thread(submit_in_one_write, sock, 4, 1.0)
                submitted.set()
            return streams

        puller._streams = a_burst_during_the_lookup  # type: ignore[method-assign]
        await submitted.wait()
        done = [await asyncio.to_thread(ended_task, sock, t) for t in burst]
        assert [x["status"] for x in done] == ["succeeded"] * 4
        assert d.cluster.submit_claims.claimed == 2
        by_claim = sorted(done, key=lambda x: x["started"])
        first_end = min(x["attempts"][0]["finished"] for x in by_claim[:2])
        # the two in the stream claimed once a slot was free, not at once
        assert [x["started"] >= first_end for x in by_claim[2:]] == [True, True], done


@pytest.mark.parametrize("during", ["idle", "read", "confirmation"])
async def test_a_submission_during_a_pulls_await_takes_the_slots_the_pull_left(
        tmp: Path, redis: RedisServer, during: str) -> None:
    """A task submitted while the node's pull awaits its read (the read and claim's round
    trip) or its claim's confirmation (the marker's write and WAIT, decision 1800) is
    claimed at its submission where a slot is free once the pull has taken what it took.
    [idle]: the pull's idle look (once a beat) read nothing, and the task is claimed at its
    submission; fails with the submission planned inside the read's round trip, its slots
    the read's (decision 1803 amended): not claimed, it waited in the stream for a pull and
    counted against max_queue meanwhile (decision 2181). [read], [confirmation]: the pull
    took the agent's one slot, and the task waits in the stream for this node's next read
    or another node's; fails with the pull's slots counted nowhere across that await: the
    submission claimed a task too, two here for one slot, the other node's free slot left
    and a task waiting here out of the count max_queue bounds (decision 1803, the read's
    amended: the door contract's budget test accepted a task past its agent's max_queue
    on a fresh clone's run)."""
    (tmp / "a").mkdir()
    sock = tmp / "a" / "corral.sock"
    # (the steady TTL: the node, on the test's own loop, lapsed under the short one at
    # load, and its pulled task, queued again, was claimed a second time)
    async with in_process(tmp / "a", sleeper("sleepy"),
                          toml=cluster_table(redis, "a", ttl=STEADY_TTL)) as d:
        puller, claims = d.cluster.puller, d.cluster.submit_claims
        scripts, agent = puller.scripts, puller.host.agents["sleepy"]
        awaited, plan = scripts.run, claims.plan
        late: list[asyncio.Future[list[str]]] = []
        wanted: list[int] = []  # the agent's free slots as the late submission was planned

        def planned(calls: list[Any]) -> Any:
            if late:
                wanted.append(puller.queue.wanted(agent))
            return plan(calls)

        async def a_submission_during_the_pull(calls: list[Any], acks: Any = None
                                               ) -> list[Any]:
            got = await awaited(calls, acks)
            # Redis answered, the pull not yet told: its read (its read_claim call, its
            # answer's claims: none or some), or its confirmation (a call of none)
            read = (bool(calls) and calls[0][0] is scripts.read_claim
                    and isinstance(got[0], list))
            pulls = {"idle": read and not got[0][1], "read": read and bool(got[0][1]),
                     "confirmation": not calls}[during]
            if pulls and not late and d.cluster.membership.member:
                late.append(asyncio.ensure_future(
                    asyncio.to_thread(submit_in_one_write, sock, 1, 0.05)))
                # until the node planned it, or holds it for this read's answer (the
                # submission's thread writes meanwhile)
                while not wanted and not getattr(claims, "waiting", 0):
                    await asyncio.sleep(0.002)
            return got

        scripts.run = a_submission_during_the_pull  # type: ignore[method-assign]
        claims.plan = planned  # type: ignore[method-assign]
        if during == "idle":
            await asyncio.to_thread(wait_until, lambda: bool(late), what="an idle look")
            [submitted] = await late[0]
            late_one = await asyncio.to_thread(ended_task, sock, submitted)
            assert late_one["status"] == "succeeded"
            assert (wanted, claims.claimed, puller.claimed) == ([1], 1, 1)
            assert puller.queue.claiming == {}
            return
        # submitted while the node drains (none claimed at submission, none read), then
        # pulled once it no longer does
        puller.paused = True
        first = await asyncio.to_thread(submit_in_one_write, sock, 1, 0.3)
        puller.paused = False
        puller.queue.wake("sleepy")
        pulled = await asyncio.to_thread(ended_task, sock, first[0])
        assert len(late) == 1  # (submitted before the pulled one started)
        [submitted] = await late[0]
        late_one = await asyncio.to_thread(ended_task, sock, submitted)
        assert [x["status"] for x in (pulled, late_one)] == ["succeeded"] * 2
        assert (wanted, claims.claimed, puller.claimed) == ([0], 0, 2)
        assert puller.queue.claiming == {}
        # the late one ran after the pulled one, in the one slot
        assert late_one["attempts"][0]["started"] >= pulled["attempts"][0]["finished"], (
            pulled, late_one)


def ended_task(sock: Path, task_id: str) -> dict[str, Any]:
    c = Raw(sock)
    try:
        return dict(msgspec.json.decode(c.call("tasks.get", {"task_id": task_id,
                                                             "wait": True})))
    finally:
        c.close()


def test_the_submitter_killed_right_after_the_submit_its_task_runs_once_elsewhere(
        tmp: Path, redis: RedisServer) -> None:
    with two(tmp, redis, retries=1) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: both_alive(a), what="a and b alive")
        task_id, _ = claimed_at_submission(ns, 0.5)  # a's, from the submit on
        a.kill9()
        done = b.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded"
        assert [(x["node"], x["outcome"], x.get("error")) for x in done["attempts"]] == [
            ("a", "lost", "node a lost"), ("b", "succeeded", None)]
        assert done["output"]["attempt"] == 2  # b's run is the task's second
        listed = b.call("tasks.list", {"limit": 10})["tasks"]
        assert [(t["task_id"], t["status"], t["node"]) for t in listed
                if t["task_id"] == task_id] == [(task_id, "succeeded", "b")]


def test_a_submitter_paused_past_its_ttl_cannot_write_what_was_taken(
        tmp: Path, redis: RedisServer) -> None:
    with two(tmp, redis, retries=1) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: both_alive(a), what="a and b alive")
        task_id, before = claimed_at_submission(ns, 1.0)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        # a's key expires; the task is taken over and runs on b while a sleeps
        done = b.call("tasks.get", {"task_id": task_id, "wait": True})
        a.proc.send_signal(signal.SIGCONT)
        assert done["status"] == "succeeded"
        assert [(x["node"], x["outcome"]) for x in done["attempts"]] == [
            ("a", "lost"), ("b", "succeeded")]
        # a wakes and its worker answers: refused by the fence, or never sent (a fenced
        # itself first); the record stays b's
        wait_until(lambda: cluster_stats(a)["fences"] >= 1, what="a fenced")
        assert cluster_stats(a)["published"] == before["a"]["published"]
        assert b.call("tasks.get", {"task_id": task_id}) == done


def test_a_node_paused_past_its_ttl_leaves_each_task_one_run_and_max_queue_held(
        tmp: Path, redis: RedisServer) -> None:
    """The door suite's budget test at load (a submission past max_queue accepted once,
    "has 3 tasks waiting" for 1 once) was a node's lapse: paused past its TTL, it fences
    itself, and its running task is lost and retried into the stream, where a retry is no
    admission. Once the node is back, each task runs once at a time, what waits is what
    max_queue counts, and a submission past it is refused naming that count."""
    worker = sleeper("sleepy") + "max_queue = 1\n"
    # (the steady TTL: b fenced twice under the short one at load, lapsing again once back)
    with nodes(tmp, redis, {"a": worker, "b": worker}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: both_alive(a), what="a and b alive")
        held = [sleep_task(a, 1000)]
        held.append(sleep_task(b, 1000))
        wait_until(lambda: all(a.task(t)["status"] == "running" for t in held),
                   what="a task running at each node")
        held.append(sleep_task(a, 1000))  # (waiting: the one max_queue allows)
        on_b = next(t for t in held[:2] if a.task(t)["attempts"][0]["node"] == "b")
        assert b.proc is not None
        b.proc.send_signal(signal.SIGSTOP)
        try:  # b's task lost once a finds b's key gone, and queued again
            wait_until(lambda: a.task(on_b)["attempts"][0]["outcome"] == "lost",
                       what="b's task taken over")
        finally:
            b.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: both_alive(a) and sorted(a.task(t)["status"] for t in held) == [
            "queued", "running", "running"], what="b back, running one of the two waiting")
        assert cluster_stats(b)["fences"] == 1
        with pytest.raises(CallFailed) as refused:
            a.ask("tasks.submit", {"agent": "sleepy", "input": {"do": "sleep", "seconds": 1}})
        assert refused.value.message == ("queue full: agent sleepy has 1 task waiting "
                                         "(max_queue 1)")
        for t in held:
            a.call("tasks.cancel", {"task_id": t})
        ended = [a.call("tasks.get", {"task_id": t, "wait": True}) for t in held]
        assert [e["status"] for e in ended] == ["cancelled"] * 3
        # one attempt of each at a time: every attempt but a task's last ended before it
        for e in ended:
            runs = e["attempts"]
            assert all(x["finished"] is not None and x["finished"] <= y["started"]
                       for x, y in itertools.pairwise(runs)), e


def test_the_submitter_killed_after_a_batch_its_tasks_run_each_once_elsewhere(
        tmp: Path, redis: RedisServer) -> None:
    with two(tmp, redis, retries=1, concurrency=4) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: both_alive(a), what="a and b alive")
        # its share of each batch the loop's turns made of the write (one or several),
        # its pull's read in flight, if any, answered first (decision 2181)
        ids = submit_in_one_write(a, 4, 1.0)
        claimed = cluster_stats(a)["claimed_at_submit"]
        assert claimed >= 2
        a.kill9()
        done = [b.call("tasks.get", {"task_id": t, "wait": True}) for t in ids]
        assert [d["status"] for d in done] == ["succeeded"] * 4
        runs = [[(x["node"], x["outcome"]) for x in d["attempts"]] for d in done]
        # each task run once to its end, on b: a's claims (and any task a's pull loop
        # read before it died) lost and taken over, the others b's from the start
        lost = [("a", "lost"), ("b", "succeeded")]
        assert all(r in (lost, [("b", "succeeded")]) for r in runs), runs
        assert sum(r == lost for r in runs) >= claimed
        listed = b.call("tasks.list", {"limit": 50})["tasks"]
        assert sorted((t["task_id"], t["status"], t["node"]) for t in listed
                      if t["task_id"] in ids) == sorted((t, "succeeded", "b") for t in ids)
