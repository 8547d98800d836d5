"""What a writer of the cluster's Redis can make a node do (issue 34, findings 9 and 17).

The attacker of these tests holds Redis's password and not the cluster key: it writes
agent tables and outcomes as Redis commands, and none is run or told (decision 162). A
second daemon that names itself as a live node is refused at its start (decision 163)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis as redis_py

from corral.cluster.keys import Keys
from corral.cluster.trust import load_key
from corral.supervisor.config import ConfigError
from corral.supervisor.configload import config_files, load_config

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, Daemon, corral_popen
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, Node, nodes, run, sleeper
from .test_cluster_specs import log, refused

pytestmark = pytest.mark.timeout(120)

K = Keys("test")  # the harness's cluster name


def key_file(tmp: Path, mode: int = 0o600, data: bytes = b"k" * 44) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "cluster.key"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def keyed(path: Path) -> str:
    return f'key_file = "{path}"\n'


# a cluster without a key, said in so many words (without it, none starts)
INSECURE = "insecure = true\n"


def attacker(redis: RedisServer) -> Any:
    return redis_py.Redis(port=redis.port)


def shell_agent(ran: Path) -> dict[str, Any]:
    """A worker whose every start first appends `UID TITLE` (its uid, and corral's title
    of the process: the agent's name and replica) to `ran`."""
    return {"command": ["/bin/sh", "-c", f'echo "$(id -u) $CORRAL_PROCTITLE" >> {ran}; '
                        f'exec {shlex.join([PY, f"{EXAMPLES}/misbehave.py"])}'],
            "env": {"PYTHONPATH": str(ROOT)}, "placement": "cluster", "stop_timeout": 2.0}


def started(ran: Path) -> str:
    return ran.read_text() if ran.exists() else ""


def trust(n: Node) -> Any:
    return n.call("stats.get")["cluster"]["trust"]


def test_a_redis_writer_without_the_key_runs_no_command(tmp: Path,
                                                        redis: RedisServer) -> None:
    """HSET of a cluster agent's table (no MAC, a made-up MAC, or the MAC of another
    agent's table replayed under a new name): never placed, never run, said once and
    counted; the operator's own cluster agents, added meanwhile, run."""
    ran = tmp / "ran"
    key = key_file(tmp)
    r = attacker(redis)
    with nodes(tmp, redis, {"a": ""}, extra=keyed(key)) as ns:
        a = ns["a"]
        wait_until(lambda: a.nodes()["nodes"], what="a joined")
        assert trust(a) == {"key": a.nodes()["nodes"][0]["key"],
                            "refused": {"agents": 0, "revisions": 0, "declared": 0,
                                        "outcomes": 0, "steps": 0, "sessions": 0, "calls": 0,
                                       "spawns": 0, "tenants": 0, "asks": 0, "pins": 0,
                                       "pushes": 0, "outputs": 0}}
        evil = msgspec.json.encode(shell_agent(ran))
        r.hset(K.cluster_agents, "evil", evil)  # no MAC at all
        r.hset(K.cluster_agents, "forged", evil)
        r.hset(K.agent_macs, "forged", "0" * 64)  # a MAC made without the key
        assert a.call("agents.add", {"agents": {"good": shell_agent(ran)},
                                     "cluster": True}) == {"added": ["good"]}
        # the operator's agent runs: the node has read the tables (evil and forged sort
        # before good, so in the same beat or an earlier one)
        wait_until(lambda: "good#0" in started(ran), what="good started")
        assert "evil" not in started(ran) and "forged" not in started(ran), started(ran)
        assert trust(a)["refused"]["agents"] == 2
        text = log(a)
        assert ("cluster: refused agent evil from Redis: no MAC with this node's cluster "
                "key; never placed or run (a Redis writer without the key made or "
                "changed it, or the nodes' key files differ: see `corral nodes`)") in text
        assert ("cluster: refused agent forged from Redis: its MAC does not verify with "
                "this node's cluster key; never placed or run") in text
        assert text.count("refused agent evil") == 1  # said once, however many beats
        placed = a.call("stats.get")["cluster"]["agents"]["placed"]
        assert set(placed) == {"good"}

        # a table signed for one name, replayed under another
        r.hset(K.cluster_agents, "copy", r.hget(K.cluster_agents, "good"))
        r.hset(K.agent_macs, "copy", r.hget(K.agent_macs, "good"))
        assert a.call("agents.add", {"agents": {"later": shell_agent(ran)},
                                     "cluster": True}) == {"added": ["later"]}
        wait_until(lambda: "later#0" in started(ran), what="later started")
        assert "copy" not in started(ran), started(ran)
        assert ("cluster: refused agent copy from Redis: its MAC does not verify"
                in log(a))
        assert trust(a)["refused"]["agents"] == 3

        # a change of the operator's agent in Redis: its replica goes on with the table
        # that verified; nothing a node signs is made from the forged one
        r.hset(K.cluster_agents, "good", evil.replace(b"misbehave.py", b"misbehave.py "))
        wait_until(lambda: trust(a)["refused"]["agents"] == 4, what="refused")
        assert ("refused agent good from Redis: its MAC does not verify with this "
                "node's cluster key; never placed or run (its replicas here go on with the "
                "table that last verified)") in log(a)
        assert refused(a, "agents.scale", {"name": "good", "replicas": 2}) == (
            "cluster agent good's table in Redis is not signed with this node's cluster "
            "key (a Redis writer without the key made or changed it, or the nodes' key "
            "files differ): nothing changed; `corral rollback` it to a signed revision, "
            "or remove it and add it again")
        # a revision forged into its history is not restored either
        entry = msgspec.json.decode(r.lindex(K.history("good"), -1))
        r.rpush(K.history("good"), msgspec.json.encode(
            {**entry, "revision": 2, "spec": shell_agent(ran) | {"replicas": 3}}))
        assert refused(a, "agents.rollback", {"name": "good", "revision": 2}) == (
            "revision 2 of cluster agent good is not signed with this node's cluster key "
            "(a Redis writer without the key made or changed it): nothing changed")
        # a rollback to a signed revision replaces the forged table, signed
        got = a.call("agents.rollback", {"name": "good", "revision": 1})
        assert (got["restored"], got["change"]) == (1, "command changed"), got
        a.call("agents.scale", {"name": "good", "replicas": 1})  # made from it: allowed

        # what a's file last declared, forged: a reload would remove good (the file
        # "declared it and no more"); refused, it removes nothing
        r.hset(K.declared("a"), "good", r.hget(K.cluster_agents, "good"))
        r.hset(K.declared_macs("a"), "good", r.hget(K.agent_macs, "good"))
        assert a.cli("reload").returncode == 0
        assert r.hexists(K.cluster_agents, "good")
        assert ("cluster: refused declared table good (declared by node a) from Redis: its MAC "
                "does not verify with this node's cluster key; it changes and removes "
                "nothing") in log(a)
        assert trust(a)["refused"] == {"agents": 4, "revisions": 1, "declared": 1,
                                       "outcomes": 0, "steps": 0, "sessions": 0, "calls": 0,
                                       "spawns": 0, "tenants": 0, "asks": 0, "pins": 0,
                                       "pushes": 0, "outputs": 0}
        assert started(ran).count("good#0") == 1  # never restarted on the forged tables
        assert {line.split()[0] for line in started(ran).splitlines()} == {"0"}


def waiting_for(n: Node, agent: str, task_input: Any) -> subprocess.Popen[str]:
    """`corral run` as a client waits for its task's outcome."""
    return corral_popen(
        ["--socket", str(n.sock), "run", agent, "--input",
         msgspec.json.encode(task_input).decode(), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_forged_outcome_is_never_told_the_real_one_is(tmp: Path,
                                                        redis: RedisServer) -> None:
    """XADD of an outcome for a task a client waits for (made up, or another task's
    genuine outcome replayed under its id): the client is not told; it gets the task's
    real outcome. A record changed after the task ended is refused when read."""
    key = key_file(tmp)
    r = attacker(redis)
    with nodes(tmp, redis, {"a": sleeper("w")}, extra=keyed(key)) as ns:
        a = ns["a"]
        wait_until(lambda: a.nodes()["nodes"], what="a joined")
        first = run(a, "w", {"do": "echo", "said": "first"})
        assert first["status"] == "succeeded", first
        [(_, genuine)] = r.xrange(K.outcomes)
        assert genuine[b"task"] == first["task_id"].encode() and genuine[b"mac"]

        gate = tmp / "gate"
        client = waiting_for(a, "w", {"do": "await", "path": str(gate)})
        try:
            def running() -> list[bytes]:
                return [t for t in r.zrange(K.live, 0, -1)
                        if r.hget(K.task(t.decode()), "status") == b"running"]
            [tid] = wait_until(running, what="the task running")
            task_id = tid.decode()
            r.xadd(K.outcomes, {"task": task_id, "status": "succeeded",
                                "output": '"forged"', "error": "", "attempts": "[]"})
            r.xadd(K.outcomes, {**genuine, b"task": tid})  # another task's, replayed
            wait_until(lambda: trust(a)["refused"]["outcomes"] == 2,
                       what="both refused")
            assert client.poll() is None  # still waiting, for the real one
            gate.touch()
            out, err = client.communicate(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        assert client.returncode == 0, err
        got = msgspec.json.decode(out)
        assert (got["task_id"], got["status"], got["output"]) == (
            task_id, "succeeded", {"awaited": str(gate)}), got
        assert "forged" not in out
        text = log(a)
        assert (f"cluster: refused outcome of task {task_id} (on the outcomes stream) "
                "from Redis: no MAC with this node's cluster key; not told to the client "
                "waiting for it, which waits on for the real one") in text
        assert (f"cluster: refused outcome of task {task_id} (on the outcomes stream) "
                "from Redis: its MAC does not verify") in text

        # the record, changed after the task ended, is refused when read
        assert a.call("tasks.get", {"task_id": task_id})["output"] == {"awaited": str(gate)}
        r.hset(K.task(task_id), "output", '"forged"')
        assert refused(a, "tasks.get", {"task_id": task_id}) == (
            f"task {task_id}'s outcome in Redis is not signed with this node's cluster "
            "key (a Redis writer without the key made or changed it): refused")
        assert trust(a)["refused"]["outcomes"] == 3


@pytest.mark.parametrize(("mode", "data", "owner", "message"), [
    (0o644, b"k" * 44, None, "mode 0644 lets others read or change it: chmod 0600 (or "
                             "0400)"),
    (0o640, b"k" * 44, None, "mode 0640 lets others read or change it: chmod 0600 (or "
                             "0400)"),
    (0o602, b"k" * 44, None, "mode 0602 lets others read or change it: chmod 0600 (or "
                             "0400)"),
    (0o600, b"k" * 44, 65534, "owned by uid 65534, not by this daemon's user (uid 0): "
                              "chown it"),
    (0o600, b"short\n", None, "5 bytes, too short for a key (at least 32: `head -c 32 "
                              "/dev/urandom | base64 > FILE`)"),
])
def test_a_key_file_that_is_not_the_daemons_alone_is_refused(
        tmp_path: Path, mode: int, data: bytes, owner: int | None, message: str) -> None:
    if owner is not None and os.geteuid() != 0:
        pytest.skip("the owner's case needs root (chown)")
    path = key_file(tmp_path, mode, data)
    if owner is not None:
        os.chown(path, owner, -1)
    with pytest.raises(ConfigError) as got:
        load_key(path)
    assert str(got.value) == f"cluster.key_file: {path}: {message}"


def test_a_key_file_neither_a_file_nor_there_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError) as got:
        load_key(fifo)  # (no reader: it would hang were it opened to block)
    assert str(got.value) == f"cluster.key_file: {fifo}: not a regular file"
    with pytest.raises(ConfigError) as got:
        load_key(tmp_path / "none")
    assert str(got.value) == (f"cluster.key_file: {tmp_path / 'none'}: No such file or "
                              "directory")
    assert load_key(key_file(tmp_path, 0o400, b"k" * 44 + b"\n")) == b"k" * 44


def test_a_daemon_with_a_bad_key_file_does_not_start(tmp: Path, redis: RedisServer) -> None:
    key = key_file(tmp, 0o644)
    n = Node(tmp / "a", "a", redis, "", extra=keyed(key))
    try:
        n.start(wait_ready=False)
        assert n.proc is not None and n.proc.wait(30) == 1
        assert n.said().endswith(
            f"corral: invalid config: cluster.key_file: {key}: mode 0644 lets others read "
            "or change it: chmod 0600 (or 0400)\n")
    finally:
        n.close()
    assert attacker(redis).hgetall(K.nodes) == {}  # it never joined


def test_a_second_daemon_as_a_live_node_is_refused(tmp: Path, redis: RedisServer) -> None:
    """Two daemons with one `[cluster] node`: the second is refused at its start, naming
    the first; once the first is gone (killed: its key expires), a daemon of that name
    starts and joins as a new incarnation. Without a key_file (said: `insecure = true`),
    `corral nodes` says what a Redis writer can do."""
    # the steady TTL: a's lapse is waited on only once it is killed, and at the short one
    # a loaded host's stall lapsed it before (the second daemon then named incarnation 2)
    with nodes(tmp, redis, {"a": sleeper("w")}, extra=INSECURE, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        wait_until(lambda: a.nodes()["nodes"], what="a joined")
        assert a.proc is not None
        second = Node(tmp / "again", "a", redis, sleeper("w"), extra=INSECURE,
                      ttl=STEADY_TTL)
        try:
            second.start(wait_ready=False)
            assert second.proc is not None and second.proc.wait(30) == 1
            err = second.said()
        finally:
            second.close()
        assert (f"corral: cannot start as a node of cluster test: node a is already a "
                f"member of cluster test: incarnation 1, pid {a.proc.pid} on host "
                f"{socket.gethostname()}, last beat ") in err, err
        assert err.endswith(" s ago; two daemons must not share [cluster] node (give "
                            "this one another name, or stop that one)\n"), err
        listed = a.nodes()["nodes"]
        assert [(n["node"], n["alive"], n["incarnation"], n["pid"]) for n in listed] == [
            ("a", True, 1, a.proc.pid)]
        assert run(a, "w", {"do": "echo"})["attempts"][0]["node"] == "a"
        r = a.cli("nodes")
        assert r.returncode == 0, r.stderr
        assert r.stderr == ("WARNING: a has no [cluster] key_file: anyone who can write to "
                            "the cluster's Redis can run commands there (as the agents' "
                            "users, root by default) and forge task outcomes "
                            "(docs/cluster.md#securing-redis)\n")
        assert ("WARNING: cluster test: [cluster] has no key_file: anyone who can write "
                "to the cluster's Redis can run commands on every node") in log(a)

        # the first killed: its key is yet to expire, and no one beats it again
        a.kill9()
        third = Node(tmp / "third", "a", redis, sleeper("w"), extra=INSECURE,
                     ttl=STEADY_TTL)
        try:
            third.start()
            wait_until(lambda: [(n["alive"], n["incarnation"])
                                for n in third.nodes()["nodes"]] == [(True, 2)],
                       what="the new daemon joined")
            assert third.proc is not None
            assert third.nodes()["nodes"][0]["pid"] == third.proc.pid
        finally:
            third.close()


def test_nodes_with_different_keys_are_said_to_differ(tmp: Path,
                                                      redis: RedisServer) -> None:
    one, two = key_file(tmp / "1"), key_file(tmp / "2", data=b"j" * 44)
    agents = {"a": "", "b": ""}
    made = {name: Node(tmp / name, name, redis, agents[name],
                       extra=keyed(one if name == "a" else two)) for name in agents}
    try:
        for n in made.values():
            n.start()
        a = made["a"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                   what="both joined")
        r = a.cli("nodes")
        assert r.returncode == 0 and r.stderr == (
            "WARNING: the nodes' cluster keys differ (`corral nodes --json`: key): each "
            "refuses the agent tables and outcomes the others sign\n"), r.stderr
    finally:
        for n in made.values():
            n.close()


def test_the_key_file_is_among_corrals_own_files(tmp_path: Path) -> None:
    """A sandboxed agent may neither hold it in its writable directory nor reach it
    (as corral's config file and the gateway's tokens)."""
    path = tmp_path / "corral.toml"
    path.write_text('[cluster]\nkey_file = "secrets/cluster.key"\n')
    assert (str(tmp_path / "secrets"), "the cluster's key") not in config_files(
        load_config(path), path)
    assert (str(tmp_path / "secrets" / "cluster.key"), "the cluster's key") in config_files(
        load_config(path), path)


def test_a_node_without_a_key_file_does_not_start_unless_it_says_insecure(
        tmp: Path, redis: RedisServer) -> None:
    """Secure by default (issue 52, 4d): a [cluster] without `key_file` is refused at
    the start, naming both ways out; nothing joins, nothing runs."""
    (tmp / "bare").mkdir()
    d = Daemon(tmp / "bare", sleeper("w") + textwrap.dedent(f"""
        [cluster]
        redis = "{redis.url}"
        name = "test"
        node = "bare"
    """))
    try:
        d.start(wait_ready=False)
        assert d.proc is not None and d.proc.wait(30) == 1
        assert d.proc.stderr is not None
        err = d.proc.stderr.read().decode()
    finally:
        d.close()
    assert (f"{d.config}: cluster.key_file: a cluster needs a key its nodes sign their "
            "records with") in err, err
    assert "to run so anyway, say insecure = true in [cluster]" in err, err
    assert attacker(redis).hgetall(K.nodes) == {}  # it never joined
