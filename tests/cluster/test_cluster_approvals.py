"""A cluster task asks a person (issue 55, corral/cluster/clusterasks.py, docs/approvals.md
#on-a-cluster): its ask is kept in the cluster's Redis, listed and decided on any node,
once; the answer reaches the attempt waiting for it wherever it runs; the asking node
kill -9'd while it waits, the node that takes the task over finds the same ask pending
(not asked again), and once approved the call runs once. Another tenant's caller neither
sees nor decides it; a forged ask in Redis is refused and counted; Redis away, the inbox
says so and nothing asked is lost. A question (`ctx.ask`) and an MCP server's elicitation
are asked and answered across nodes as an approval is."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis as redis_py

from corral import jsonrpc
from corral.cluster import records
from corral.cluster.clusterasks import ASK, END
from corral.cluster.keys import Keys
from corral.cluster.scripts import KEEP_ASKS, Scripts

from .. import warmforks
from ..conftest import ROOT
from ..daemon_harness import PY, free_port
from ..redis_harness import RedisServer
from ..servers.conformance_fixtures import ASK_NAME_SCHEMA
from ..servers.model_upstream import StandIn
from ..test_approvals import bump, counted, fleet
from ..test_daemon_cli import wait_until
from ..test_elicitations import TENANTS, ask_name
from ..test_elicitations import fleet as elicit_fleet
from ..test_model_gateway import (
    AGENTS_PRELOAD,
    upstream,  # noqa: F401 (a fixture)
)
from ..test_model_gateway import KEY as PROVIDER_KEY
from ..test_model_gateway import fleet as model_fleet
from .claimscript import claim_script
from .harness import CALM_TTL, STEADY_TTL, Node, nodes, run
from .test_cluster_specs import log
from .test_cluster_steps import running_task
from .test_takeover import said_of_leases

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent.parent


@pytest.fixture(scope="module", autouse=True)
def _models_server_early() -> None:
    """The model agents' server, which the model-call test's fleet forks its agents from,
    started as this module's first test on the worker begins (`warmforks.prestart`):
    started by that async test itself at load 40-60, its imports took past READY_WAIT."""
    warmforks.prestart(*AGENTS_PRELOAD)


def both_alive(ns: dict[str, Node]) -> None:
    first = next(iter(ns.values()))
    wait_until(lambda: sum(n["alive"] for n in first.nodes()["nodes"]) == len(ns),
               what="every node alive")


def pending(n: Node) -> list[dict[str, Any]]:
    asks: list[dict[str, Any]] = n.call("approvals.list")["asks"]
    return asks


def listed_again(n: Node) -> list[str] | None:
    """The pending asks' ids, None while the node cannot read them (Redis starting)."""
    try:
        return [x["id"] for x in pending(n)]
    except AssertionError:  # the harness's error: its message
        return None


def other_than(ns: dict[str, Node], node: Node) -> Node:
    return next(n for n in ns.values() if n is not node)


def test_an_approval_asked_on_one_node_is_listed_and_decided_once_on_another(
        tmp: Path, redis: RedisServer) -> None:
    agents = fleet(tmp)
    with nodes(tmp, redis, {"a": agents, "b": agents}, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "writer", "input": bump(1)}
                               )["task_id"]
        [ask] = wait_until(lambda: pending(ns["b"]), what="its ask, listed on b")
        assert (ask["kind"], ask["task_id"], ask["agent"], ask["subject"], ask["end"]) == (
            "approval", task_id, "writer", {"tool": "counting__bump", "arguments": {"i": 1}},
            None)
        assert [a["id"] for a in pending(ns["a"])] == [ask["id"]]
        runner = wait_until(lambda: running_task(ns, task_id), what="its attempt")
        other = other_than(ns, runner)
        assert ns["a"].call("approvals.get", {"id": ask["id"]})["end"] is None
        assert counted(tmp) == []
        # decided on the node that does not run it, from the CLI
        approved = other.cli("approvals", "approve", ask["id"])
        assert approved.returncode == 0, approved.stderr
        done = ns["a"].call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"][0]["content"][0]["text"] == "bumped 1"
        assert counted(tmp) == ["1"]
        # once: a second decision, on either node, is refused naming the first
        for n in ns.values():
            again = n.cli("approvals", "deny", ask["id"])
            assert again.returncode != 0
            assert re.search(rf"ask {ask['id']} has ended: approved by uid \d+ pid \d+ at ",
                             again.stderr), again.stderr
            got = n.call("approvals.get", {"id": ask["id"]})
            assert (got["end"], got["by"]) == ("approved", approved_by(approved.stdout))
            assert pending(n) == []
        assert counted(tmp) == ["1"]


def test_a_cancelled_tasks_ask_is_withdrawn_and_counts_against_no_bound(
        tmp: Path, redis: RedisServer) -> None:
    """A task that ends while it asks (cancelled on the node that runs it): its ask
    leaves the pending asks its tenant's bound counts at once, is listed nowhere, and
    read by its id on another node it is withdrawn, which a decision then finds."""
    agents = fleet(tmp)
    with nodes(tmp, redis, {"a": agents, "b": agents}, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        a, b = ns["a"], ns["b"]
        task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(1)})["task_id"]
        [ask] = wait_until(lambda: pending(b), what="its ask, listed on b")
        a.call("tasks.cancel", {"task_id": task_id})
        assert a.call("tasks.get", {"task_id": task_id, "wait": True})["status"] == (
            "cancelled")
        rc, keys = redis_py.Redis(port=redis.port), Keys("test")  # (the nodes' cluster)
        try:
            assert rc.exists(keys.ask(ask["id"])) == 1
            assert rc.zcard(keys.asks_pending()) == 0
            assert rc.zcard(keys.asks_pending("default")) == 0
        finally:
            rc.close()
        assert pending(b) == [] and pending(a) == []
        got = b.call("approvals.get", {"id": ask["id"]})
        assert (got["end"], got["by"]) == ("withdrawn", "corral"), got
        again = b.cli("approvals", "approve", ask["id"])
        assert again.returncode != 0 and f"ask {ask['id']} has ended: withdrawn" in (
            again.stderr), again.stderr
        assert counted(tmp) == []


def approved_by(said: str) -> str:
    """Who the CLI says decided (`approved by WHO at TIME`)."""
    found = re.search(r"^approved by (.+) at ", said, re.M)
    assert found is not None, said
    return found.group(1)


def askers() -> str:
    return textwrap.dedent(f"""
        [agents.asker]
        command = ["{PY}", "{HERE}/asking_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 1
    """)


def waited_on(ns: dict[str, Node]) -> int:
    """The asks the nodes' attempts wait on now (`corral stats` -> cluster.asks)."""
    return sum(n.call("stats.get")["cluster"]["asks"]["waited_on"] for n in ns.values())


def test_the_asks_waited_on_are_counted_across_tasks_as_each_ends(
        tmp: Path, redis: RedisServer) -> None:
    """Three tasks waiting on four asks (one task on two at once): each decision on the
    node that does not wait, and a task's cancel, takes its own asks out of the count,
    which its waiting node reads from its channel's end of the ask."""
    agents = fleet(tmp).replace("[agents.writer]\n", "[agents.writer]\n"
                                                     "max_concurrent_tasks = 3\n", 1)
    with nodes(tmp, redis, {"a": agents, "b": agents}, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        a = ns["a"]
        two = a.call("tasks.submit", {"agent": "writer", "input": {
            "do": "tools-at-once", "calls": [bump(1), bump(2)]}})["task_id"]
        one, cancelled = (a.call("tasks.submit", {"agent": "writer", "input": bump(i)}
                                 )["task_id"] for i in (3, 4))
        asks = wait_until(lambda: len(p := pending(a)) == 4 and p, what="the four asks")
        by_call = {x["subject"]["arguments"]["i"]: x for x in asks}
        assert [(i, by_call[i]["task_id"]) for i in sorted(by_call)] == [
            (1, two), (2, two), (3, one), (4, cancelled)]
        wait_until(lambda: waited_on(ns) == 4, what="the four waited on")

        def approve_elsewhere(i: int, left: int) -> None:
            decider = other_than(ns, running_task(ns, by_call[i]["task_id"]))
            approved = decider.cli("approvals", "approve", by_call[i]["id"])
            assert approved.returncode == 0, approved.stderr
            wait_until(lambda: waited_on(ns) == left,
                       what=f"{left} waited on once ask {i} is approved")

        approve_elsewhere(1, 3)
        approve_elsewhere(3, 2)
        assert a.call("tasks.get", {"task_id": one, "wait": True})["status"] == "succeeded"
        a.call("tasks.cancel", {"task_id": cancelled})
        assert a.call("tasks.get", {"task_id": cancelled, "wait": True})["status"] == (
            "cancelled")
        wait_until(lambda: waited_on(ns) == 1, what="the cancelled task's wait ended")
        assert [x["id"] for x in pending(a)] == [by_call[2]["id"]]
        assert a.cli("approvals", "approve", by_call[2]["id"]).returncode == 0
        done = a.call("tasks.get", {"task_id": two, "wait": True})
        assert done["status"] == "succeeded", done
        assert waited_on(ns) == 0
        assert sorted(counted(tmp)) == ["1", "2", "3"]


def test_a_question_asked_on_one_node_is_answered_on_another(tmp: Path,
                                                            redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": askers(), "b": askers()}, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        schema = {"type": "object", "properties": {"n": {"type": "integer"}},
                  "required": ["n"]}
        task_id = ns["a"].call("tasks.submit", {"agent": "asker", "input": {
            "prompt": "how many?", "schema": schema}})["task_id"]
        [ask] = wait_until(lambda: pending(ns["a"]), what="its question")
        assert (ask["kind"], ask["subject"]) == (
            "question", {"prompt": "how many?", "schema": schema})
        other = other_than(ns, wait_until(lambda: running_task(ns, task_id),
                                          what="its attempt"))
        # an answer that does not fit its schema is refused; the task waits on
        bad = other.cli("approvals", "answer", ask["id"], "--data", '{"n": "many"}')
        assert bad.returncode != 0
        assert (f"the answer does not fit ask {ask['id']}'s schema: n: 'many' is not of "
                f"type 'integer'") in bad.stderr, bad.stderr
        assert [a["id"] for a in pending(other)] == [ask["id"]]
        good = other.cli("approvals", "answer", ask["id"], "--data", '{"n": 3}')
        assert good.returncode == 0, good.stderr
        done = ns["a"].call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"]["answer"] == {"n": 3}


def test_a_task_past_its_asks_bound_is_refused_by_name_and_nothing_more_is_asked(
        tmp: Path, redis: RedisServer) -> None:
    """[cluster] max_asks_per_task 1: a task's first question is asked and answered, its
    second refused to the agent (QUOTA_EXCEEDED, the bound named), nothing kept of it."""
    with nodes(tmp, redis, {"a": askers()}, extra="max_asks_per_task = 1\n",
               ttl=CALM_TTL) as ns:
        a = ns["a"]
        both_alive(ns)
        task_id = a.call("tasks.submit", {"agent": "asker", "input": {
            "prompt": "Go?", "twice": True}})["task_id"]
        [ask] = wait_until(lambda: pending(a), what="its first question")
        answered = a.cli("approvals", "answer", ask["id"], "--data", '"yes"')
        assert answered.returncode == 0, answered.stderr
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"] == {
            "refused": f"task {task_id} has made 1 asks of a person, its bound "
                       "(max_asks_per_task 1): nothing more is asked",
            "code": jsonrpc.QUOTA_EXCEEDED}
        assert pending(a) == []
        assert a.call("stats.get")["cluster"]["asks"]["asked"] == 1
        assert a.call("approvals.get", {"id": ask["id"]})["end"] == "answered"


def test_the_supervisors_pending_asks_bound_holds_the_clusters_asks(
        tmp: Path, redis: RedisServer) -> None:
    """[supervisor] max_pending_asks_per_tenant 1 on a cluster: a second task's question
    is refused to its agent by the bound's name (the config's, not the default) while the
    first waits, nothing kept of it; the first answered, the next one is asked."""
    two_at_once = askers() + "max_concurrent_tasks = 2\n"
    with nodes(tmp, redis, {"a": two_at_once},
               supervisor="max_pending_asks_per_tenant = 1\n", ttl=CALM_TTL) as ns:
        a = ns["a"]
        both_alive(ns)
        first = a.call("tasks.submit", {"agent": "asker", "input": {"prompt": "One?"}}
                       )["task_id"]
        [ask] = wait_until(lambda: pending(a), what="the first question")
        second = run(a, "asker", {"prompt": "Two?"})
        assert second["status"] == "succeeded", second
        assert second["output"] == {
            "refused": "tenant default's tasks hold 1 pending asks, its bound "
                       "(max_pending_asks_per_tenant 1)",
            "code": jsonrpc.QUOTA_EXCEEDED}
        assert [x["id"] for x in pending(a)] == [ask["id"]]
        assert a.call("stats.get")["cluster"]["asks"]["asked"] == 1
        answered = a.cli("approvals", "answer", ask["id"], "--data", '"yes"')
        assert answered.returncode == 0, answered.stderr
        done = a.call("tasks.get", {"task_id": first, "wait": True})
        assert done["output"]["answer"] == "yes", done
        third = a.call("tasks.submit", {"agent": "asker", "input": {"prompt": "Three?"}}
                       )["task_id"]
        [again] = wait_until(lambda: pending(a), what="the next question")
        assert again["task_id"] == third


def test_the_asking_node_killed_the_ask_outlives_it_and_its_call_runs_once(
        tmp: Path, redis: RedisServer) -> None:
    agents = fleet(tmp)
    with nodes(tmp, redis, {"a": agents, "b": agents}, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "writer", "input": bump(4)}
                               )["task_id"]
        [ask] = wait_until(lambda: pending(ns["a"]), what="its ask")
        killed = wait_until(lambda: running_task(ns, task_id), what="its attempt")
        killed.kill9()
        other = other_than(ns, killed)
        # taken over: the retry on the other node made the same call and waits on the
        # same ask, not a second one
        wait_until(lambda: other.call("stats.get")["cluster"]["asks"]["waited_on"] == 1,
                   timeout=60, what="the retry on the other node waiting on its ask")
        info = other.call("tasks.get", {"task_id": task_id})
        assert [(x["node"], x["outcome"]) for x in info["attempts"]] == [
            (killed.name, "lost"), (other.name, "running")], info["attempts"]
        assert other.call("stats.get")["cluster"]["asks"]["asked"] == 0
        assert [a["id"] for a in pending(other)] == [ask["id"]]
        # `corral task ID` on either side says what it waits for
        shown = other.cli("task", task_id)
        assert (f'waiting for: approval of counting__bump {{"i":4}} (ask {ask["id"]})'
                in shown.stdout), shown.stdout
        assert counted(tmp) == []
        decided = other.call("approvals.resolve", {"id": ask["id"], "decision": "approved"})
        assert decided["end"] == "approved"
        done = other.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert [(x["node"], x["outcome"]) for x in done["attempts"]] == [
            (killed.name, "lost"), (other.name, "succeeded")]
        assert counted(tmp) == ["4"]
        assert pending(other) == []


def tenants_fleet(tmp: Path, port: int) -> str:
    """The writer an agent of tenant t, its calls held by its tenant's `approve`, which
    its own table does not say (a claim's tenant is its agent's where it runs)."""
    agents = fleet(tmp).replace('approve = ["counting__bump"]\n', "")
    agents = agents.replace("[agents.writer]", '[agents.writer]\ntenant = "t"', 1)
    agents = agents.replace("[mcp_servers.counting]", "[mcp_servers.counting]\nshared = true")
    return (agents + '\n[tenants.t]\napprove = ["counting__*"]\n[tenants.u]\n'
            + f'[http]\nlisten = "127.0.0.1:{port}"\n')


def http(base: str, secret: str, path: str, body: dict[str, Any] | None = None
         ) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{base}{path}", data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_another_tenants_caller_neither_sees_nor_decides_a_cluster_ask(
        tmp: Path, redis: RedisServer) -> None:
    pa, pb = free_port(), free_port()
    with nodes(tmp, redis, {"a": tenants_fleet(tmp, pa), "b": tenants_fleet(tmp, pb)},
               ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "writer", "input": bump(2)}
                               )["task_id"]
        [ask] = wait_until(lambda: pending(ns["a"]), what="its ask")
        assert ask["tenant"] == "t"
        base = f"http://127.0.0.1:{pb}/api/v1"
        secrets = {}
        for name, tenant in (("tt", "t"), ("tu", "u")):
            r = ns["b"].cli("token", "create", name, "--scope", "approvals",
                            "--tenant", tenant)
            assert r.returncode == 0, r.stderr
            secrets[tenant] = r.stdout.strip()
        # tenant u's caller on node b: no such ask, listed or named
        assert http(base, secrets["u"], "/approvals") == (200, {"asks": []})
        code, got = http(base, secrets["u"], f"/approvals/{ask['id']}")
        assert code == 404 and got["detail"] == f"no such ask: {ask['id']}", got
        code, got = http(base, secrets["u"], f"/approvals/{ask['id']}/resolve",
                         {"decision": "approved"})
        assert code == 404 and got["detail"] == f"no such ask: {ask['id']}", got
        assert [a["id"] for a in pending(ns["a"])] == [ask["id"]]
        assert counted(tmp) == []
        # a tenant's caller reads its tenant's pending asks, never every tenant's: a
        # record in the cluster's set alone (forged, so that reading it is counted) is
        # read by the operator's listing, not by a tenant's
        forge_pending(redis, {**ask, "id": "ask-forged", "tenant": "v"})
        assert http(base, secrets["u"], "/approvals") == (200, {"asks": []})
        code, got = http(base, secrets["t"], "/approvals")
        assert code == 200 and [a["id"] for a in got["asks"]] == [ask["id"]]
        assert ns["b"].call("stats.get")["cluster"]["trust"]["refused"]["asks"] == 0
        assert [a["id"] for a in pending(ns["b"])] == [ask["id"]]
        assert ns["b"].call("stats.get")["cluster"]["trust"]["refused"]["asks"] == 1
        # tenant t's caller sees it and decides it
        code, got = http(base, secrets["t"], f"/approvals/{ask['id']}/resolve",
                         {"decision": "denied", "reason": "not today"})
        assert code == 200 and got["end"] == "denied", got
        done = ns["a"].call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["output"][0]["isError"] is True
        assert done["output"][0]["content"][0]["text"] == (
            f"tool call counting__bump was denied by token tt (ask {ask['id']}): not today")
        assert counted(tmp) == []


def forge_pending(redis: RedisServer, ask: dict[str, Any]) -> None:
    """An ask written by a Redis writer without the cluster key, in the cluster's set of
    pending asks (not its tenant's)."""
    r = redis_py.Redis(port=redis.port)
    try:
        r.hset(Keys("test").ask(ask["id"]), mapping={"rec": msgspec.json.encode(ask),
                                                     "mac": "0" * 64})
        r.zadd(Keys("test").asks_pending(), {ask["id"]: 0})
    finally:
        r.close()


def test_a_forged_ask_in_redis_is_refused_and_counted(tmp: Path,
                                                      redis: RedisServer) -> None:
    """Written by a Redis writer without the cluster key: listed on no node, decided by
    no one, said in the log and counted; the real asks beside it are listed."""
    agents = fleet(tmp)
    # (a TTL no loaded host's stall reaches: its one node's lapse took its task back, and
    # the approved call was made again, counted twice, in a fresh clone at load 30-40)
    with nodes(tmp, redis, {"a": agents}, ttl=CALM_TTL) as ns:
        a = ns["a"]
        both_alive(ns)
        task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(3)})["task_id"]
        [real] = wait_until(lambda: pending(a), what="the real ask")
        forge_pending(redis, {**real, "id": "ask-forged", "tenant": "u", "subject": {
            "tool": "counting__bump", "arguments": {"i": 99}}})
        # the real ask listed due long ago by a Redis writer: a beat's sweep lists it
        # again at its signed deadline (approve_timeout's), never timing it out early
        r = redis_py.Redis(port=redis.port)
        try:
            r.zadd(Keys("test").ask_deadlines, {real["id"]: 0})
            wait_until(lambda: r.zscore(Keys("test").ask_deadlines, real["id"])
                       == real["deadline"], what="the forged deadline put right")
        finally:
            r.close()
        assert [x["id"] for x in pending(a)] == [real["id"]]
        assert [x["id"] for x in pending(a)] == [real["id"]]
        refused = a.cli("approvals", "approve", "ask-forged")
        assert refused.returncode != 0
        assert "no such ask: ask-forged" in refused.stderr, refused.stderr
        assert a.call("stats.get")["cluster"]["trust"]["refused"]["asks"] == 1
        assert ("cluster: refused ask ask-forged from Redis: its MAC does not verify"
                in log(a))
        assert a.cli("approvals", "approve", real["id"]).returncode == 0
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert counted(tmp) == ["3"]


def test_a_decision_past_the_asks_deadline_is_refused_and_the_ask_timed_out(
        tmp: Path, redis: RedisServer) -> None:
    """Between an ask's deadline and the beat that times it out, a person's decision is
    refused (END's deadline check): the ask ends timed out at once, as its policy says."""
    agents = fleet(tmp)
    # a long beat: the node waiting on the ask reads it (and times it out) once a beat
    with nodes(tmp, redis, {"a": agents, "b": agents}, beat=5.0, ttl=20.0) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "hasty", "input": bump(6)}
                               )["task_id"]
        [ask] = wait_until(lambda: pending(ns["b"]), what="its ask, listed on b")
        wait_until(lambda: time.time() > ask["deadline"], what="its deadline past")
        refused = ns["b"].cli("approvals", "approve", ask["id"])
        assert refused.returncode != 0
        assert re.search(rf"ask {ask['id']} has ended: timed_out by corral at ",
                         refused.stderr), refused.stderr
        got = ns["a"].call("approvals.get", {"id": ask["id"]})
        assert (got["end"], got["by"]) == ("timed_out", "corral")
        done = ns["a"].call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "failed", done
        assert done["error"]["message"] == (
            f"tool call counting__bump was not approved within 0.5 s (approve_timeout; "
            f"ask {ask['id']})")
        assert counted(tmp) == []


def test_an_asks_deadline_is_the_clock_of_the_node_that_waits_on_it(
        tmp: Path, redis: RedisServer) -> None:
    """Kept by the engine's waits, as a node task's ask's is: on a node's manual clock a
    decision past the wall's deadline is applied (the clock has not reached it), and a
    move of that clock past it ends the next ask timed out, its task failed as its
    policy says."""
    agents = fleet(tmp)
    # a TTL no loaded host's stall reaches: it waits on no lapse, and a lapse of its one
    # node takes its task back, whose call a fenced node could not journal is made again
    # (docs/durable.md: a cluster's journal keeps no marks), as a whole run at load 20-35
    # counted the approved call at the steady TTL: twice (at the short one a fresh clone
    # at load waited for the approved task's end in vain)
    with nodes(tmp, redis, {"a": agents}, supervisor="manual_clock = true",
               ttl=CALM_TTL) as ns:
        a = ns["a"]
        both_alive(ns)
        first = a.call("tasks.submit", {"agent": "hasty", "input": bump(7)})["task_id"]
        [ask] = wait_until(lambda: pending(a), what="its ask")
        wait_until(lambda: time.time() > ask["deadline"] + 1.0, what="the wall past it")
        assert a.cli("approvals", "approve", ask["id"]).returncode == 0
        done = a.call("tasks.get", {"task_id": first, "wait": True})
        assert done["status"] == "succeeded", done
        assert [x["outcome"] for x in done["attempts"]] == ["succeeded"], done
        assert counted(tmp) == ["7"]
        second = a.call("tasks.submit", {"agent": "hasty", "input": bump(8)})["task_id"]
        [ask] = wait_until(lambda: pending(a), what="its ask")
        wait_until(lambda: running_task(ns, second), what="its attempt waiting")
        moved = a.cli("clock", "--advance", "1")
        assert moved.returncode == 0, moved.stderr
        done = a.call("tasks.get", {"task_id": second, "wait": True})
        assert done["status"] == "failed", done
        assert done["error"]["message"] == (
            f"tool call counting__bump was not approved within 0.5 s (approve_timeout; "
            f"ask {ask['id']})")
        got = a.call("approvals.get", {"id": ask["id"]})
        assert (got["end"], got["by"]) == ("timed_out", "corral")
        assert counted(tmp) == ["7"]


def test_redis_away_the_inbox_says_so_and_nothing_asked_is_lost(
        tmp: Path, redis: RedisServer) -> None:
    redis.appendfsync = "always"
    redis.restart()
    agents = fleet(tmp)
    # a node TTL longer than Redis is away: the node's claim outlives the outage
    with nodes(tmp, redis, {"a": agents}, ttl=30.0) as ns:
        a = ns["a"]
        both_alive(ns)
        task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(5)})["task_id"]
        [ask] = wait_until(lambda: pending(a), what="its ask")
        redis.kill()
        listed = a.cli("approvals")
        assert listed.returncode != 0
        assert re.search(r"the cluster's Redis at redis://127\.0\.0\.1:\d+/0 is unreachable "
                         r"\(.+\): the cluster's asks were not read", listed.stderr), \
            listed.stderr
        decided = a.cli("approvals", "approve", ask["id"])
        assert decided.returncode != 0
        assert re.search(rf"the cluster's Redis at .+ is unreachable \(.+\): ask {ask['id']} "
                         r"was not read", decided.stderr), decided.stderr
        redis.start()
        # the same ask, pending, its task waiting on it
        wait_until(lambda: listed_again(a) == [ask["id"]], what="the ask listed again")
        assert counted(tmp) == []
        assert a.cli("approvals", "approve", ask["id"]).returncode == 0
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert counted(tmp) == ["5"]


K = Keys("t")
TID = "0190a5c0-0000-7000-8000-0000000000a5"


async def test_only_the_claim_asks_an_ask_ends_once_and_goes_with_its_task(
        client: Any) -> None:
    """The scripts alone (clusterasks.ASK, END): an ask under a claim's fence token, the
    same call's ask found again, one end, a second refused; the task's end takes its asks
    by call, and a later decision withdraws the ask instead."""
    s = Scripts(client)
    ask_script, end_script = client.register_script(ASK), client.register_script(END)
    assert await s.submit(keys=[K.task(TID), K.stream("acme", "w", 0),
                                K.priorities("acme", "w"), K.agents, K.live],
                          args=[TID, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "",
                                "", "", "acme", "mac"]) == 1
    entry = await client.hget(K.task(TID), "entry")
    token, *_ = await claim_script(s)(
        keys=[K.task(TID), K.attempts(TID), K.fence, K.stream("acme", "w", 0)],
        args=["n/1", "n", "2.0", entry, records.claimed_attempt("n", 2.0), 2, "30.0", "acme"])

    async def ask(fence: int, key: str, ask_id: str, per_task: int = 10) -> Any:
        return await ask_script(keys=[K.task(TID), K.task_asks(TID), K.ask(ask_id),
                                      K.asks_pending(), K.asks_pending("acme")],
                                args=[fence, key, ask_id, b"{}", "mac", "3.0", 10, 1, "",
                                      per_task])

    async def end(ask_id: str, how: str, said: bytes = b"approved") -> Any:
        return await end_script(keys=[K.ask(ask_id), K.asks_pending(),
                                      K.asks_pending("acme"), K.task(TID)],
                                args=[ask_id, said, "m1", b"withdrawn", "m2", 60, how,
                                      K.asks_ended])

    assert await ask(token + 1, "tool:x", "ask-1") == [0]  # not this claim's: refused
    assert await ask(token, "tool:x", "ask-1") == [1]
    assert await ask(token, "tool:x", "ask-2") == [2, b"ask-1"]  # the same call's
    assert await ask(token, "tool:y", "ask-3") == [-2, 1]  # the tenant's bound (1)
    assert await end("ask-1", "withdraw") == [4]  # its task runs on: not withdrawn
    told = client.pubsub()
    await told.subscribe(K.asks_ended)
    assert await end("ask-1", "decide") == [1, b"approved", b"m1"]
    assert await end("ask-1", "decide", b"denied") == [2, b"approved", b"m1"]  # once
    # its end told once on the channel the waiting node listens on
    heard = [m["data"] for m in [await told.get_message(timeout=0.5) for _ in range(3)]
             if m is not None and m["type"] == "message"]
    assert heard == [b"ask-1"]
    await told.aclose()
    assert await client.zcard(K.asks_pending()) == 0
    # an ask with a deadline is listed due then, and taken off that list as it ends
    assert await ask_script(keys=[K.task(TID), K.task_asks(TID), K.ask("ask-5"),
                                  K.asks_pending(), K.asks_pending("acme")],
                            args=[token, "tool:w", "ask-5", b"{}", "mac", "3.0", 10, 1,
                                  "5.0", 10]) == [1]
    assert await client.zscore(K.ask_deadlines, "ask-5") == 5.0
    assert await end("ask-5", "decide", b"timed_out") == [1, b"timed_out", b"m1"]
    assert await client.zscore(K.ask_deadlines, "ask-5") is None
    assert await client.zcard(K.asks_pending("acme")) == 0
    assert await end("ask-9", "decide") == [0]  # no such ask
    # a task's asks over its life, pending or ended, at their bound: nothing more asked
    assert await ask(token, "tool:y", "ask-3", per_task=2) == [-3, 2]
    assert await client.exists(K.ask("ask-3")) == 0
    assert await ask(token, "tool:x", "ask-3", per_task=2) == [2, b"ask-1"]  # as before
    assert await ask(token, "tool:y", "ask-3") == [1]
    # the tenant's ended tasks' asks kept: the newest KEEP_ASKS, the oldest records gone
    old = [f"old-{i:04}" for i in range(KEEP_ASKS - 1)]
    await client.zadd(K.asks_done("acme"), dict.fromkeys(old, 1))
    for o in old[:3]:
        await client.hset(K.ask(o), "rec", b"{}")
    assert await s.finish(keys=[K.task(TID), K.attempts(TID), K.stream("acme", "w", 0),
                                K.outcomes, *K.listed],
                          args=[token, TID, "succeeded", b"{}", b"", "3.0", entry, 0, 60, 0,
                                "0", ""]) == 1
    assert await client.exists(K.task_asks(TID)) == 0  # its asks by call went with it
    done = await client.zrange(K.asks_done("acme"), 0, -1)
    assert len(done) == KEEP_ASKS
    assert done[:KEEP_ASKS - 3] == [o.encode() for o in old[2:]]
    assert sorted(done[-3:]) == [b"ask-1", b"ask-3", b"ask-5"]
    assert [await client.exists(K.ask(o)) for o in old[:3]] == [0, 0, 1]
    assert await client.exists(K.ask("ask-1")) == 1
    # its pending ask out of what the bounds count at once, its record kept as the task's
    assert await client.zscore(K.asks_pending("acme"), "ask-3") is None
    assert await client.zscore(K.asks_pending(), "ask-3") is None
    assert 0 < await client.ttl(K.ask("ask-3")) <= 60
    assert await ask(token, "tool:z", "ask-4") == [0]  # ended: nothing more asked
    # a decision of an ask whose task ended: the ask is withdrawn instead
    assert await end("ask-3", "decide") == [3, b"withdrawn", b"m2"]
    assert await client.zcard(K.asks_pending("acme")) == 0


def test_a_question_asked_while_redis_is_away_is_refused_and_nothing_is_kept(
        tmp: Path, redis: RedisServer) -> None:
    redis.appendfsync = "always"
    redis.restart()
    marks, gate = tmp / "marks", tmp / "gate"
    with nodes(tmp, redis, {"a": askers()}, ttl=30.0) as ns:
        a = ns["a"]
        both_alive(ns)
        task_id = a.call("tasks.submit", {"agent": "asker", "input": {
            "prompt": "go?", "marks": str(marks), "gate": str(gate)}})["task_id"]
        wait_until(marks.exists, 30, "the worker about to ask")
        redis.kill()
        gate.touch()  # it asks now, Redis away
        # refused at once: the task ended, its outcome waiting in the node's outbox
        wait_until(lambda: a.call("stats.get")["cluster"]["outbox"] == 1, 30,
                   "the task's outcome held for Redis")
        redis.start()
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"]["code"] == -32013
        assert re.fullmatch(r"the cluster's Redis at redis://127\.0\.0\.1:\d+/0 is "
                            r"unreachable \(.+\): its question was not asked \(nothing was "
                            r"kept\)", done["output"]["refused"]), done["output"]
        assert pending(a) == []


def test_the_asking_node_restarted_the_ask_waits_on_and_its_call_runs_once(
        tmp: Path, redis: RedisServer) -> None:
    """A graceful restart (SIGTERM, started again): the node gives its claim back, takes
    the task again, and its retry waits on the same ask."""
    with nodes(tmp, redis, {"a": fleet(tmp)}, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        both_alive(ns)
        task_id = a.call("tasks.submit", {"agent": "writer", "input": bump(6)})["task_id"]
        [ask] = wait_until(lambda: pending(a), what="its ask")
        a.stop()
        a.start()
        wait_until(lambda: a.call("stats.get")["cluster"]["asks"]["waited_on"] == 1,
                   timeout=60, what="the retry waiting on its ask")
        assert [x["id"] for x in pending(a)] == [ask["id"]]
        assert a.call("stats.get")["cluster"]["asks"]["asked"] == 0
        assert counted(tmp) == []
        assert a.cli("approvals", "approve", ask["id"]).returncode == 0
        done = a.call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert counted(tmp) == ["6"]


def test_an_mcp_servers_elicitation_in_a_cluster_task_is_answered_on_another_node(
        tmp: Path, redis: RedisServer) -> None:
    agents = elicit_fleet() + TENANTS
    # the steady TTL: no lapse is waited on here. Under the short one a loaded host's node
    # lapsed, its attempt lost with its question unasked, and the attempt that claimed the
    # task again started the server anew, once for each lapse, past the question's bound
    with nodes(tmp, redis, {"a": agents, "b": agents}, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        task_id = ns["a"].call("tasks.submit", {"agent": "asker",
                                                "input": ask_name("stateless")})["task_id"]
        try:
            [ask] = wait_until(lambda: pending(ns["b"]), 30, "the server's question")
        except AssertionError as late:  # (with its attempts and the nodes' lease lines)
            raise AssertionError(late.args[0], ns["a"].call(
                "tasks.get", {"task_id": task_id})["attempts"], said_of_leases(ns.values())
                                 ) from None
        assert (ask["kind"], ask["task_id"], ask["tenant"], ask["subject"]) == (
            "question", task_id, "t", {"prompt": "Hi: what is your name?",
                                       "schema": ASK_NAME_SCHEMA, "server": "stateless",
                                       "tool": "stateless__ask_name"})
        other = other_than(ns, wait_until(lambda: running_task(ns, task_id),
                                          what="its attempt"))
        assert other.cli("approvals", "answer", ask["id"], "--data",
                         '{"name": "Ann"}').returncode == 0
        done = ns["a"].call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"][0]["content"][0]["text"] == "Hi, Ann!"


async def test_a_cluster_tasks_model_call_is_approved_on_another_node_and_made_once(
        tmp: Path, redis: RedisServer, upstream: StandIn,  # noqa: F811 - the fixture
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through each node's model gateway (tests/test_model_approvals.py's agent and
    stand-in provider, in this loop: the nodes are called from threads)."""
    monkeypatch.setenv("CORRAL_TEST_PROVIDER_KEY", PROVIDER_KEY)

    def agents() -> str:
        return model_fleet(tmp, upstream.url, agent_extra='approve_models = ["claude-*"]')

    with nodes(tmp, redis, {"a": agents(), "b": agents()}, ttl=STEADY_TTL) as ns:
        await asyncio.to_thread(both_alive, ns)
        task_id = (await asyncio.to_thread(ns["a"].call, "tasks.submit", {
            "agent": "writer", "input": {"api": "messages", "model": "claude-small",
                                         "calls": 1}}))["task_id"]
        [ask] = await asyncio.to_thread(wait_until, lambda: pending(ns["b"]), 30,
                                        "the model call's ask")
        assert (ask["kind"], ask["task_id"], ask["subject"]) == (
            "approval", task_id, {"model": "claude-small", "endpoint": "/v1/messages",
                                  "cost": 0.0, "why": "approve_models"})
        assert upstream.requests == []  # nothing made before it is approved
        runner = await asyncio.to_thread(wait_until, lambda: running_task(ns, task_id))
        other = other_than(ns, runner)
        await asyncio.to_thread(other.call, "approvals.resolve",
                                {"id": ask["id"], "decision": "approved"})
        done = await asyncio.to_thread(ns["a"].call, "tasks.get",
                                       {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert done["output"]["answers"] == ["echo: call 1"]
        assert len(upstream.requests) == 1


class Watch:
    """`approvals.watch` on a node's socket: its `approvals.ask` notifications in order."""

    def __init__(self, n: Node) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(str(n.sock))
        self.file = self.sock.makefile("rb")
        self.sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "approvals.watch",
                                      "params": {}}).encode() + b"\n")

    def next(self) -> dict[str, Any]:
        while True:
            got = json.loads(self.file.readline())
            assert "error" not in got, got
            if got.get("method") == "approvals.ask":
                told: dict[str, Any] = got["params"]
                return told

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_the_feeds_tell_a_cluster_ask_where_it_is_made_and_where_it_ends(
        tmp: Path, redis: RedisServer) -> None:
    """The node running the task tells its ask as it is made; a node that starts watching
    later has it among the pending; the node that decides it tells its end."""
    with nodes(tmp, redis, {"a": fleet(tmp), "b": ""}, ttl=STEADY_TTL) as ns:
        both_alive(ns)
        on_a = Watch(ns["a"])
        try:
            task_id = ns["b"].call("tasks.submit", {"agent": "writer", "input": bump(7)}
                                   )["task_id"]
            made = on_a.next()
            assert (made["task_id"], made["end"]) == (task_id, None)
        finally:
            on_a.close()
        on_b = Watch(ns["b"])
        try:
            listed = on_b.next()
            assert (listed["id"], listed["end"]) == (made["id"], None)
            ns["b"].call("approvals.resolve", {"id": made["id"], "decision": "approved"})
            ended = on_b.next()
            assert (ended["id"], ended["end"]) == (made["id"], "approved")
        finally:
            on_b.close()
        done = ns["b"].call("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        assert counted(tmp) == ["7"]
