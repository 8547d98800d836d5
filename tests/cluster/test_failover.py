"""Redis that fails over (issue 56 item 3, decision 510): a primary, its replicas and
three Sentinels, real processes on free ports killed by pid. Nodes given `sentinels`
follow the primary the Sentinels promote without a restart, and a task, an outcome or a
step is acknowledged only once a replica has it too (WAIT, `ack_replicas`), so that the
primary's kill -9 loses nothing a client was told was kept."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis as redispy
import redis.asyncio

from corral.cluster.redischeck import CHECK_BEATS, replicas_short
from corral.cluster.replicas import Acks, UnconfirmedWrite
from corral.cluster.scripts import Scripts
from corral.supervisor.config import ClusterSettings, ConfigError
from corral.supervisor.configload import load_config

from ..daemon_harness import free_port
from ..redis_harness import REDIS_SERVER, RedisServer
from ..test_daemon_cli import wait_until
from .harness import Node, nodes, run, sleeper

pytestmark = pytest.mark.timeout(240)

MASTER = "corral"  # the name the Sentinels monitor the cluster's Redis as
# the nodes' TTL where no node is to be fenced by a failover: longer than one takes on a
# loaded host (no test here waits a TTL out)
FAILOVER_TTL = 30.0


class Sentinel:
    """redis-server --sentinel on a free port, watching `primary` (a quorum of 2), its
    files in its own directory; killed by pid."""

    def __init__(self, directory: Path, primary: RedisServer) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = directory / "sentinel.conf"
        # (a Sentinel rewrites its file as it learns: it must be its own and writable)
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n")
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen([REDIS_SERVER, str(self.conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redispy.Redis(port=self.port, decode_responses=True,
                                    socket_timeout=2)
        wait_until(self._answers, what=f"Sentinel on port {self.port}")

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redispy.ConnectionError:
            return False

    def sees(self, replicas: int, sentinels: int) -> bool:
        """It knows the primary's `replicas` and the other `sentinels`: ready to agree
        on a failover."""
        try:
            got = self.client.sentinel_master(MASTER)
        except (redispy.ConnectionError, redispy.TimeoutError):
            return False  # slow to answer on a loaded machine: asked again
        return bool(got["num-slaves"] >= replicas
                    and got["num-other-sentinels"] >= sentinels)

    def primary(self) -> int | None:
        """The port of the primary it names now (None: it did not answer in time)."""
        try:
            _host, port = self.client.sentinel_get_master_addr_by_name(MASTER)
        except (redispy.ConnectionError, redispy.TimeoutError):
            return None
        return int(port)

    def kill(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def linked(server: RedisServer, replicas: int) -> bool:
    """`server` is a primary with `replicas` replicas connected and in sync."""
    c = redispy.Redis(port=server.port, decode_responses=True, socket_timeout=2)
    try:
        info = c.info("replication")
        online = [v for k, v in info.items() if k.startswith("slave")
                  and isinstance(v, dict) and v.get("state") == "online"]
        if info["role"] != "master" or len(online) < replicas:
            return False
        # "online" is said once the primary has sent its data; a replica still loading
        # it confirms nothing yet: a write each of them confirms is the test of sync
        c.set("test:linked", "1")
        return int(c.execute_command("WAIT", replicas, 200)) >= replicas
    finally:
        c.close()


@contextlib.contextmanager
def replicated(tmp: Path, count: int, appendfsync: str = "everysec", at_once: bool = True
               ) -> Iterator[tuple[RedisServer, list[RedisServer]]]:
    """A primary and `count` replicas of it, in sync, each killed by pid after."""
    # Redis 7 waits 5 s (repl-diskless-sync-delay) for more replicas before it streams
    # its data to one that (re)connects: at each start, at a replica's return and after
    # a failover; the tests' replicas come one at a time or all at once
    # (the first primary streams at once in every test; its replicas wait as Redis does
    # in the Sentinel tests: a replica following the promoted primary would load its
    # data at once while the nodes' writes wait on it; their runs under busy loops
    # failed with it)
    at_start = ("--repl-diskless-sync-delay", "0")
    sync = at_start if at_once else ()
    primary = RedisServer(tmp / "primary", appendfsync=appendfsync, args=at_start).start()
    replicas: list[RedisServer] = []
    try:
        for i in range(count):
            replicas.append(RedisServer(tmp / f"replica{i}", args=(
                *sync, "--replicaof", "127.0.0.1", str(primary.port))).start())
        wait_until(lambda: linked(primary, count), what="replicas in sync")
        yield primary, replicas
    finally:
        for server in (primary, *replicas):
            server.kill()


@contextlib.contextmanager
def sentinels(tmp: Path, primary: RedisServer, replicas: int) -> Iterator[list[Sentinel]]:
    made: list[Sentinel] = []
    try:
        for i in range(3):
            made.append(Sentinel(tmp / f"sentinel{i}", primary))
        # the Sentinels find each other by the primary's hello channel (every 2 s)
        wait_until(lambda: all(s.sees(replicas, 2) for s in made), timeout=60,
                   what="three Sentinels that know each other and the replicas")
        yield made
    finally:
        for s in made:
            s.kill()


def answer_of(n: Node, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One control call on `n`'s socket: the JSON-RPC answer, its result or its error."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(n.sock))
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                              "params": params}).encode() + b"\n")
        with s.makefile("rb") as f:
            while True:
                got: dict[str, Any] = json.loads(f.readline())
                if got.get("id") == 1:
                    return got


def error_of(n: Node, method: str, params: dict[str, Any]) -> str | None:
    """The message of a call's error (None: it succeeded)."""
    error = answer_of(n, method, params).get("error")
    return None if error is None else str(error["message"])


def outcomes_of(d: dict[str, Any]) -> list[str]:
    return [x["outcome"] for x in d["attempts"]]


def in_sync(watch: list[Sentinel], replicas: list[RedisServer]) -> bool:
    """The Sentinels agree on one of `replicas` as the primary, and the other replica
    follows it, in sync."""
    named = {s.primary() for s in watch}
    promoted = [x for x in replicas if {x.port} == named]
    return bool(promoted) and linked(promoted[0], 1)


def roles(watch: list[Sentinel], replicas: list[RedisServer]) -> str:
    """What the Sentinels name and each replica says of itself (for a failure's message)."""
    said = [f"Sentinels name {[s.primary() for s in watch]}"]
    for x in replicas:
        c = redispy.Redis(port=x.port, decode_responses=True, socket_timeout=2)
        try:
            info = c.info("replication")
            said.append(f"{x.port}: {info.get('role')} of {info.get('master_port')} "
                        f"({info.get('master_link_status')}), "
                        f"{info.get('connected_slaves')} replicas")
        except redispy.RedisError as exc:
            said.append(f"{x.port}: {exc}")
        finally:
            c.close()
    return "; ".join(said)


def test_the_primary_killed_under_load_fails_over_and_loses_nothing_acknowledged(
        tmp: Path) -> None:
    worker = sleeper("sleepy", concurrency=2)
    with replicated(tmp, 2, at_once=False) as (primary, replicas), \
            sentinels(tmp, primary, 2) as watch:
        addresses = ", ".join(f'"127.0.0.1:{s.port}"' for s in watch)
        # a node's TTL longer than the failover takes (down-after 1 s, an election, a
        # promotion; over 10 s at load 5, ci r2): the nodes carry on as the same
        # incarnations, none fenced
        with nodes(tmp, primary, {"a": worker, "b": worker, "c": worker}, ttl=FAILOVER_TTL,
                   beat=1.0, extra=f"sentinels = [{addresses}]\n"
                                   f'sentinel_master = "{MASTER}"\n') as ns:
            a = ns["a"]
            wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 3,
                       what="three nodes alive")
            accepted: list[str] = []
            refused: list[str] = []
            stop = threading.Event()

            def load(n: Node) -> None:
                while not stop.is_set():
                    got = answer_of(n, "tasks.submit", {
                        "agent": "sleepy", "input": {"do": "sleep", "seconds": 0.05}})
                    if "error" in got:
                        refused.append(got["error"]["message"])
                    else:
                        accepted.append(got["result"]["task_id"])
                    time.sleep(0.01)

            threads = [threading.Thread(target=load, args=(n,)) for n in ns.values()]
            for t in threads:
                t.start()
            try:
                wait_until(lambda: len(accepted) >= 30, what="tasks accepted")
                primary.kill()
                wait_until(lambda: all(s.primary() not in (None, primary.port)
                                       for s in watch),
                           timeout=60, what="the Sentinels promoting a replica")
                before = len(accepted)
                try:
                    wait_until(lambda: len(accepted) >= before + 30, timeout=60,
                               what="submissions accepted by the new primary")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; the last refusals: {refused[-3:]}"
                                         ) from None
            finally:
                stop.set()
                for t in threads:
                    t.join(30)
            assert refused, "no submission was refused while the primary was away"
            where = (rf"the cluster's Redis at {MASTER} \(the primary Sentinel "
                     rf"127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+ names\)")
            away = re.compile(rf"{where} is unreachable \(.+\): the task was not accepted"
                              rf"(, unless Redis took it before it stopped answering "
                              rf"\(`corral task (?P<id>\S+)` tells once it answers\))?")
            unconfirmed = re.compile(
                rf"the task was not acknowledged: {where} took it, but \d of the 1 "
                rf"replicas ack_replicas asks for confirmed it within 1 s \(ack_timeout\): "
                rf"a failover could lose it. It may yet run: `corral task (?P<id>\S+)` "
                rf"tells")
            maybe = []
            for r in refused:
                said = away.fullmatch(r) or unconfirmed.fullmatch(r)
                assert said is not None, r
                if said.group("id"):
                    maybe.append(said.group("id"))
            assert len(set(accepted)) == len(accepted)
            for n in ns.values():
                done = [n.call("tasks.get", {"task_id": t, "wait": True}) for t in accepted]
                assert {d["status"] for d in done} == {"succeeded"}, [
                    d for d in done if d["status"] != "succeeded"]
                for d in done:  # one outcome each: the last attempt's
                    assert outcomes_of(d).count("succeeded") == 1, d
                    assert outcomes_of(d)[-1] == "succeeded", d
            # a submission refused with its id may have been kept: then it too ends once
            for task_id in maybe:
                if error_of(a, "tasks.get", {"task_id": task_id}) is None:
                    d = a.call("tasks.get", {"task_id": task_id, "wait": True})
                    assert outcomes_of(d).count("succeeded") <= 1, d
            # the nodes carried on without a restart: the same incarnations, none fenced,
            # on the promoted primary
            listed = a.nodes()["nodes"]
            assert {(x["node"], x["alive"], x["incarnation"]) for x in listed} == {
                ("a", True, 1), ("b", True, 1), ("c", True, 1)}
            for n in ns.values():
                cluster = n.json("stats", "--json")["cluster"]
                assert cluster["fences"] == 0 and cluster["redis_error"] is None, cluster
            # the other replica follows the promoted one (a resync it confirms nothing in);
            # the one the Sentinels name is asked each time: on a loaded machine they may
            # have failed over once more since (down-after 1 s)
            try:
                wait_until(lambda: in_sync(watch, replicas), timeout=60,
                           what="the promoted primary's replica in sync")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; {roles(watch, replicas)}") from None
            assert run(a, "sleepy", {"do": "sleep", "seconds": 0})["status"] == "succeeded"


# a beat at which a node's periodic reads of Redis's settings (CHECK_BEATS beats apart)
# are 15 s apart: longer than a loaded machine takes to start a node and refuse a write
SLOW_BEAT = 0.5


def test_a_write_no_replica_confirms_is_not_acknowledged_and_waits(tmp: Path) -> None:
    with replicated(tmp, 1, appendfsync="no") as (primary, [replica]), \
            nodes(tmp, primary, {"a": sleeper("sleepy", concurrency=2)}, beat=SLOW_BEAT,
                  extra="ack_replicas = 1\nack_timeout = 0.5\n") as ns:
        a = ns["a"]
        # (listed once its first beat is in Redis: at 0.5 s, after READY on a loaded host)
        wait_until(lambda: any(n["alive"] for n in a.nodes()["nodes"]), what="node a alive")
        # the node read Redis's settings at its first beat (appendfsync no is said):
        # the next periodic read is CHECK_BEATS beats later
        wait_until(lambda: a.call("stats.get")["cluster"]["redis_warnings"] == [
            "Redis's appendfsync is no: a crash of its host may lose acknowledged tasks; "
            "set everysec or always"], what="the node's first reading of Redis's settings")
        assert run(a, "sleepy", {"do": "sleep", "seconds": 0})["status"] == "succeeded"
        running = a.call("tasks.submit", {"agent": "sleepy",
                                          "input": {"do": "sleep", "seconds": 3}})["task_id"]
        wait_until(lambda: a.call("tasks.get", {"task_id": running})["status"] == "running",
                   what="the long task running")
        replica.kill()
        said = error_of(a, "tasks.submit", {"agent": "sleepy",
                                            "input": {"do": "sleep", "seconds": 0}})
        assert said is not None
        unconfirmed = re.fullmatch(
            rf"the task was not acknowledged: the cluster's Redis at "
            rf"redis://127\.0\.0\.1:{primary.port}/0 took it, but 0 of the 1 replicas "
            rf"ack_replicas asks for confirmed it within 0\.5 s \(ack_timeout\): a "
            rf"failover could lose it. It may yet run: `corral task (\S+)` tells", said)
        assert unconfirmed is not None, said
        # the long task's outcome, written but not confirmed, waits in the outbox and
        # goes again until a replica has it
        wait_until(lambda: a.call("stats.get")["cluster"]["outbox"] == 1,
                   what="the outcome waiting for a replica")
        # and the node says why, where it says what Redis's settings risk
        short = ("Redis's primary has 0 replicas connected, and ack_replicas asks for 1: "
                 "no task, outcome or step is acknowledged until one is back (submissions "
                 "are refused, outcomes wait)")
        wait_until(lambda: short in a.call("stats.get")["cluster"]["redis_warnings"],
                   timeout=30, what="the warning that no replica confirms")
        # said at the beat after the refusal, not at the next periodic read
        assert a.proc is not None
        since = time.time() - psutil.Process(a.proc.pid).create_time()
        assert since < CHECK_BEATS * SLOW_BEAT, f"said {since:.1f} s after the node started"
        replica.start()
        wait_until(lambda: a.call("stats.get")["cluster"]["outbox"] == 0,
                   timeout=30, what="the outcome confirmed once the replica is back")
        stats = a.json("stats", "--json")["cluster"]
        assert stats["late_writes_refused"] == 0, stats  # sent again: found its own
        done = a.call("tasks.get", {"task_id": running, "wait": True})
        assert done["status"] == "succeeded" and outcomes_of(done) == ["succeeded"], done
        # the refused submission was on the primary: it ran, once
        kept = a.call("tasks.get", {"task_id": unconfirmed.group(1), "wait": True})
        assert outcomes_of(kept).count("succeeded") == 1, kept
        assert run(a, "sleepy", {"do": "sleep", "seconds": 0})["status"] == "succeeded"


def test_a_primary_short_of_replicas_is_said_with_what_it_stops() -> None:
    assert replicas_short(1, 1) is None and replicas_short(2, 1) is None
    assert replicas_short(1, 2) == (
        "Redis's primary has 1 replicas connected, and ack_replicas asks for 2: no task, "
        "outcome or step is acknowledged until one is back (submissions are refused, "
        "outcomes wait)")
    assert "until they are back" in (replicas_short(0, 2) or "")


# -- [cluster]'s keys for a Redis that fails over ------------------------------------------
KEYED = 'key_file = "/etc/corral/cluster.key"\n'


def settings_of(tmp: Path, table: str) -> ClusterSettings:
    path = tmp / "corral.toml"
    path.write_text(f"[cluster]\n{KEYED}{table}\n")
    got = load_config(path).cluster
    assert got is not None
    return got


def test_sentinels_ask_for_a_replica_by_default_and_a_plain_redis_does_not(
        tmp: Path) -> None:
    assert settings_of(tmp, "").replicas_acked == 0
    got = settings_of(tmp, 'sentinels = ["10.0.0.5:26379", "sentinel-2:26379"]\n'
                           'sentinel_master = "corral"\n')
    assert (got.sentinels, got.sentinel_master, got.replicas_acked, got.ack_timeout) == (
        ["10.0.0.5:26379", "sentinel-2:26379"], "corral", 1, 1.0)
    got = settings_of(tmp, 'sentinels = ["s:26379"]\nsentinel_master = "m"\n'
                           "ack_replicas = 0\n")
    assert got.replicas_acked == 0  # said in so many words: the primary's word alone
    assert settings_of(tmp, "ack_replicas = 2\nack_timeout = 0.25").replicas_acked == 2


@pytest.mark.parametrize(("table", "message"), [
    ('sentinel_master = "corral"',
     "cluster.sentinel_master: given without sentinels (the Sentinels that name its "
     "primary)"),
    ('sentinels = ["s:26379"]',
     "cluster.sentinel_master: the name the Sentinels monitor the cluster's Redis as is "
     "needed with sentinels"),
    ('sentinels = ["s"]\nsentinel_master = "m"', "cluster.sentinels: 's' is not HOST:PORT"),
    ('sentinels = ["s:0"]\nsentinel_master = "m"',
     "cluster.sentinels: 's:0' is not HOST:PORT"),
    ('sentinels = [":26379"]\nsentinel_master = "m"',
     "cluster.sentinels: ':26379' is not HOST:PORT"),
    ('sentinels = ["s:1"]\nsentinel_master = "a b"',
     "cluster.sentinel_master: 'a b' is not 1-64 characters of letters, digits"),
    ('redis = "unix:///run/redis.sock"\nsentinels = ["s:1"]\nsentinel_master = "m"',
     "cluster.redis: a unix:// URL with sentinels (the Sentinels name a primary by host "
     "and port): use redis:// or rediss://"),
    ("ack_replicas = -1", "cluster.ack_replicas: Expected `int` >= 0"),
    ("ack_timeout = 0", "cluster.ack_timeout: Expected `float` > 0.0"),
])
def test_bad_failover_keys_are_refused_naming_the_key(tmp: Path, table: str,
                                                      message: str) -> None:
    with pytest.raises(ConfigError) as got:
        settings_of(tmp, table)
    assert str(got.value).startswith(f"{tmp / 'corral.toml'}: ")
    assert message in str(got.value)


def test_a_run_under_way_when_the_primary_dies_finishes_with_each_step_once(
        tmp: Path) -> None:
    """A workflow run's record and rows are acknowledged as tasks are (a replica has them
    before the node goes on): the primary kill -9'd mid-map, the Sentinels promote a
    replica, and the run finishes on the same nodes, each step's work done by one task,
    its row's."""
    from ..test_workflows import SLOW, _marks, agent_toml

    with replicated(tmp, 2, at_once=False) as (primary, _replicas), \
            sentinels(tmp, primary, 2) as watch:
        addresses = ", ".join(f'"127.0.0.1:{s.port}"' for s in watch)
        fleet = {}
        for name in ("a", "b"):
            (tmp / name).mkdir()
            fleet[name] = agent_toml(tmp / name, replicas=2) + SLOW
        # (a TTL longer than a failover takes: both nodes fenced when it took over 10 s,
        # ci a4, at load 5)
        with nodes(tmp, primary, fleet, ttl=FAILOVER_TTL, beat=1.0,
                   extra=f"sentinels = [{addresses}]\n"
                         f'sentinel_master = "{MASTER}"\n') as ns:
            a = ns["a"]
            wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                       what="two nodes alive")
            marks = tmp / "marks"
            marks.mkdir()
            run_id = a.call("workflows.run", {"name": "slow", "input": {
                "dir": str(marks)}})["run_id"]
            wait_until(lambda: any(k.startswith("each") for k in _marks(marks)),
                       timeout=60, what="the map under way")
            primary.kill()
            wait_until(lambda: all(s.primary() not in (None, primary.port) for s in watch),
                       timeout=60, what="the Sentinels promoting a replica")
            view = wait_until(lambda: (v := a.call("runs.get", {"run_id": run_id}))[
                "status"] != "running" and v, timeout=120, what="the run's end")
            assert view["status"] == "succeeded", view
            assert view["output"] == sum(i * i for i in range(6))
            rows = {(s["step"], s["item"]): s["task_id"] for s in view["steps"]}
            marked = _marks(marks)
            assert set(marked) == {"first", "last", *(f"each{i}" for i in range(6))}
            for key, task_ids in marked.items():
                step, item = ("each", int(key[4:])) if key.startswith("each") else (key, None)
                assert task_ids == {rows[(step, item)]}, (key, task_ids)
            # and its work done once: a task run again under its own id (a claim the
            # promoted replica lacked, claimed again there) leaves a second mark
            assert len(list(marks.iterdir())) == len(marked), sorted(
                f.name for f in marks.iterdir())
            listed = a.nodes()["nodes"]
            assert {(x["node"], x["alive"], x["incarnation"]) for x in listed} == {
                ("a", True, 1), ("b", True, 1)}


async def test_a_script_redis_had_not_loaded_runs_before_its_write_is_unconfirmed(
        tmp: Path) -> None:
    """A script a (new) primary does not know yet is loaded and run again before its
    write is refused as unconfirmed: UnconfirmedWrite says Redis took it, and it did."""
    with replicated(tmp, 1) as (primary, [replica]):
        client = redispy.asyncio.Redis(port=primary.port)
        try:
            s = Scripts(client, Acks(1, 0.3, "t:acks"))
            put = client.register_script("redis.call('SET', KEYS[1], ARGV[1]) return 1")
            assert await s.acknowledged([(put, ["k"], ["1"])]) == [1]
            # another script, not yet loaded, with no replica to confirm it
            add = client.register_script("return redis.call('INCR', KEYS[1])")
            assert replica.proc is not None
            replica.proc.send_signal(signal.SIGSTOP)
            with pytest.raises(UnconfirmedWrite, match=r"^0 of the 1 replicas ack_replicas "
                               r"asks for confirmed it within 0\.3 s \(ack_timeout\)$"):
                await s.acknowledged([(put, ["k"], ["2"]), (add, ["n"], [])])
            assert (await client.get("k"), await client.get("n")) == (b"2", b"1")
            replica.proc.send_signal(signal.SIGCONT)
            wait_until(lambda: linked(primary, 1), what="the replica back in sync")
            patient = Scripts(client, Acks(1, 10.0, "t:acks"))
            assert await patient.acknowledged([(add, ["n"], [])]) == [2]
        finally:
            await client.aclose()
