"""Cluster agents from the config file (`placement = "cluster"`) and changed in place:
the table in Redis, each change a revision (`corral history` the same on every node),
made by compare-and-set on the placement epoch; every node brings its slots to the new
table. Decision 123: a change a node's file makes is applied, a file that did not change
undoes nothing."""

from __future__ import annotations

import socket
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis as sync_redis

from corral.cli.client import CallFailed
from corral.cluster.connection import connect
from corral.cluster.keys import Keys
from corral.cluster.scripts import Scripts
from corral.cluster.specs import ClusterSpecs
from corral.cluster.trust import Trust
from corral.daemon.revisions import describe_change
from corral.supervisor.config import ClusterSettings
from corral.supervisor.core import SupervisorError

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, running_daemon
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, Node, nodes

pytestmark = pytest.mark.timeout(90)


def slots_seen(node: Node) -> dict[str, list[str]] | None:
    """Keeper's cluster slots as `corral status` on `node` shows them; None while the
    node has not taken in the cluster's spec yet (each node takes it in from Redis in its
    own time: on a loaded host, after the other node placed it)."""
    try:
        return node.status_json("keeper")["cluster_slots"]  # type: ignore[no-any-return]
    except CallFailed as exc:
        if str(exc) != "no such agent: keeper (there are no agents)":
            raise
        return None


def keeper(v: str = "1", extra: str = "") -> str:
    return textwrap.dedent(f"""
        [agents.keeper]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}", V = "{v}" }}
        placement = "cluster"
        stop_timeout = 5.0
    """) + extra


def placed(ns: list[Node], agent: str = "keeper") -> dict[str, list[int]]:
    out = {}
    for n in ns:
        slots = n.call("stats.get")["cluster"]["agents"]["placed"].get(agent)
        if slots:
            out[n.name] = slots
    return out


def history(n: Node, agent: str = "keeper") -> Any:
    return n.call("agents.history", {"name": agent})


def changes(n: Node, agent: str = "keeper") -> tuple[int, list[tuple[str, str]]]:
    """The current revision, and who made each kept revision after the first, and what."""
    h = history(n, agent)
    return h["current"], [(e["who"], e["change"]) for e in h["revisions"]][1:]


def env_here(n: Node) -> str | None:
    """V as the replica of keeper on this node sees it (a --local task runs there); None
    while the node has no keeper, or has it stopped: a node that rejoins (a new incarnation
    after Redis came back) reconciles its cluster agents again, and one may be away or
    stopped for a moment (both seen in loaded rounds)."""
    try:
        got = n.call("tasks.run", {"agent": "keeper", "local": True, "input": {"do": "env"}})
    except AssertionError as exc:  # Raw.call's refusal: the answer's error
        if "no such agent: keeper" in str(exc) or "agent keeper is stopped" in str(exc):
            return None
        raise
    return got["output"]["V"] if got.get("status") == "succeeded" else None


def edit(n: Node, old: str, new: str) -> None:
    text = n.config.read_text()
    assert old in text
    n.config.write_text(text.replace(old, new))


def test_a_config_declared_cluster_agent_is_scaled_changed_rolled_back_and_removed(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": keeper(), "b": keeper()}, ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        both = [a, b]
        wait_until(lambda: sum(v["alive"] for v in a.nodes()["nodes"]) == 2,
                   what="two nodes alive")
        # both files declare it alike: added once, placed once
        wait_until(lambda: sum(map(len, placed(both).values())) == 1, what="placed")
        h = history(b)
        assert (h["current"], len(h["revisions"])) == (1, 1), h
        assert h["revisions"][0]["who"] in ("config file of node a", "config file of node b")
        assert h["revisions"][0]["spec"]["placement"] == "cluster"
        assert history(a) == h  # the same on every node

        # the node with no slot of it answers for it all the same: where its slot is
        [(holder, _)] = placed(both).items()
        other = b if holder == "a" else a
        wait_until(lambda: slots_seen(other) == {"keeper": [holder]},
                   what="the slot seen from the other node")
        assert other.json("status", "keeper")["agents"] == []
        # corral scale on any node: the cluster's table, placed across both nodes
        r = b.cli("scale", "keeper", "2")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: placed(both) == {"a": [0], "b": [1]} or
                   placed(both) == {"a": [1], "b": [0]}, what="a replica on each node")
        h = history(a)
        assert h["current"] == 2
        assert h["revisions"][-1]["change"] == "replicas 1 -> 2"
        described = a.call("agents.describe", {"name": "keeper"})
        assert (described["origin"], described["revision"]) == ("cluster", 2)
        assert described["spec"]["replicas"] == 1  # this node's share of the two
        # the node running slot 1 names its replica keeper#0: replicas are numbered on
        # each node, slots by the cluster (docs/cluster.md)
        [one] = [n for n in both if placed(both)[n.name] == [1]]
        assert [r["replica"] for r in one.call("agents.describe", {"name": "keeper"})[
            "replicas"]] == [0]
        # corral status on either node shows every slot, across the nodes, and which of
        # its own replicas runs the slot it has
        zero = "a" if one.name == "b" else "b"
        for n in both:
            wait_until(lambda n=n: slots_seen(n) == {  # type: ignore[misc]
                "keeper": [zero, one.name]}, what="both slots in the status")
            mine = 0 if n.name == zero else 1
            assert n.json("status", "keeper")["cluster_replicas"] == {"keeper": [mine]}
            said = [f"slot 0 on {zero}", f"slot 1 on {one.name}"]
            said[mine] += " (here: keeper#0)"
            assert f"keeper: cluster agent, 2 slots; {'; '.join(said)}" in n.cli(
                "status", "keeper").stdout.splitlines()

        # a's file changes env: a reload applies that change over the cluster's table,
        # which keeps the scale (the file did not change replicas)
        edit(a, 'V = "1"', 'V = "2"')
        r = a.cli("reload")
        assert r.returncode == 0, r.stderr
        h = history(b)
        assert h["current"] == 3 and h["revisions"][-1]["who"] == "config file of node a"
        assert h["revisions"][-1]["change"] == "config file changed: env.V changed"
        assert h["revisions"][-1]["spec"]["replicas"] == 2
        wait_until(lambda: [env_here(n) for n in both] == ["2", "2"],
                   what="both nodes' replicas brought to V=2")
        assert sum(map(len, placed(both).values())) == 2

        # rollback on any node: revision 2's table, as revision 4
        got = b.call("agents.rollback", {"name": "keeper", "revision": 2})
        assert got == {"name": "keeper", "restored": 2, "revision": 4,
                       "change": "env.V changed"}
        wait_until(lambda: [env_here(n) for n in both] == ["1", "1"],
                   what="both nodes' replicas back to V=1")
        assert history(a)["revisions"][-1]["change"] == (
            "rollback to revision 2: env.V changed")
        # the newest `limit` of them, as a local agent's
        for limit, revisions in ((1, [4]), (0, []), (9, [1, 2, 3, 4])):
            h = a.call("agents.history", {"name": "keeper", "limit": limit})
            assert (h["current"], [r["revision"] for r in h["revisions"]]) == (4, revisions)

        # a deploy of a package of that name is refused: its release would be one node's
        pkg = tmp / "pkg"
        pkg.mkdir()
        (pkg / "corral.toml").write_text('[agent]\nname = "keeper"\n'
                                         'command = ["python", "agent.py"]\n')
        r = a.cli("deploy", str(pkg))
        assert r.returncode != 0
        assert ("agent keeper is a cluster agent: a deploy builds its release on this node "
                "alone, and the nodes its replicas are placed on would have none; deploy "
                "the package under another name (--name) as this node's agent, or change "
                "the cluster agent's command (a reload, or remove and add it)") in r.stderr
        assert history(a)["current"] == 4  # nothing changed

        # a's file makes it a local agent: removed from the cluster (a's file declared it),
        # stopped on b, and a runs its own
        edit(a, 'placement = "cluster"', 'placement = "local"')
        assert a.cli("reload").returncode == 0
        wait_until(lambda: placed(both) == {}, what="the cluster's stopped on both nodes")
        # (b forgets the agent as the change of the cluster's table reaches it, which may
        # be a moment after its replica stopped: ci run a3 read it in between)
        wait_until(lambda: b.cli("history", "keeper").returncode != 0,
                   what="b to forget the cluster's keeper")
        r = b.cli("history", "keeper")
        assert "no such agent: keeper" in r.stderr, r.stderr
        wait_until(lambda: [x["state"] for x in a.status_json()["agents"]
                            if x["name"] == "keeper"] == ["ready"], what="a's own keeper")
        assert a.call("agents.describe", {"name": "keeper"})["origin"].startswith("file ")
        # b's file still declares it: b's next reload (or start) adds it again, placed on
        # b alone (a node with an agent of that name of its own is given none)
        assert b.cli("reload").returncode == 0
        h = history(b)
        assert (h["current"], h["revisions"][0]["who"]) == (1, "config file of node b")
        wait_until(lambda: placed(both) == {"b": [0]}, what="placed again, on b")
        assert placed(both) == {"b": [0]}


def test_a_file_that_did_not_change_undoes_nothing(tmp: Path, redis: RedisServer) -> None:
    """Two files that disagree: the first registered stands, the other node says what
    differs; a change of the other's file is applied; a node restarted with its old,
    unchanged file does not undo it."""
    a = Node(tmp / "a", "a", redis, keeper("1"), ttl=STEADY_TTL)
    b = Node(tmp / "b", "b", redis, keeper("9"), ttl=STEADY_TTL)
    try:
        a.start()
        wait_until(lambda: placed([a]) == {"a": [0]}, what="placed on a")
        b.start()
        differs = {"keeper": "env.V changed"}
        wait_until(lambda: b.call("stats.get")["cluster"]["agents"]["differs"] == differs,
                   what="b says its file differs")
        assert history(b)["current"] == 1
        assert env_here(a) == "1"
        log = b.cli("logs", "corral").stdout
        assert ("cluster agent keeper: config file of node b declares it otherwise than "
                "the cluster's spec (revision 1): env.V changed; the cluster's stands "
                "(edit the file and reload to change it)") in log, log

        edit(b, 'V = "9"', 'V = "10"')
        assert b.cli("reload").returncode == 0
        h = history(a)
        assert (h["current"], h["revisions"][-1]["who"]) == (2, "config file of node b")
        assert b.call("stats.get")["cluster"]["agents"]["differs"] == {}
        wait_until(lambda: env_here(a) == "10", what="a runs b's change")

        # a restarts with its file as it was: the cluster's table stands
        assert a.stop() == 0
        a.start()
        wait_until(lambda: a.call("stats.get")["cluster"]["agents"]["differs"] == differs,
                   what="a says its file differs")
        assert history(b)["current"] == 2
        wait_until(lambda: sum(map(len, placed([a, b]).values())) == 1, what="placed")
        [host] = [n for n in (a, b) if n.name in placed([a, b])]
        assert env_here(host) == "10"
    finally:
        a.close()
        b.close()


def test_changes_of_a_cluster_agent_refused(tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": keeper()}) as ns:
        a = ns["a"]
        wait_until(lambda: placed([a]) == {"a": [0]}, what="placed")
        r = a.cli("rollback", "keeper", "9")
        assert r.returncode != 0
        assert ("no revision 9 of keeper (its revisions kept: 1..1; see `corral history "
                "keeper`)") in r.stderr, r.stderr
        r = a.cli("rollback", "keeper")
        assert r.returncode != 0 and "no revision 0 of keeper" in r.stderr
        # (the method's params say it: the REST API's document too)
        assert refused(a, "agents.scale", {"name": "keeper", "replicas": -1}) == (
            "invalid params: Expected `int` >= 0 - at `$.replicas`")
        # a batch is the cluster's or this node's, not both
        table = {"command": [PY, f"{EXAMPLES}/misbehave.py"]}
        assert refused(a, "agents.add", {"agents": {
            "x": {**table, "placement": "cluster"}, "y": {**table, "placement": "local"}}}
        ) == "agents.add: agents.y.placement: 'local' in a batch of cluster agents: add it apart"
        # refused as the config file and a change in place refuse it
        assert refused(a, "agents.add", {"agents": {"x": {**table, "hibernate_after": 5}},
                                         "cluster": True}) == (
            "agents.add: agents.x.placement: a cluster agent is not elastic yet (autoscale, "
            "hibernate_after)")
        assert history(a)["current"] == 1
        assert {x["name"] for x in a.json("status")["agents"]} == {"keeper"}
        # Redis away: refused, nothing changed
        redis.kill()
        r = a.cli("scale", "keeper", "3")
        assert r.returncode != 0
        assert (f"the cluster's Redis at {redis.url} is unreachable") in r.stderr, r.stderr
        assert r.stderr.rstrip().endswith("keeper is the cluster's agent: nothing changed")
        assert refused(a, "agents.scale", {"name": "other", "replicas": 1}).endswith(
            "no agent other on this node, and the cluster's cannot be read: nothing changed")
        # a reload meanwhile: its file's change is not lost, but made once Redis answers
        edit(a, 'V = "1"', 'V = "2"')
        r = a.cli("reload")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: "the config's cluster agents not yet registered" in log(a),
                   what="the reload's registration put off")
        redis.restart()
        wait_until(lambda: a.call("stats.get")["cluster"]["state"] == "member",
                   what="a member again", timeout=20)
        # the refused scale left nothing; the reload's change is the one revision more
        # (waited for whole, not the current revision alone: a moment after the rejoin, CI
        # a1 read current 2 with one revision kept)
        wait_until(lambda: changes(a) == (2, [
            ("config file of node a", "config file changed: env.V changed")]),
            what="the file's change made, the one revision more")
        wait_until(lambda: env_here(a) == "2", what="keeper brought to V=2")
    (tmp / "solo").mkdir()
    with running_daemon(tmp / "solo", "") as solo:
        assert refused(solo, "agents.add", {"agents": {
            "x": {**table, "placement": "cluster"}}}) == (
            "this daemon is not a node of a cluster (its config has no [cluster] table): "
            "--cluster needs one")


def log(n: Node) -> str:
    path = n.state / "logs" / "corral.log"
    return path.read_text(errors="replace") if path.exists() else ""


def refused(n: Any, method: str, params: dict[str, Any]) -> str:
    """The message of the call's refusal (it must be refused)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(n.sock))
        sock.sendall(msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": method,
                                          "params": params}) + b"\n")
        with sock.makefile("rb") as f:
            while True:
                answer = msgspec.json.decode(f.readline())
                if answer.get("id") == 1:
                    break
    assert "error" in answer, answer
    return str(answer["error"]["message"])


K = Keys("t")


@pytest.fixture
async def specs(redis: RedisServer) -> AsyncIterator[ClusterSpecs]:
    c = connect(ClusterSettings(redis=redis.url, name="t", node="n"), "n")
    yield ClusterSpecs(Scripts(c), K, Trust(None, "", lambda _: None), describe_change)
    await c.aclose()


async def test_a_change_made_from_a_stale_epoch_reads_again_and_gives_up_at_last(
        specs: ClusterSpecs, redis: RedisServer) -> None:
    assert await specs.add({"w": {"command": "x"}}, "test") == ["w"]
    other = sync_redis.Redis.from_url(redis.url)
    bumped = 0

    def racing(table: dict[str, Any], times: int) -> dict[str, Any]:
        """The table made anew, while another node places the agent meanwhile (a real
        write to the epoch, between this change's read and its compare-and-set)."""
        nonlocal bumped
        if bumped < times:
            bumped += 1
            other.hset(K.placement, "w", f'{{"epoch":{100 + bumped},"slots":[]}}')
        return {**table, "replicas": 3}

    try:
        assert await specs.change("w", lambda t: racing(t, 2), "test") == (
            2, "replicas 1 -> 3")
        assert bumped == 2  # lost twice, won the third time, from the epoch it read
        assert other.hget(K.placement, "w") == b'{"epoch":103,"slots":[]}'
        bumped = 0
        with pytest.raises(SupervisorError) as got:
            await specs.change("w", lambda t: {**racing(t, 99), "replicas": 4}, "test")
        assert got.value.message == ("cluster agent w was changed 5 times while this "
                                     "change was made: nothing changed; try again")
        assert (await specs.read("w"))[0] == {"command": "x", "replicas": 3}
        with pytest.raises(SupervisorError) as got:
            await specs.change("nosuch", lambda t: t, "test")
        assert got.value.message == "no cluster agent nosuch"
        # a table that is no cluster agent's is refused, naming the key
        with pytest.raises(SupervisorError) as got:
            await specs.change("w", lambda t: {**t, "hibernate_after": 5}, "test")
        assert got.value.message == ("cluster agent w: agents.w.placement: a cluster agent "
                                     "is not elastic yet (autoscale, hibernate_after)")
        assert [e.revision for e in await specs.history("w")] == [1, 2]
    finally:
        other.close()
