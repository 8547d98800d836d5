"""A cluster session is its owner's, not its name's (issue 52 item 1, decision 440): its
Redis keys and its state's MAC name the tenant of its agent. Tenant acme's `chat` keeps a
secret in session `s1`; removing `chat` deletes the session from Redis; globex's `chat`
of the same name starts `s1` afresh. A Redis writer without the cluster key who copies
acme's signed state under globex's session gets it refused, and a node refuses to
checkpoint a turn of another tenant's session. Real daemons (the cluster's nodes), real
workers (tests/session_agent.py), a real redis-server."""

from __future__ import annotations

import json
import os
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from corral import jsonrpc
from corral.cluster.keys import Keys
from corral.supervisor.labels import session_record, started_record
from corral.supervisor.tasks.sessions import SessionKey

from ..daemon_harness import PY, free_port
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, Node, nodes
from .test_cluster_specs import log

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent.parent
K = Keys("test")
TENANTS = "[tenants.acme]\n[tenants.globex]\n"
SECRET = "acme's secret"
ACME, GLOBEX = (SessionKey(t, "chat", "s1") for t in ("acme", "globex"))


def chat(tenant: str) -> dict[str, Any]:
    return {"command": [PY, f"{HERE}/session_agent.py"],
            "env": {"PYTHONPATH": str(HERE.parent)}, "stop_timeout": 5.0, "tenant": tenant}


def add(n: Node, tenant: str) -> None:
    """acme's or globex's `chat` added on node n, once the cluster knows n runs it."""
    assert n.call("agents.add", {"agents": {"chat": chat(tenant)}}) == {"added": ["chat"]}
    wait_until(lambda: "chat" in n.nodes()["nodes"][0]["agents"], what="chat served")


def turn(n: Node, value: str) -> Any:
    """A turn of session s1 of chat, submitted to the cluster; its record once it ended."""
    task_id = n.call("tasks.submit", {"agent": "chat", "input": {"turn": value},
                                      "session": "s1"})["task_id"]
    return n.call("tasks.get", {"task_id": task_id, "wait": True})


def keyed(tmp: Path) -> str:
    key = tmp / "cluster.key"
    key.write_bytes(os.urandom(32).hex().encode())
    key.chmod(0o600)
    return f'key_file = "{key}"\n'


def asked(verb: str, url: str, token: str) -> tuple[int, Any]:
    """The REST API's answer to `token`: its status and its JSON body."""
    req = urllib.request.Request(url, method=verb, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as got:
            return got.status, json.loads(got.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_a_removed_agents_cluster_sessions_end_and_the_next_tenant_starts_afresh(
        tmp: Path, redis: RedisServer) -> None:
    r = redis_py.Redis(port=redis.port)
    with nodes(tmp, redis, {"a": TENANTS}, extra=keyed(tmp)) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 1, what="the node")
        add(a, "acme")
        done = turn(a, SECRET)
        assert done["status"] == "succeeded" and done["output"]["turns"] == [SECRET], done
        assert done["attempts"][0]["node"] == "a"  # a cluster task, its session in Redis
        assert r.hget(K.session(ACME), "state").partition(b" ")[2] == (
            b'{"turns":["acme\'s secret"]}')
        assert r.zrange(K.sessions("acme", "chat"), 0, -1) == [b"s1"]
        # the labels its turns kept (as a turn that read an untrusted tool's would) and
        # who started it (an anonymous caller's)
        record = session_record("acme", "chat", "s1")
        labelled = [K.labels(record), K.labels(started_record(record))]
        for key in labelled:
            r.zadd(key, {"taint (after untrusted pol__fetch)": 1.0})
        assert a.call("agents.remove", {"names": ["chat"]}) == {"removed": ["chat"]}
        # ended with its agent: its state, history, counts and labels are gone from Redis,
        # as sessions.end leaves them (the END script)
        assert [k for k in r.scan_iter(match=K.prefix + "s*:*acme*")] == []
        assert r.exists(*labelled) == 0
        add(a, "globex")
        done = turn(a, "globex's first")
        assert done["status"] == "succeeded", done
        assert (done["output"]["turns"], done["output"]["given"]) == (["globex's first"],
                                                                      False)
        assert r.exists(K.session(GLOBEX)) == 1 and r.exists(K.session(ACME)) == 0
    r.close()


def test_a_state_signed_for_another_tenants_session_is_refused(
        tmp: Path, redis: RedisServer) -> None:
    """A Redis writer without the key keeps acme's signed state (its MAC and its JSON)
    and writes it into globex's session of the same agent and session name once globex
    holds the name: its MAC names acme, so
    globex's turn is refused it (said, counted) and starts without it."""
    r = redis_py.Redis(port=redis.port)
    with nodes(tmp, redis, {"a": TENANTS}, extra=keyed(tmp)) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 1, what="the node")
        add(a, "acme")
        assert turn(a, SECRET)["output"]["turns"] == [SECRET]
        signed = r.hget(K.session(ACME), "state")
        # the writer keeps what it read: acme's `chat` is removed (its sessions end) and
        # globex's added under the name
        assert a.call("agents.remove", {"names": ["chat"]}) == {"removed": ["chat"]}
        wait_until(lambda: r.hget(K.session(ACME), "state") is None,
                   what="acme's session gone from Redis")
        add(a, "globex")
        assert turn(a, "globex's first")["output"]["given"] is False
        r.hset(K.session(GLOBEX), "state", signed)
        forged = turn(a, "globex's second")
        assert (forged["output"]["turns"], forged["output"]["given"]) == (
            ["globex's second"], False)
        assert a.call("stats.get")["cluster"]["trust"]["refused"]["sessions"] == 1
        assert ("cluster: refused session state s1 of agent chat from Redis: its MAC does "
                "not verify with this node's cluster key; the turn starts without it"
                ) in log(a)
    r.close()


def test_sessions_of_an_agent_another_node_still_runs_are_kept(
        tmp: Path, redis: RedisServer) -> None:
    """Removing `chat` from one node of two that run it leaves the cluster's sessions of
    it: the other node's `chat` carries on with them."""
    table = textwrap.dedent(f"""
        [agents.chat]
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{HERE.parent}" }}
        stop_timeout = 5.0
        tenant = "acme"
    """)
    # (steady: a live node that lapsed at the short TTL would be no other node running
    # chat to the removal, which then ends the sessions this test keeps)
    with nodes(tmp, redis, {"a": TENANTS + table, "b": TENANTS + table},
               ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                   what="both nodes alive")
        assert turn(a, SECRET)["output"]["turns"] == [SECRET]
        assert a.call("agents.remove", {"names": ["chat"]}) == {"removed": ["chat"]}
        done = turn(b, "more")
        assert (done["output"]["turns"], done["attempts"][0]["node"]) == ([SECRET, "more"],
                                                                          "b")


def test_a_removed_cluster_agents_sessions_end(tmp: Path, redis: RedisServer) -> None:
    """A cluster agent (`placement = "cluster"`, acme's) removed from the cluster: its
    sessions leave Redis with it, whichever node its replicas ran on."""
    r = redis_py.Redis(port=redis.port)
    with nodes(tmp, redis, {"a": TENANTS, "b": TENANTS}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                   what="both nodes alive")
        assert b.call("agents.add", {"agents": {"chat": chat("acme")}, "cluster": True}
                      ) == {"added": ["chat"]}
        wait_until(lambda: any("chat" in n["agents"] for n in a.nodes()["nodes"]),
                   what="chat placed")
        assert turn(a, SECRET)["output"]["turns"] == [SECRET]
        assert r.exists(K.session(ACME)) == 1
        assert b.call("agents.remove", {"names": ["chat"]}) == {"removed": ["chat"]}
        assert [k for k in r.scan_iter(match=K.prefix + "s*:*acme*")] == []
    r.close()


def test_a_tenant_shows_and_ends_its_own_cluster_session_and_not_anothers(
        tmp: Path, redis: RedisServer) -> None:
    """Over HTTP with tenants' tokens, on a node with no local session of the name:
    acme's token shows and ends acme's cluster session; globex's is told there is no
    such session, for a show and for an end, and the session is untouched."""
    port = free_port()
    http = f'[http]\nlisten = "127.0.0.1:{port}"\n'
    base = f"http://127.0.0.1:{port}/api/v1"
    r = redis_py.Redis(port=redis.port)
    with nodes(tmp, redis, {"a": TENANTS + http}, extra=keyed(tmp)) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 1, what="the node")
        add(a, "acme")
        first = turn(a, SECRET)
        assert first["status"] == "succeeded", first
        tokens = {}
        for tenant in ("acme", "globex"):
            made = a.cli("token", "create", tenant, "--tenant", tenant, "--json",
                         "--scope", "tasks:read", "--scope", "tasks:run")
            assert made.returncode == 0, made.stderr
            tokens[tenant] = json.loads(made.stdout)["token"]

        def ask(verb: str, path: str, tenant: str) -> tuple[int, Any]:
            return asked(verb, base + path, tokens[tenant])

        absent = (404, {"type": "about:blank", "title": "not found", "status": 404,
                        "detail": "no such session: s1 of agent chat",
                        "code": jsonrpc.NOT_FOUND})
        assert ask("GET", "/agents/chat/sessions/s1", "globex") == absent
        assert ask("POST", "/agents/chat/sessions/s1/end", "globex") == absent
        assert r.exists(K.session(ACME)) == 1  # untouched
        status, body = ask("GET", "/agents/chat/sessions/s1", "acme")
        assert (status, body["session"]["tenant"], body["session"]["tasks"],
                [h["task_id"] for h in body["history"]]) == (
            200, "acme", 1, [first["task_id"]]), body
        status, body = ask("POST", "/agents/chat/sessions/s1/end", "acme")
        assert (status, body["tenant"], body["session"]) == (200, "acme", "s1"), body
        assert r.exists(K.session(ACME), K.session_tasks(ACME)) == 0
        assert ask("GET", "/agents/chat/sessions/s1", "acme") == absent
    r.close()


def test_a_session_taken_over_by_another_node_stays_its_owners(
        tmp: Path, redis: RedisServer) -> None:
    """acme's `chat` runs on nodes a and b; the node running acme's turn of `s1` is kill
    -9'd mid-turn and the other takes the turn over, with the session's state. acme then
    removes `chat` there and globex adds a `chat` of its own: its `s1` starts afresh, and
    nothing of acme's session is left in Redis nor listed (issue 74: identity through a
    takeover as through a restart, tests/test_identity_restarts.py)."""
    r = redis_py.Redis(port=redis.port)
    marker = tmp / "marker"
    acmes = TENANTS + textwrap.dedent(f"""
        [agents.chat]
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{HERE.parent}" }}
        retries = 1
        stop_timeout = 5.0
        tenant = "acme"
    """)
    with nodes(tmp, redis, {"a": acmes, "b": acmes}, extra=keyed(tmp)) as ns:
        wait_until(lambda: sum(n["alive"] for n in ns["a"].nodes()["nodes"]) == 2,
                   what="both nodes alive")
        assert turn(ns["a"], SECRET)["output"]["turns"] == [SECRET]
        hung = ns["a"].call("tasks.submit", {"agent": "chat", "session": "s1", "input": {
            "turn": "more", "how": "hang", "marker": str(marker)}})["task_id"]
        wait_until(marker.exists, 30, "the turn running")
        killed = ns[ns["a"].call("tasks.get", {"task_id": hung})["attempts"][-1]["node"]]
        other = ns["b" if killed.name == "a" else "a"]
        killed.kill9()
        taken = other.call("tasks.get", {"task_id": hung, "wait": True})
        assert [(a["node"], a["outcome"]) for a in taken["attempts"]] == [
            (killed.name, "lost"), (other.name, "succeeded")], taken
        assert taken["output"]["turns"] == [SECRET, "more"]  # acme's state, taken over
        assert [(s["tenant"], s["session"]) for s in other.call("sessions.list", {})[
            "sessions"]] == [("acme", "s1")]
        assert other.call("agents.remove", {"names": ["chat"]}) == {"removed": ["chat"]}
        assert [k for k in r.scan_iter(match=K.prefix + "s*:*acme*")] == []
        assert other.call("agents.add", {"agents": {"chat": chat("globex")}}) == {
            "added": ["chat"]}
        wait_until(lambda: any(n["node"] == other.name and "chat" in n["agents"]
                               for n in other.nodes()["nodes"]), what="globex's chat")
        done = turn(other, "globex's first")
        assert done["status"] == "succeeded", done
        assert (done["output"]["turns"], done["output"]["given"]) == (["globex's first"],
                                                                      False)
        assert [(s["tenant"], s["session"]) for s in other.call("sessions.list", {})[
            "sessions"]] == [("globex", "s1")]
        assert r.exists(K.session(ACME)) == 0
    r.close()


def test_a_glob_tokens_session_of_a_gone_agent_is_its_own_never_another_tenants(
        tmp: Path, redis: RedisServer) -> None:
    """An operator's token limited to `web*` (no tenant) names session s1 of `web1`, an
    agent this node does not run, kept in the cluster for the default tenant and, used
    later, for globex: it shows and ends the default tenant's, and globex's is untouched
    (an attacker's pass: the most recently used of any tenant was chosen, so the token
    was refused its own, and a globex turn between the record check and the handler made
    the handler end globex's)."""
    port = free_port()
    http = f'[http]\nlisten = "127.0.0.1:{port}"\n'
    base = f"http://127.0.0.1:{port}/api/v1"
    r = redis_py.Redis(port=redis.port)
    mine, theirs = (SessionKey(t, "web1", "s1") for t in ("default", "globex"))
    with nodes(tmp, redis, {"a": TENANTS + http}, extra=keyed(tmp)) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 1, what="the node")
        now = time.time()
        for key, last in ((mine, now - 60), (theirs, now)):  # globex's used last
            r.hset(K.session(key), mapping={"cur": "", "created": repr(now - 120),
                                            "last": repr(last), "tasks": "1"})
            r.zadd(K.sessions(key.tenant, key.agent), {key.name: now + 3600})
        made = a.cli("token", "create", "webs", "--agents", "web*", "--json",
                     "--scope", "tasks:read", "--scope", "tasks:run")
        assert made.returncode == 0, made.stderr
        token = json.loads(made.stdout)["token"]

        def ask(verb: str, path: str) -> tuple[int, Any]:
            return asked(verb, base + path, token)

        status, body = ask("GET", "/agents/web1/sessions/s1")
        assert (status, body["session"]["tenant"]) == (200, "default"), body
        status, body = ask("POST", "/agents/web1/sessions/s1/end")
        assert (status, body.get("tenant")) == (200, "default"), body
        assert (r.exists(K.session(mine)), r.exists(K.session(theirs))) == (0, 1)
        assert ask("GET", "/agents/web1/sessions/s1")[0] == 404
        assert r.exists(K.session(theirs)) == 1
    r.close()


def test_a_turn_given_to_a_node_as_it_removes_the_agent_goes_to_another(
        tmp: Path, redis: RedisServer) -> None:
    """A session's next turn is given to the node that ran its last while that node's beat
    in Redis names the agent (sessionscripts' sticky turn). A node that has just removed the
    agent keeps that beat until its next is taken, and a turn given to it meanwhile is held
    in the agent's streams: the node looks there until a beat without the agent is taken,
    its refresh giving the turn back (an orphan), and the other node runs it in the session.
    Before, the node stopped looking at once, and the turn (and the session's line behind
    it) waited for ever. The holder's beat answer is held back at its own proxy across the
    removal, so that its beat naming chat stands in Redis."""
    from .proxy import Proxy

    table = TENANTS + textwrap.dedent(f"""
        [agents.chat]
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{HERE.parent}" }}
        stop_timeout = 5.0
        tenant = "acme"
    """)
    # (a liveness key that outlives the held beat answer: the holder neither lapses nor
    # fences meanwhile)
    ttl, held = 10.0, 4.0
    proxies = {name: Proxy(redis.port) for name in "ab"}
    made = {name: Node(tmp / name, name, redis, table, ttl=ttl) for name in "ab"}
    try:
        for name, n in made.items():
            n.config.write_text(n.config.read_text().replace(redis.url, proxies[name].url))
            n.start()
        wait_until(lambda: sum(n["alive"] for n in made["a"].nodes()["nodes"]) == 2,
                   what="both nodes alive")
        first = turn(made["a"], SECRET)
        assert first["output"]["turns"] == [SECRET], first
        [ran] = {x["node"] for x in first["attempts"]}
        holder, other = made[ran], made["b" if ran == "a" else "a"]
        beat = (f'"node":"{ran}","incarnation"'.encode(), b'"agents":["chat"]')
        beaten = proxies[ran].watch(*beat)
        proxies[ran].hold(held, *beat)
        assert beaten.wait(30), "the holder's next beat"
        assert holder.call("agents.remove", {"names": ["chat"]}) == {"removed": ["chat"]}
        # (a beat of the holder's begun after the removal, so that its puller has let
        # chat's streams go on the tree before: each beat sweeps the ended turns after
        # its puller's let_go, and the second sweep seen is of a beat begun after it)
        for _ in range(2):
            swept = proxies[ran].watch(b"SRANDMEMBER", K.turns_ended.encode())
            assert swept.wait(30), "a beat of the holder's after the removal"
        done = turn(other, "more")
        assert (done["status"], done["output"]["turns"]) == ("succeeded", [SECRET, "more"]), done
        assert done["attempts"][-1]["node"] == other.name, done["attempts"]
    finally:
        for n in made.values():
            n.close()
        for p in proxies.values():
            p.close()
