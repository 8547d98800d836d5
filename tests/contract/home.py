"""A task's home as the contract suite drives it: one daemon with its SQLite state (`node`)
or two cluster nodes on a real redis-server (`cluster`), behind the same operations, each
made through the public surface (the control socket, the CLI, the HTTP API as a token).

A caller comes in at an *entry*: the node home has one, the cluster home one per node, so
`at=1` is the other node of a cluster and the same daemon of a node: a behaviour that
needs two places (two deciders of one ask) is written once and means both."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from corral.cli.client import CallFailed, Client

from ..cluster.harness import TTL, Node, kill9
from ..daemon_harness import Daemon, free_port
from ..redis_harness import RedisServer, redis_server
from ..test_daemon_cli import wait_until as waited

KINDS = ("node", "cluster")
PATIENCE = 60.0  # seconds a wait for an event may take on a loaded 2-core host


def wait_until(what: str, fn: Callable[[], Any], timeout: float = PATIENCE) -> Any:
    """The suite's wait_until, what it waits for first, a loaded host's patience."""
    return waited(fn, timeout, what)


class Tenant:
    """One entry's REST API as a tenant's token."""

    def __init__(self, port: int, secret: str) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.secret = secret

    def __call__(self, verb: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=verb, headers={
            "Authorization": f"Bearer {self.secret}", "Content-Type": "application/json",
            **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=PATIENCE) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


class Home:
    """`agents`: the agents' (and tenants') TOML; `supervisor`: [supervisor] lines of a
    node home; `cluster`: [cluster] lines of a cluster home (each home's own bounds are
    its own keys: the test names both); `ttl`: a cluster node's node_ttl."""

    def __init__(self, kind: str, directory: Path, agents: str, supervisor: str = "",
                 cluster: str = "", ttl: float = TTL) -> None:
        assert kind in KINDS, kind
        self.kind = kind
        self.dir = directory
        self.redis: RedisServer | None = None
        self._redis: contextlib.ExitStack = contextlib.ExitStack()
        names = ["a"] if kind == "node" else ["a", "b"]
        if kind == "cluster":
            self.redis = self._redis.enter_context(redis_server(directory / "redis"))
        self.ports: list[int] = []
        self.entries: list[Daemon] = []
        for name in names:
            port = free_port()
            self.ports.append(port)
            toml = agents + f'\n[http]\nlisten = "127.0.0.1:{port}"\n'
            if self.redis is None:
                (directory / name).mkdir(parents=True, exist_ok=True)
                self.entries.append(Daemon(directory / name, toml, extra=supervisor))
            else:  # (by default a short TTL: a dead node is found within a patience)
                self.entries.append(Node(directory / name, name, self.redis, toml,
                                         supervisor, ttl=ttl, extra=cluster))

    def start(self) -> Home:
        # side by side, each awaited on its own READY (a daemon's start is ~0.5 s of CPU)
        for d in self.entries:
            d.start(wait_ready=False)
        for d in self.entries:
            assert d.proc is not None
            d.notify.wait_for("READY", proc=d.proc)
        self.joined()
        return self

    def joined(self) -> None:
        """A cluster's nodes all alive, each seen by the other (a node home: at once)."""
        if self.kind == "cluster":
            for i in range(len(self.entries)):
                wait_until("every node alive", lambda i=i: sum(
                    n["alive"] for n in self.call("nodes.list", at=i)["nodes"]
                ) == len(self.entries))

    def close(self) -> None:
        for d in self.entries:
            d.close()
        self._redis.close()

    # -- calls --------------------------------------------------------------------------
    def entry(self, at: int) -> Daemon:
        return self.entries[at % len(self.entries)]

    def call(self, method: str, params: dict[str, Any] | None = None, at: int = 0) -> Any:
        """A control method's answer as JSON values, asked at an entry."""
        with Client(self.entry(at).sock) as c:
            return c.call(method, params)

    def refusal(self, method: str, params: dict[str, Any] | None = None, at: int = 0
                ) -> tuple[int, str]:
        """The code and the exact message a control method is refused with."""
        try:
            got = self.call(method, params, at)
        except CallFailed as e:
            return e.code, e.message
        raise AssertionError(f"{method} was not refused: {got}")

    def cli(self, *args: str, at: int = 0) -> subprocess.CompletedProcess[str]:
        return self.entry(at).cli(*args)

    def tenant(self, name: str, at: int = 0) -> Tenant:
        """The REST API at an entry as a token of tenant `name` (tokens are a node's
        own: made at that entry)."""
        r = self.cli("token", "create", f"{name}-{at}-{time.monotonic_ns()}", "--tenant",
                     name, "--scope", "agents:read", "--scope", "agents:write", "--scope",
                     "tasks:run", "--scope", "tasks:read", "--scope", "approvals", at=at)
        assert r.returncode == 0, r.stderr
        return Tenant(self.ports[at % len(self.ports)], r.stdout.strip())

    # -- tasks --------------------------------------------------------------------------
    def submit(self, agent: str, task_input: Any, at: int = 0, **options: Any) -> str:
        task_id: str = self.call("tasks.submit", {"agent": agent, "input": task_input,
                                                  **options}, at)["task_id"]
        return task_id

    def task(self, task_id: str, at: int = 0) -> dict[str, Any]:
        return dict(self.call("tasks.get", {"task_id": task_id}, at))

    def wait(self, task_id: str, at: int = 0) -> dict[str, Any]:
        """The task's record once it has ended."""
        return dict(self.call("tasks.get", {"task_id": task_id, "wait": True}, at))

    def run(self, agent: str, task_input: Any, at: int = 0, **options: Any
            ) -> dict[str, Any]:
        return self.wait(self.submit(agent, task_input, at, **options), at)

    def status_of(self, task_id: str, status: str, at: int = 0) -> dict[str, Any]:
        """The task's record once it is in `status`."""
        return dict(wait_until(f"task {task_id} {status}", lambda: (
            t := self.task(task_id, at))["status"] == status and t))

    # -- asks ---------------------------------------------------------------------------
    def asks(self, at: int = 0) -> list[dict[str, Any]]:
        """The pending asks, oldest first."""
        asks: list[dict[str, Any]] = self.call("approvals.list", at=at)["asks"]
        return asks

    def ask_of(self, task_id: str, at: int = 0) -> dict[str, Any]:
        """The task's pending ask, once it is listed."""
        return dict(wait_until(f"an ask of task {task_id}", lambda: next(
            (a for a in self.asks(at) if a["task_id"] == task_id), None)))

    def decide(self, ask_id: str, decision: str, at: int = 0, **more: Any) -> Any:
        return self.call("approvals.resolve", {"id": ask_id, "decision": decision, **more},
                         at)

    # -- sessions -----------------------------------------------------------------------
    def session(self, agent: str, session: str, at: int = 0) -> dict[str, Any]:
        return dict(self.call("sessions.get", {"agent": agent, "session": session}, at))

    # -- faults -------------------------------------------------------------------------
    def crash(self, task_id: str | None = None) -> None:
        """kill -9 of the daemon whose attempt of the task runs or ran (of the first
        entry, for a task not started or none), and of its workers, then started again:
        a node home takes its tasks back from its journal at its start, a cluster's other
        node takes them over (the killed one rejoins as a new incarnation)."""
        at = 0
        if self.kind == "cluster" and task_id is not None:
            attempts = self.task(task_id)["attempts"]
            at = ["a", "b"].index(attempts[-1]["node"]) if attempts else 0
        d = self.entries[at]
        kill9(d)
        d.start()
        self.joined()

    def restart(self) -> None:
        """Every entry stopped (SIGTERM) and started again, one after another."""
        for d in self.entries:
            assert d.stop() == 0
            d.start()
        self.joined()


@contextlib.contextmanager
def made(kind: str, directory: Path, agents: str, supervisor: str = "", cluster: str = "",
         ttl: float = TTL) -> Iterator[Home]:
    home = Home(kind, directory, agents, supervisor, cluster, ttl)
    try:
        yield home.start()
    finally:
        home.close()
