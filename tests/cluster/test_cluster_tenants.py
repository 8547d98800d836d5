"""Cluster tasks and tenants (issue 23): a cluster task of a tenant's agent is held to the
tenant's task quotas where it is submitted, as a local one is. A real redis-server and
real daemons."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc

from ..conftest import NOBODY_PY, nobody_reason
from ..daemon_harness import free_port
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, Node, nodes, sleeper
from .test_placement import KEEPER


def test_a_cluster_task_is_held_to_its_tenants_task_quotas(tmp: Path,
                                                          redis: RedisServer) -> None:
    agents = ('[tenants.t]\nrate_per_minute = 2\nmax_task_seconds = 1\n'
              + sleeper("s") + 'tenant = "t"\n')
    with nodes(tmp, redis, {"a": agents}, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 1, what="the node")
        # its timeout capped at max_task_seconds, on the cluster as here
        r = a.run("s", '{"do": "sleep", "seconds": 10}')
        assert r.returncode == 1, r.stderr
        assert json.loads(r.stdout)["error"]["message"] == "task timed out after 1 s"
        assert a.run("s", '{"do": "echo"}').returncode == 0
        # the third of the minute is refused, naming the quota
        r = a.run("s", '{"do": "echo"}')
        assert r.returncode == 1
        assert r.stderr.strip() == ("corral: tenant t: rate_per_minute 2 reached; a task for s "
                                    "waits for the next minute's room")


# a client of the control socket in the standard library alone, for a Python user nobody
# may run: stats.get's answer, stats.watch's first sample and nodes.list's answer, one JSON
# line each
SOCKET_STATS = """
import json, socket, sys
for method in ("stats.get", "stats.watch", "nodes.list"):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                          "params": {"interval": 0.2} if method == "stats.watch" else {}}
                         ).encode() + b"\\n")
    for line in s.makefile("rb"):
        got = json.loads(line)
        if "error" in got or "result" in got and method != "stats.watch":
            print(json.dumps(got.get("error") or got["result"]))
            break
        if got.get("method") == "stats.sample":
            print(json.dumps(got["params"]))
            break
    s.close()
"""


def http_stats(base: str, secret: str) -> list[dict[str, Any]]:
    """GET /api/v1/stats, then the first sample of /api/v1/stats/stream, as a token."""
    headers = {"Authorization": f"Bearer {secret}"}
    with urllib.request.urlopen(urllib.request.Request(f"{base}/stats", headers=headers),
                                timeout=30) as r:
        got = [json.loads(r.read())]
    with urllib.request.urlopen(urllib.request.Request(
            f"{base}/stats/stream?interval=0.2", headers=headers), timeout=30) as r:
        for raw in r:
            line = raw.decode()
            if line.startswith("event: ") and line.strip() != "event: stats.sample":
                continue
            if line.startswith("data: "):
                got.append(json.loads(line.removeprefix("data: ")))
                break
    return got


def placed(stats: dict[str, Any]) -> set[str]:
    return set(stats["cluster"]["agents"]["placed"])


def two_tenants_cluster_agents(n: Node) -> None:
    """Cluster agents ka (tenant a) and kb (tenant b), both placed on `n`, its only node."""
    wait_until(lambda: len(n.nodes()["nodes"]) == 1, what="the node")
    got = n.call("agents.add", {"agents": {"ka": {**KEEPER, "tenant": "a"},
                                           "kb": {**KEEPER, "tenant": "b"}},
                                "cluster": True})
    assert got == {"added": ["ka", "kb"]}, got
    wait_until(lambda: placed(n.call("stats.get")) == {"ka", "kb"}, what="both placed")


@pytest.mark.deadline(120)
def test_a_limited_callers_stats_name_only_the_cluster_agents_it_sees(
        tmp: Path, redis: RedisServer) -> None:
    """The cluster block of stats (stats.get, stats.watch's samples) names the cluster
    agents placed on the node: a tenant's token, and one limited to an agent glob, are
    told of theirs alone, over HTTP; the operator of both."""
    port = free_port()
    toml = f'[tenants.a]\n[tenants.b]\n[http]\nlisten = "127.0.0.1:{port}"\n'
    with nodes(tmp, redis, {"n1": toml}, ttl=STEADY_TTL) as ns:
        n = ns["n1"]
        two_tenants_cluster_agents(n)
        base = f"http://127.0.0.1:{port}/api/v1"
        # (a glob of no tenant names the default tenant's agents alone: issue 74)
        for name, limit in (("ta", ("--tenant", "a")),
                            ("ga", ("--tenant", "a", "--agents", "k[a]"))):
            r = n.cli("token", "create", name, "--scope", "metrics:read", "--scope",
                      "agents:read", *limit)
            assert r.returncode == 0, r.stderr
            for stats in http_stats(base, r.stdout.strip()):
                assert placed(stats) == {"ka"}, (name, stats["cluster"])
                assert set(stats["agents"]) == {"ka"}, name
            # and the status's cluster blocks: which of the node's replicas serve whose
            with urllib.request.urlopen(urllib.request.Request(f"{base}/agents", headers={
                    "Authorization": f"Bearer {r.stdout.strip()}"}), timeout=30) as got:
                status = json.loads(got.read())
            assert set(status["cluster_slots"]) == set(status["cluster_replicas"]) == {"ka"}, (
                name, status["cluster_slots"], status["cluster_replicas"])
        assert placed(n.call("stats.get")) == {"ka", "kb"}
        operator = n.call("agents.status")
        assert set(operator["cluster_slots"]) == set(operator["cluster_replicas"]) == {
            "ka", "kb"}


@pytest.mark.skipif(nobody_reason() is not None, reason=nobody_reason() or "")
@pytest.mark.deadline(120)
def test_a_tenants_socket_caller_sees_only_its_cluster_agents_in_stats(
        tmp: Path, redis: RedisServer) -> None:
    """A peer in tenant a's Unix group (`nobody` in `nogroup`) on a cluster node's
    socket: stats.get and stats.watch's samples name ka, never b's kb; the nodes
    (`corral status --cluster`, `corral nodes`) are the operator's."""
    with nodes(tmp, redis, {"n1": '[tenants.a]\ngroup = "nogroup"\n[tenants.b]\n'},
               ttl=STEADY_TTL) as ns:
        n = ns["n1"]
        two_tenants_cluster_agents(n)
        r = subprocess.run([NOBODY_PY, "-c", SOCKET_STATS, str(n.sock)],
                           capture_output=True, text=True, timeout=60, user="nobody",
                           group="nogroup", extra_groups=[], cwd="/")
        assert r.returncode == 0, r.stderr
        *answers, nodes_list = [json.loads(line) for line in r.stdout.splitlines()]
        assert len(answers) == 2, answers
        assert nodes_list["code"] == jsonrpc.FORBIDDEN
        assert nodes_list["message"].endswith(" is a caller of tenant a: nodes.list is for "
                                              "callers that see every agent"), nodes_list
        for stats in answers:
            assert placed(stats) == {"ka"}, stats
            assert set(stats["agents"]) == {"ka"}


def declared(name: str, tenant: str, v: str) -> str:
    """A cluster agent of the tenant declared in a node's file."""
    return (f'[agents.{name}]\ncommand = ["{KEEPER["command"][0]}", '
            f'"{KEEPER["command"][1]}"]\nenv = {{ PYTHONPATH = "{KEEPER["env"]["PYTHONPATH"]}",'
            f' V = "{v}" }}\nplacement = "cluster"\ntenant = "{tenant}"\n'
            "stop_timeout = 5.0\n")


@pytest.mark.deadline(120)
def test_a_tenants_token_is_told_only_of_its_cluster_agents_a_file_declares_otherwise(
        tmp: Path, redis: RedisServer) -> None:
    """`cluster.agents.differs` (a node's file disagreeing with the cluster's table)
    names agents too: a tenant's token is told of its own (of those placed on the node:
    one that is not is no agent of the node for a tenant's caller)."""
    port = free_port()
    tenants = "[tenants.a]\n[tenants.b]\n"
    first = Node(tmp / "n1", "n1", redis, tenants + declared("ka", "a", "1")
                 + declared("kb", "b", "1"), ttl=STEADY_TTL)
    second = Node(tmp / "n2", "n2", redis, tenants + declared("ka", "a", "2")
                  + declared("kb", "b", "2") + f'[http]\nlisten = "127.0.0.1:{port}"\n',
                  ttl=STEADY_TTL)
    try:
        first.start()
        wait_until(lambda: placed(first.call("stats.get")) == {"ka", "kb"},
                   what="both placed on n1")
        second.start()
        wait_until(lambda: set(second.call("stats.get")["cluster"]["agents"]["differs"])
                   == {"ka", "kb"}, what="n2 says its file differs")
        # n1 drained: its agents are handed over to n2
        assert second.call("nodes.drain", {"node": "n1"})["node"] == "n1"
        wait_until(lambda: placed(second.call("stats.get")) == {"ka", "kb"},
                   what="both placed on n2", timeout=30)
        assert set(second.call("stats.get")["cluster"]["agents"]["differs"]) == {"ka", "kb"}
        r = second.cli("token", "create", "ta", "--scope", "metrics:read", "--tenant", "a")
        assert r.returncode == 0, r.stderr
        for stats in http_stats(f"http://127.0.0.1:{port}/api/v1", r.stdout.strip()):
            assert set(stats["cluster"]["agents"]["differs"]) == {"ka"}, stats["cluster"]
    finally:
        second.close()
        first.close()
