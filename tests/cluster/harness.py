"""Cluster nodes for the tests: real `corral daemon` processes on one host, each with its
own socket and state directory, all on the test's redis-server."""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, Daemon
from ..redis_harness import RedisServer
from ..test_methods import Raw

TTL = 1.0  # short, so that a dead node is found within a test's patience
BEAT = 0.25
# the TTL of a test that waits on no node's lapse: a loaded host holds a node's loop past
# the short one (the stalls a loaded CI host's nodes logged), and the node is then taken
# for dead by the others, its claims and placements taken over, as by design
STEADY_TTL = 4 * TTL
# the TTL of a test that must see no lapse at all (its one node's lapse would take back its
# own task, and a call the fenced attempt could not journal is made again): past the
# stalls a host loaded far beyond its cores gives a node's loop
CALM_TTL = 30 * TTL


def cluster_key(redis: RedisServer) -> Path:
    """The key the nodes of a test's cluster share (a cluster refuses to start without
    one unless it says `insecure = true`): made once, beside its Redis's files."""
    path = redis.dir / "cluster.key"
    if not path.exists():
        path.write_bytes(os.urandom(32).hex().encode())
        path.chmod(0o600)
    return path


def cluster_table(redis: RedisServer, node: str, ttl: float = TTL, beat: float = BEAT,
                  name: str = "test", extra: str = "") -> str:
    """`extra`: more [cluster] keys, a line each; without a `key_file` or `insecure` of
    its own, the cluster's shared key (`cluster_key`)."""
    if "key_file" not in extra and "insecure" not in extra:
        extra += f'key_file = "{cluster_key(redis)}"\n'
    return textwrap.dedent(f"""
        [cluster]
        redis = "{redis.url}"
        name = "{name}"
        node = "{node}"
        node_ttl = {ttl}
        beat = {beat}
    """) + extra


class Node(Daemon):
    def __init__(self, directory: Path, name: str, redis: RedisServer, agents: str,
                 supervisor: str = "", **cluster: Any) -> None:
        """`supervisor`: [supervisor] keys, a line each (`manual_clock = true`)."""
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory, agents + cluster_table(redis, name, **cluster),
                         extra=supervisor)
        self.name = name

    def run(self, agent: str, task_input: str, *args: str) -> Any:
        return self.cli("run", agent, "--input", task_input, "--json", *args)

    def nodes(self) -> dict[str, Any]:
        """The cluster's nodes as `corral nodes --json` prints them (asked on the socket:
        the tests poll it)."""
        return dict(self.ask("nodes.list"))

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One control call on the socket, its answer as JSON values."""
        c = Raw(self.sock)
        try:
            return msgspec.json.decode(c.call(method, params))
        finally:
            c.close()

    def kill9(self) -> None:
        kill9(self)


def kill9(d: Daemon) -> None:
    """kill -9 of the daemon, and then of the workers it leaves behind (their own
    sessions would outlive it), each by pid."""
    assert d.proc is not None
    workers = psutil.Process(d.proc.pid).children(recursive=True)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    for w in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGKILL)


def run(n: Node, agent: str, task_input: Any, **params: Any) -> Any:
    """A cluster task submitted on `n`, its record once it ended (attempts' nodes)."""
    task_id = n.call("tasks.submit", {"agent": agent, "input": task_input,
                                   **params})["task_id"]
    return n.call("tasks.get", {"task_id": task_id, "wait": True})


def sleeper(name: str, *, retries: int = 0, concurrency: int = 1, warm: bool = False
            ) -> str:
    """examples/misbehave.py: each task does what its input says (sleep, ...); `warm`:
    forked from a zygote."""
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_concurrent_tasks = {concurrency}
        retries = {retries}
        stop_timeout = 5.0
        {"warm = true" if warm else ""}
    """)


@contextlib.contextmanager
def nodes(tmp: Path, redis: RedisServer, agents: dict[str, str], *, ready: float = 60.0,
          **cluster: Any) -> Iterator[dict[str, Node]]:
    """Started nodes by name (each with its agents' TOML), stopped after. The nodes start
    side by side (each awaited on its own READY after all are started): a daemon's start
    is ~0.5 s of one core, and three one after another were a test's first 1.5 s.
    `ready`: how long a node may take to READY, which waits for every agent it starts."""
    made: dict[str, Node] = {}
    try:
        for name, toml in agents.items():
            made[name] = Node(tmp / name, name, redis, toml, **cluster)
        for n in made.values():
            n.start(wait_ready=False)
        for n in made.values():
            n.notify.wait_for("READY", ready, proc=n.proc)
        yield made
    finally:
        for n in made.values():
            n.close()
