"""A cluster task waiting for a person gives back its claim, its slot and its process
(issue 55 item 4 on a cluster; corral/cluster/clusterasks.py SUSPEND, decision 780;
docs/approvals.md#on-a-cluster): past its agent's `suspend_after` (the node's clock, moved
by `corral clock --advance`) its record is `suspended` in Redis, no node holds it; the
ask decided on any node queues it again in the same step, and whichever node claims it
resumes it by replay: the approved call runs once (the counting server's file). The
suspending node kill -9'd while it waits, a denial, a cancel, a deadline, a forged end
and two decisions racing, each as on one node.

Real processes: the nodes (`corral daemon` subprocesses), their redis-server, workers
(examples/misbehave.py) and the counting MCP server (tests/servers/counting_mcp.py)."""

from __future__ import annotations

import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import redis as redis_py

from corral.cluster.clusterasks import SUSPEND
from corral.cluster.keys import Keys

from ..redis_harness import RedisServer
from ..test_approvals import bump, counted
from ..test_approvals import fleet as approvals_fleet
from ..test_daemon_cli import wait_until
from ..test_suspension import fleet as suspension_fleet
from .harness import STEADY_TTL, Node, nodes
from .test_cluster_approvals import both_alive, other_than, pending
from .test_cluster_specs import log
from .test_cluster_steps import running_task
from .test_cluster_upgrade import KEPT, started
from .test_failover import linked, replicated
from .test_takeover import said_of_leases

pytestmark = pytest.mark.timeout(150)
SUSPEND_AFTER = 300  # the agent's suspend_after: five minutes of the node's clock
CLOCK = "manual_clock = true"
# the nodes run on the steady TTL: no test here waits on a lapse, and a node lapsed under
# the short one at load has its attempt's steps refused by the fence, so the attempt that
# takes the task over makes its calls again (counted twice, by design of the fence)
SUSPENDED_ERROR = (f"waited {SUSPEND_AFTER} s for a person (suspend_after): its task "
                   "resumes by replay when what it asked has ended")


def fleet(tmp: Path, extra: str = "") -> str:
    """The writer (its bump held for approval) suspending past SUSPEND_AFTER, elastic:
    its process sleeps once no task holds it."""
    agents = approvals_fleet(tmp).replace(
        "[agents.writer]\n",
        f"[agents.writer]\nsuspend_after = {SUSPEND_AFTER}\n{extra}", 1)
    return agents + ("[agents.writer.autoscale]\nmin_replicas = 0\nidle_after = 0.3\n")


def record(n: Node, task_id: str) -> dict[str, Any]:
    info: dict[str, Any] = n.call("tasks.get", {"task_id": task_id})
    return info


def writers(n: Node, agent: str = "writer") -> list[dict[str, Any]]:
    return [r for r in n.status().values() if r["name"] == agent]


def suspended_here(ns: dict[str, Node], task_id: str, agent: str = "writer"
                   ) -> tuple[Node, dict[str, Any]]:
    """The task's ask pending, its attempt waiting on a node: that node's clock moved
    past suspend_after, the task is suspended in Redis, and that node holds neither its
    slot nor its process (its elastic writer asleep)."""
    # (wait_until's own bound, a loaded host's: a shorter one was reached at load in the
    # fresh clone r2, the elastic writer started cold)
    [ask] = wait_until(lambda: pending(next(iter(ns.values()))), what="its ask")
    runner = wait_until(lambda: running_task(ns, task_id), what="its attempt")
    wait_until(lambda: runner.call("stats.get")["cluster"]["asks"]["waited_on"] == 1,
               what="its attempt waiting on its ask")
    # (the record has its attempt's worker once the attempt ends: the node's replicas)
    [pid] = [r["pid"] for r in writers(runner, agent) if r["pid"]]
    assert psutil.pid_exists(pid)
    moved = runner.cli("clock", "--advance", "10m")
    assert moved.returncode == 0, moved.stderr
    info = wait_until(lambda: (r := record(runner, task_id))["status"] == "suspended" and r,
                      30, "the task suspended")
    last = info["attempts"][-1]
    assert (last["node"], last["outcome"], last["error"], last["pid"]) == (
        runner.name, "suspended", SUSPENDED_ERROR, pid)
    wait_until(lambda: not psutil.pid_exists(pid)
               and not [r for r in writers(runner, agent) if r["pid"]], 30,
               "its worker gone, the writer asleep on the node that suspended it")
    assert sum(r["tasks_running"] for r in writers(runner, agent)) == 0  # no slot held
    stats = runner.call("stats.get")
    assert stats["cluster"]["asks"]["suspended"] == 1
    assert stats["cluster"]["asks"]["waited_on"] == 0
    # nothing holds it: no claim, no stream entry; its ask pending, listed on every node
    r = redis_py.Redis(port=_port(runner))
    try:
        rec = r.hmget(Keys("test").task(task_id), "fence", "owner", "entry")
        assert rec == [b"0", b"", b""]
        assert r.ttl(Keys("test").task(task_id)) == -1  # kept while it waits
    finally:
        r.close()
    for n in ns.values():
        assert [a["id"] for a in pending(n)] == [ask["id"]]
        assert record(n, task_id)["status"] == "suspended"
    return runner, ask


def _port(n: Node) -> int:
    found = re.search(r'redis = "redis://127\.0\.0\.1:(\d+)', n.config.read_text())
    assert found is not None
    return int(found.group(1))


def test_a_suspended_cluster_task_resumes_by_replay_where_it_is_claimed_its_call_once(
        tmp: Path, redis: RedisServer) -> None:
    agents = fleet(tmp)
    with nodes(tmp, redis, {"a": agents, "b": agents}, supervisor=CLOCK, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "writer", "input": bump(1)}
                               )["task_id"]
        runner, ask = suspended_here(ns, task_id)
        other = other_than(ns, runner)
        # `corral tasks` and `corral task ID` on the other node say it, and what it asks
        listed = other.cli("tasks", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = [t for t in msgspec.json.decode(listed.stdout)["tasks"]
                 if t["task_id"] == task_id]
        assert row["status"] == "suspended"
        shown = other.cli("task", task_id)
        assert "suspended" in shown.stdout, shown.stdout
        assert (f'waiting for: approval of counting__bump {{"i":1}} (ask {ask["id"]})'
                in shown.stdout), shown.stdout
        assert counted(tmp) == []
        approved = other.cli("approvals", "approve", ask["id"])
        assert approved.returncode == 0, approved.stderr
        done = other.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"][0]["content"][0]["text"] == "bumped 1"
        assert [x["outcome"] for x in done["attempts"]] == ["suspended", "succeeded"]
        assert counted(tmp) == ["1"]
        # a second decision, replayed on either node, is refused naming the first
        for n in ns.values():
            again = n.cli("approvals", "approve", ask["id"])
            assert again.returncode != 0
            assert f"ask {ask['id']} has ended: approved by " in again.stderr, again.stderr
        assert counted(tmp) == ["1"]


def test_a_question_after_three_calls_resumes_on_another_node_answered_from_redis(
        tmp: Path, redis: RedisServer) -> None:
    """tests/asking_agent.py makes three journaled calls, then asks: suspended on its
    node, answered on another, the node that claims it replays the three calls from
    the task's steps in Redis (the counting server sees each once) and its question
    returns the answer."""
    agents = suspension_fleet(tmp)
    marks = tmp / "marks"
    with nodes(tmp, redis, {"a": agents, "b": agents}, supervisor=CLOCK, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "asker", "input": {
            "prompt": "Which file?", "calls": 3, "marks": str(marks)}})["task_id"]
        runner, ask = suspended_here(ns, task_id, "asker")
        # (its attempts and what the nodes said of leases, if it ran twice)
        assert counted(tmp) == ["0", "1", "2"], (record(runner, task_id)["attempts"],
                                                 said_of_leases(ns.values()))
        other = other_than(ns, runner)
        answered = other.cli("approvals", "answer", ask["id"], "--data", '"/srv/a"')
        assert answered.returncode == 0, answered.stderr
        done = other.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"] == {"answer": "/srv/a", "second": None, "attempt": 2,
                                  "bumped": ["bumped 0", "bumped 1", "bumped 2"]}
        assert counted(tmp) == ["0", "1", "2"]
        assert marks.read_text() == "1\n2\n"
        assert [x["outcome"] for x in done["attempts"]] == ["suspended", "succeeded"]
        assert done["attempts"][1]["replayed"] == 3


def test_the_suspending_node_killed_the_task_resumes_on_another_its_call_once(
        tmp: Path, redis: RedisServer) -> None:
    agents = fleet(tmp)
    # the steady TTL: the survivor must not lapse while it resumes the task (the lead's
    # fresh clone q1, load ~9, eight workers: its attempt lost to its own lapse under the
    # short one, then run again there, the call still made once)
    with nodes(tmp, redis, {"a": agents, "b": agents}, supervisor=CLOCK,
               ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "writer", "input": bump(2)}
                               )["task_id"]
        runner, ask = suspended_here(ns, task_id)
        other = other_than(ns, runner)
        runner.kill9()
        wait_until(lambda: [n["alive"] for n in other.nodes()["nodes"]
                            if n["node"] == runner.name] == [False], 30,
                   "the suspending node found dead")
        # nothing of it is taken over: it waits, suspended, its ask pending
        assert record(other, task_id)["status"] == "suspended"
        assert [a["id"] for a in pending(other)] == [ask["id"]]
        decided = other.call("approvals.resolve", {"id": ask["id"], "decision": "approved"})
        assert decided["end"] == "approved"
        done = other.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert [(x["node"], x["outcome"]) for x in done["attempts"]] == [
            (runner.name, "suspended"), (other.name, "succeeded")]
        assert counted(tmp) == ["2"]


def test_one_of_two_asks_at_once_decided_the_task_suspends_on_the_other(
        tmp: Path, redis: RedisServer) -> None:
    """Two calls of one task held at once (a thread each): the first approved and made,
    the task still waits on the second, so past suspend_after it gives its claim back;
    the second approved, it resumes by replay, each call made once. The clock passes
    suspend_after while the first is being made (held at the server): the claim is given
    back once its answer is kept, not before (then the answer was lost, and the call made
    again by the resumed attempt: ['7', '7', '8'] under load, issue 72)."""
    hold, gate = tmp / "hold", tmp / "gate"
    agents = fleet(tmp).replace(f'"{tmp}/server-count"]', f'"{tmp}/server-count", "{hold}"]')
    os.mkfifo(gate)
    with nodes(tmp, redis, {"a": agents, "b": agents}, supervisor=CLOCK, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        a = ns["a"]
        task_id = a.call("tasks.submit", {"agent": "writer", "input": {
            "do": "tools-at-once", "calls": [bump(7), bump(8)]}}
        )["task_id"]
        asks = wait_until(lambda: len(p := pending(a)) == 2 and p, 30, "its two asks")
        first, second = sorted(asks, key=lambda x: x["subject"]["arguments"]["i"])
        runner = wait_until(lambda: running_task(ns, task_id), 30, "its attempt")
        wait_until(lambda: runner.call("stats.get")["cluster"]["asks"]["waited_on"] == 2,
                   30, "its attempt waiting on both")
        hold.write_text(f"- 7 {gate}")
        assert a.cli("approvals", "approve", first["id"]).returncode == 0
        wait_until(lambda: not hold.exists(), 30, "the first call held at the server")
        wait_until(lambda: runner.call("stats.get")["cluster"]["asks"]["waited_on"] == 1,
                   30, "its attempt waiting on the second")
        moved = runner.cli("clock", "--advance", "10m")
        assert moved.returncode == 0, moved.stderr
        with open(gate, "w"):  # the first call let go: counted and answered
            pass
        wait_until(lambda: counted(tmp) == ["7"], 30, "the first call made")
        wait_until(lambda: record(runner, task_id)["status"] == "suspended", 30,
                   "the task suspended on its second ask")
        assert [x["id"] for x in pending(a)] == [second["id"]]
        assert a.cli("approvals", "approve", second["id"]).returncode == 0
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert [r["content"][0]["text"] for r in done["output"]] == ["bumped 7", "bumped 8"]
        assert [x["outcome"] for x in done["attempts"]] == ["suspended", "succeeded"]
        assert sorted(counted(tmp)) == ["7", "8"]


def test_a_suspension_redis_took_unconfirmed_gives_the_attempt_back_its_call_once(
        tmp: Path) -> None:
    """SUSPEND ran on the primary, but no replica confirmed it (`ack_replicas`, the
    replica frozen): the node
    is refused the write, yet the task is suspended in Redis. Reading its record again
    the node finds that and gives the attempt back, so the approval (queuing the task
    again in Redis) does not also reach the attempt here: the call runs once."""
    agents = fleet(tmp)
    with replicated(tmp, 1) as (primary, [replica]), \
            nodes(tmp, primary, {"a": agents}, supervisor=CLOCK, ttl=STEADY_TTL,
                  extra="ack_replicas = 1\nack_timeout = 0.5\n") as ns:
        a = ns["a"]
        wait_until(lambda: any(n["alive"] for n in a.nodes()["nodes"]), 30, "node a alive")
        task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(9)})["task_id"]
        [ask] = wait_until(lambda: pending(a), 30, "its ask")
        wait_until(lambda: a.call("stats.get")["cluster"]["asks"]["waited_on"] == 1, 30,
                   "its attempt waiting on its ask")
        # frozen, the replica is still connected to the primary, which runs the write
        # but hears no confirmation of it (the script loaded as a node that suspended a
        # task before has it: a first EVALSHA's NOSCRIPT would go unanswered too)
        r = redis_py.Redis(port=primary.port)
        try:
            r.script_load(SUSPEND)
        finally:
            r.close()
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGSTOP)
        moved = a.cli("clock", "--advance", "10m")
        assert moved.returncode == 0, moved.stderr
        said = wait_until(lambda: (s := a.call("stats.get")["tasks"]["suspensions"])[
            "unsure"] == 1 and s, 30, "the suspension found taken")
        assert said["unwritten"] == 1
        assert record(a, task_id)["status"] == "suspended"
        wait_until(lambda: a.call("stats.get")["cluster"]["asks"]["waited_on"] == 0, 30,
                   "its attempt given back")
        approved_once(tmp, a, primary, replica, ask["id"], task_id)
        a.stop()
        # what it said when the write went unconfirmed, before it read the record again
        assert (f"0 of the 1 replicas ack_replicas asks for confirmed it within 0.5 s "
                f"(ack_timeout)): task {task_id} was not suspended: it waits on its "
                f"attempt") in a.said(), a.said()


def approved_once(tmp: Path, a: Node, primary: RedisServer, replica: RedisServer,
                  ask_id: str, task_id: str) -> None:
    """The frozen replica thawed and in sync, the suspended task's ask approved: it ends
    once, resumed (its attempts `suspended`, `succeeded`), its call made once."""
    assert replica.proc is not None
    replica.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: linked(primary, 1), 30, "the replica back in sync")
    approved = a.cli("approvals", "approve", ask_id)
    assert approved.returncode == 0, approved.stderr
    done = a.call("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    assert [x["outcome"] for x in done["attempts"]] == ["suspended", "succeeded"]
    assert counted(tmp) == ["9"]


def test_a_suspension_unconfirmed_is_read_again_while_redis_is_away_then_found_taken(
        tmp: Path) -> None:
    """As above, but the primary is killed once it ran SUSPEND, before any replica
    confirmed it: the node cannot read the record again either, and reads it once a
    second until Redis answers (the attempt kept meanwhile, nothing given back). Back from
    its AOF, the primary's record says suspended: the attempt is given back, and the task,
    approved, ends once, its call made once."""
    agents = fleet(tmp)
    # a node TTL longer than Redis is away, and time enough to kill the primary before
    # its WAIT for the frozen replica ends
    with replicated(tmp, 1) as (primary, [replica]):
        primary.appendfsync = "always"  # the suspension it ran survives its kill -9
        primary.restart()
        wait_until(lambda: linked(primary, 1), 30, "the replica in sync again")
        with nodes(tmp, primary, {"a": agents}, ttl=30.0, supervisor=CLOCK,
                   extra="ack_replicas = 1\nack_timeout = 20\n") as ns:
            a = ns["a"]
            wait_until(lambda: any(n["alive"] for n in a.nodes()["nodes"]), 30, "node a alive")
            task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(9)}
                             )["task_id"]
            [ask] = wait_until(lambda: pending(a), 30, "its ask")
            wait_until(lambda: a.call("stats.get")["cluster"]["asks"]["waited_on"] == 1,
                       30, "its attempt waiting on its ask")
            r = redis_py.Redis(port=primary.port, socket_timeout=5)
            try:
                r.script_load(SUSPEND)  # (see above: no NOSCRIPT round before the WAIT)
                assert replica.proc is not None
                replica.proc.send_signal(signal.SIGSTOP)
                assert a.cli("clock", "--advance", "10m").returncode == 0
                wait_until(lambda: r.hget(Keys("test").task(task_id), "status")
                           == b"suspended", 15, "SUSPEND run on the primary")
            finally:
                r.close()
            primary.kill()  # (its WAIT unanswered: the node is told the write failed)
            said = wait_until(lambda: (s := a.call("stats.get")["tasks"]["suspensions"])[
                "unwritten"] == 1 and s, 30, "the suspension not known written")
            assert said["unsure"] == 0  # Redis away: the record not read yet
            assert a.call("stats.get")["cluster"]["asks"]["waited_on"] == 1
            primary.start()
            said = wait_until(lambda: (s := a.call("stats.get")["tasks"]["suspensions"])[
                "unsure"] == 1 and s, 30, "the suspension found taken once Redis is back")
            assert (said["unwritten"], said["suspended"]) == (1, 1)
            wait_until(lambda: a.call("stats.get")["cluster"]["asks"]["waited_on"] == 0,
                       30, "its attempt given back")
            assert record(a, task_id)["status"] == "suspended"
            approved_once(tmp, a, primary, replica, ask["id"], task_id)
            a.stop()
            assert re.search(rf"the cluster's Redis at redis://127\.0\.0\.1:\d+/0 is "
                             rf"unreachable \(.+\): task {task_id} was not suspended: it "
                             rf"waits on its attempt", a.said()), a.said()


def test_a_denied_suspended_cluster_task_sees_the_tool_error(tmp: Path,
                                                            redis: RedisServer) -> None:
    agents = fleet(tmp)
    with nodes(tmp, redis, {"a": agents, "b": agents}, supervisor=CLOCK, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["b"].call("tasks.submit", {"agent": "writer", "input": bump(3)}
                               )["task_id"]
        runner, ask = suspended_here(ns, task_id)
        other = other_than(ns, runner)
        denied = other.cli("approvals", "deny", ask["id"], "--reason", "not today")
        assert denied.returncode == 0, denied.stderr
        done = other.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"][0]["isError"] is True
        assert re.fullmatch(rf"tool call counting__bump was denied by uid \d+ pid \d+ "
                            rf"\(ask {ask['id']}\): not today",
                            done["output"][0]["content"][0]["text"]), done["output"]
        assert counted(tmp) == []


def test_a_suspended_cluster_task_cancelled_ends_and_its_ask_is_withdrawn(
        tmp: Path, redis: RedisServer) -> None:
    agents = fleet(tmp)
    with nodes(tmp, redis, {"a": agents, "b": agents}, supervisor=CLOCK, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "writer", "input": bump(4)}
                               )["task_id"]
        runner, ask = suspended_here(ns, task_id)
        other = other_than(ns, runner)
        cancelled = other.cli("cancel", task_id)
        assert cancelled.returncode == 0, cancelled.stderr
        info = record(runner, task_id)
        assert (info["status"], info["error"]["message"]) == (
            "cancelled", "cancelled while suspended (waiting for a person)")
        # its ask, listed nowhere now, and decided by no one: withdrawn
        assert pending(other) == []
        late = other.cli("approvals", "approve", ask["id"])
        assert late.returncode != 0
        assert f"ask {ask['id']} has ended: withdrawn by corral" in late.stderr, late.stderr
        again = other.cli("cancel", task_id)
        assert again.returncode != 0
        assert f"task {task_id} already finished (cancelled)" in again.stderr, again.stderr
        assert counted(tmp) == []


def test_a_suspended_cluster_tasks_ask_times_out_as_its_policy_says(
        tmp: Path, redis: RedisServer) -> None:
    """Its deadline kept by no waiting node: any node's beat ends it timed out, which
    queues the task again, and its resumed attempt fails as `on_timeout` says."""
    # its deadline is the node's clock's, as suspend_after is: past the suspension (ten
    # minutes of the runner's clock), not yet past its deadline until moved again
    agents = fleet(tmp, 'approve_timeout = 900.0\non_timeout = "fail"\n')
    with nodes(tmp, redis, {"a": agents, "b": agents}, supervisor=CLOCK, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "writer", "input": bump(5)}
                               )["task_id"]
        runner, ask = suspended_here(ns, task_id)
        assert runner.call("approvals.get", {"id": ask["id"]})["end"] is None
        moved = runner.cli("clock", "--advance", "10m")
        assert moved.returncode == 0, moved.stderr
        done = runner.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "failed", done
        assert done["error"]["message"] == (
            f"tool call counting__bump was not approved within 900 s (approve_timeout; "
            f"ask {ask['id']})")
        assert [x["outcome"] for x in done["attempts"]] == ["suspended", "failed"]
        got = runner.call("approvals.get", {"id": ask["id"]})
        assert (got["end"], got["by"]) == ("timed_out", "corral")
        assert counted(tmp) == []


def test_a_forged_end_is_not_applied_and_two_decisions_race_to_one(
        tmp: Path, redis: RedisServer) -> None:
    """A Redis writer without the cluster key ends the suspended task's ask: refused,
    counted, the task waits on suspended. Then two decisions at once, on two nodes:
    one is applied (the task resumes once, its call once), the other refused."""
    agents = fleet(tmp)
    with nodes(tmp, redis, {"a": agents, "b": agents}, supervisor=CLOCK, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "writer", "input": bump(6)}
                               )["task_id"]
        runner, ask = suspended_here(ns, task_id)
        k = Keys("test")
        r = redis_py.Redis(port=redis.port)
        try:
            r.hset(k.ask(ask["id"]), mapping={
                "end": msgspec.json.encode(["approved", 1.0, "mallory", None]),
                "emac": "0" * 64})
            got = runner.call("approvals.get", {"id": ask["id"]})
            assert got["end"] is None  # not applied
            assert runner.call("stats.get")["cluster"]["trust"]["refused"]["asks"] >= 1
            assert (f"cluster: refused ask {ask['id']}'s end from Redis: its MAC does not "
                    f"verify" in log(runner))
            assert record(runner, task_id)["status"] == "suspended"
            r.hdel(k.ask(ask["id"]), "end", "emac")  # (END refuses an ask with an end)
        finally:
            r.close()
        said: dict[str, Any] = {}

        def decide(n: Node, how: str) -> None:
            said[n.name] = n.cli("approvals", how, ask["id"])

        racers = [threading.Thread(target=decide, args=(n, how))
                  for n, how in zip(ns.values(), ("approve", "deny"), strict=True)]
        for t in racers:
            t.start()
        for t in racers:
            t.join(60)
        codes = sorted(p.returncode != 0 for p in said.values())
        assert codes == [False, True], {k: (p.returncode, p.stderr) for k, p in said.items()}
        [won] = [name for name, p in said.items() if p.returncode == 0]
        [lost] = [p for p in said.values() if p.returncode != 0]
        assert f"ask {ask['id']} has ended: " in lost.stderr, lost.stderr
        done = runner.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert [x["outcome"] for x in done["attempts"]] == ["suspended", "succeeded"]
        assert counted(tmp) == (["6"] if won == "a" else [])


def test_an_upgraded_node_suspends_its_waiting_cluster_task_which_resumes_once(
        tmp: Path, redis: RedisServer) -> None:
    """`corral upgrade` of a node whose cluster task waits for a person: no image can
    hand over a worker's request held open, so the task is suspended in Redis (its
    agent's calls journaled there: it has a retry left) and the upgrade goes on; the
    answer after it resumes the task by replay, its call once."""
    a = Node(tmp / "a", "a", redis, approvals_fleet(tmp), **KEPT)
    with started(a):
        a.start()
        task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(7)})["task_id"]
        [ask] = wait_until(lambda: pending(a), 30, "its ask")
        wait_until(lambda: a.call("stats.get")["cluster"]["asks"]["waited_on"] == 1, 30,
                   "its attempt waiting on its ask")
        upgraded = a.cli("upgrade", timeout=60)
        assert upgraded.returncode == 0, (upgraded.stdout, upgraded.stderr)
        info = record(a, task_id)
        assert info["status"] == "suspended", info
        assert (info["attempts"][-1]["outcome"], info["attempts"][-1]["error"]) == (
            "suspended", "suspended while it waited for a person, for the daemon's "
                         "upgrade: its task resumes by replay when what it asked has ended")
        assert counted(tmp) == []
        assert a.cli("approvals", "approve", ask["id"]).returncode == 0
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert [x["outcome"] for x in done["attempts"]] == ["suspended", "succeeded"]
        assert counted(tmp) == ["7"]


def test_redis_away_at_its_suspend_after_the_task_waits_on_with_its_attempt(
        tmp: Path, redis: RedisServer) -> None:
    """The suspension is not written (Redis does not answer): said in the log, and the
    task keeps its attempt, waiting on its ask; approved once Redis is back, the call
    runs once in that same attempt."""
    redis.appendfsync = "always"
    redis.restart()
    # a node TTL longer than Redis is away: the node's claim outlives the outage
    with nodes(tmp, redis, {"a": fleet(tmp)}, ttl=30.0, supervisor=CLOCK) as ns:
        a = ns["a"]
        both_alive(ns)
        task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(8)})["task_id"]
        [ask] = wait_until(lambda: pending(a), 30, "its ask")
        wait_until(lambda: a.call("stats.get")["cluster"]["asks"]["waited_on"] == 1, 30,
                   "its attempt waiting on its ask")
        redis.kill()
        assert a.cli("clock", "--advance", "10m").returncode == 0
        wait_until(lambda: a.call("stats.get")["tasks"]["suspensions"]["unwritten"] == 1,
                   30, "the suspension not written")
        redis.start()
        wait_until(lambda: [x["id"] for x in pending(a) or []] == [ask["id"]], 30,
                   "its ask listed again")
        info = record(a, task_id)
        assert (info["status"], info["attempts"][-1]["outcome"]) == ("waiting", "running")
        assert a.call("stats.get")["cluster"]["asks"]["suspended"] == 0
        assert a.cli("approvals", "approve", ask["id"]).returncode == 0
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert [x["outcome"] for x in done["attempts"]] == ["succeeded"]
        assert counted(tmp) == ["8"]
        a.stop()
        assert re.search(rf"the cluster's Redis at redis://127\.0\.0\.1:\d+/0 is unreachable "
                         rf"\(.+\): task {task_id} was not suspended: it waits on its "
                         rf"attempt", a.said()), a.said()
