"""agents.watch and stats.watch (daemon/fleetwatch.py): the fleet's snapshot, then each replica
state change, in order, on the control socket and as Server-Sent Events; resumed by
Last-Event-ID, limited to a token's agents, bounded for a client that does not read."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral import methods as m
from corral.daemon.caller import Caller
from corral.daemon.daemon import Daemon
from corral.jsonrpc import RpcError
from corral.supervisor import State

from .conftest import ROOT
from .daemon_harness import hello, in_process, problem, running_daemon, shared_tmpdir
from .test_gateway_stdio import wait_until_async
from .test_http_api import PROBLEM, SOCKET, serving

# what each notification decodes into, strictly (an unknown key fails the test)
TYPES: dict[str, Any] = {"agents.snapshot": m.FleetSnapshot,
                         "agents.transition": m.ReplicaChange,
                         "agents.roster": m.AgentRoster, "agents.sample": m.ReplicaSamples,
                         "stats.sample": m.StatsSample}
SERVING = {"ready", "idle", "busy"}


def strictly(kind: type[msgspec.Struct], raw: bytes) -> Any:
    """Decode as the declared Struct, and hold it to encode back to the same JSON (no
    key the declaration lacks, none it has left out)."""
    value = msgspec.json.decode(raw, type=kind)
    assert msgspec.json.decode(msgspec.json.encode(value)) == msgspec.json.decode(raw)
    return value


class Notes:
    """A stream's notifications as (method, decoded params), read by someone."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.arrived = asyncio.Event()

    def add(self, method: str, raw: bytes) -> None:
        self.seen.append((method, strictly(TYPES[method], raw)))
        self.arrived.set()

    async def next(self, method: str | None = None, timeout: float = 30) -> Any:
        """The next notification (of `method`; others before it are passed over)."""
        async with asyncio.timeout(timeout):
            while True:
                while not self.seen:
                    self.arrived.clear()
                    await self.arrived.wait()
                got, params = self.seen.pop(0)
                if method is None or got == method:
                    return params if method else (got, params)

    async def changes_of(self, agent: str, replica: int, until: str, timeout: float = 30
                         ) -> list[m.ReplicaChange]:
        """agent#replica's transitions up to the first into `until`, passing over the
        others' and the samples."""
        out: list[m.ReplicaChange] = []
        async with asyncio.timeout(timeout):
            while True:
                c = await self.next("agents.transition")
                if (c.agent, c.replica) == (agent, replica):
                    out.append(c)
                    if c.state == until:
                        return out


@contextlib.asynccontextmanager
async def socket_watch(d: Daemon, params: dict[str, Any]) -> AsyncIterator[Notes]:
    """agents.watch on the control socket, as any JSON-RPC client calls it."""
    reader, writer = await asyncio.open_unix_connection(str(d.services.socket_path),
                                                        limit=1 << 24)
    writer.write(msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": "agents.watch",
                                      "params": params}) + b"\n")
    notes = Notes()

    async def read() -> None:
        while line := await reader.readline():
            msg = msgspec.json.decode(line)
            assert "method" in msg, msg  # a follow never answers
            notes.add(msg["method"], msgspec.json.encode(msg["params"]))

    task = asyncio.ensure_future(read())
    try:
        yield notes
    finally:
        task.cancel()
        writer.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Recorder:
    """A Channel of the Dispatcher's, as a transport is: it records what it is sent, and
    the test says when it is writable (a client that reads, or not)."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.notes = Notes()

    @property
    def writable(self) -> asyncio.Event:
        return self._writable

    def notify(self, method: str, params: Any) -> None:
        self.notes.add(method, msgspec.json.encode(params))


async def restart(d: Daemon, name: str) -> None:
    await d.dispatcher.call(SOCKET, "agents.restart", {"names": [name]})


@pytest.mark.deadline(120)
async def test_the_fleet_then_each_change_in_order_on_the_socket(tmp_path: Path) -> None:
    async with in_process(tmp_path, hello("a") + hello("b")) as d:
        sup = d.sup
        async with socket_watch(d, {}) as notes:
            snap = await notes.next("agents.snapshot")
            assert (snap.resync, snap.missed) == (False, None)
            assert [(r.name, r.replica, r.state) for r in snap.replicas] == [
                ("a", 0, "ready"), ("b", 0, "ready")]
            assert snap.replicas[0].pid == sup.agent("a").replicas[0].pid
            epoch, _, seq = snap.id.partition("-")

            # a restart, every step of it, in order, each with the daemon's time
            old_pid = sup.agent("a").replicas[0].pid
            before = time.time()
            await restart(d, "a")
            steps = await notes.changes_of("a", 0, "ready")
            assert [(c.previous, c.state, c.cause) for c in steps] == [
                ("ready", "shutting_down", "stop"), ("shutting_down", "terminated", "exit"),
                ("terminated", "starting", "spawn"), ("starting", "ready", "ready")]
            assert [c.reason for c in steps[:2]] == ["restarted on request", "restarted on request"]
            assert all(before <= c.time <= time.time() for c in steps)
            assert [c.time for c in steps] == sorted(c.time for c in steps)
            # ids: this daemon life's epoch, numbered on from the snapshot's
            assert [c.id for c in steps] == [f"{epoch}-{int(seq) + i}" for i in range(1, 5)]
            new_pid = sup.agent("a").replicas[0].pid
            assert steps[0].pid == old_pid and steps[-1].pid == new_pid != old_pid
            # each carries the replica's row as agents.status shows it
            assert steps[-1].row is not None
            assert (steps[-1].row.state, steps[-1].row.pid) == ("ready", new_pid)
            assert steps[1].row is not None and steps[1].row.last_exit is not None

            # scaled up: the agent's new list of replicas, then the new one's changes
            await d.dispatcher.call(SOCKET, "agents.scale", {"name": "b", "replicas": 2})
            roster = await notes.next("agents.roster")
            assert (roster.agent, [(r.replica, r.state) for r in roster.replicas]) == (
                "b", [(0, "ready"), (1, "initial")])
            up = await notes.changes_of("b", 1, "ready")
            assert [c.state for c in up] == ["starting", "ready"]
            assert up[-1].row is not None and up[-1].row.pid == sup.agent("b").replicas[1].pid

            # scaled down: the list first, then the last changes of the one taken away,
            # which holds no place any more (no row)
            await d.dispatcher.call(SOCKET, "agents.scale", {"name": "b", "replicas": 1})
            roster = await notes.next("agents.roster")
            assert [r.replica for r in roster.replicas] == [0]
            down = await notes.changes_of("b", 1, "terminated")
            assert [(c.state, c.reason, c.row) for c in down] == [
                ("shutting_down", "scaled down", None), ("terminated", "scaled down", None)]

            # a rolling restart: the new process's changes while the old one holds the
            # place (no row), the list with the new one in it, the old one's end
            old_pid = sup.agent("b").replicas[0].pid
            await d.dispatcher.call(SOCKET, "agents.restart", {"names": ["b"],
                                                               "rolling": True})
            seen: list[tuple[str, Any]] = []
            while not (seen and seen[-1][0] == "agents.transition"
                       and seen[-1][1].state == "terminated"):
                seen.append(await notes.next())
            kinds = [(k, p.state if k == "agents.transition" else len(p.replicas),
                      p.row is not None if k == "agents.transition" else None)
                     for k, p in seen]
            assert kinds == [("agents.transition", "starting", False),
                             ("agents.transition", "ready", False),
                             ("agents.roster", 1, None),
                             ("agents.transition", "shutting_down", False),
                             ("agents.transition", "terminated", False)]
            assert seen[2][1].replicas[0].pid == sup.agent("b").replicas[0].pid != old_pid
            assert seen[-1][1].pid == old_pid

            # removed: its last changes, then an empty list; added: its list
            await d.dispatcher.call(SOCKET, "agents.remove", {"names": ["a"]})
            await notes.changes_of("a", 0, "terminated")
            roster = await notes.next("agents.roster")
            assert (roster.agent, roster.replicas, roster.removed) == ("a", [], True)
            await d.dispatcher.call(SOCKET, "agents.add", {"agents": {
                "c": {"command": sup.agent("b").spec.command, "autostart": False,
                      "env": sup.agent("b").spec.env}}})
            roster = await notes.next("agents.roster")
            assert (roster.agent, [(r.replica, r.state) for r in roster.replicas]) == (
                "c", [(0, "initial")])
            assert not roster.removed
            # scaled to zero, not removed (an elastic agent asleep is so too)
            await d.dispatcher.call(SOCKET, "agents.scale", {"name": "c", "replicas": 0})
            roster = await notes.next("agents.roster")
            assert (roster.agent, roster.replicas, roster.removed) == ("c", [], False)


@pytest.mark.deadline(60)
async def test_samples_names_and_stats_samples(tmp_path: Path) -> None:
    async with in_process(tmp_path, hello("a") + hello("b")) as d:
        # only the agents named, and their figures each interval
        async with socket_watch(d, {"names": ["b"], "interval": 0.2}) as notes:
            snap = await notes.next("agents.snapshot")
            assert [r.name for r in snap.replicas] == ["b"]
            first = await notes.next("agents.sample")
            second = await notes.next("agents.sample")
            assert [(s.agent, s.replica) for s in first.replicas] == [("b", 0)]
            assert 0.1 < second.time - first.time < 2
            assert second.replicas[0].uptime > first.replicas[0].uptime > 0
            assert second.replicas[0].rss_bytes > 0
            await restart(d, "a")
            await restart(d, "b")
            # a's changes are not sent: b's are the first
            c = await notes.next("agents.transition")
            assert (c.agent, c.state) == ("b", "shutting_down")

        # an interval out of bounds: refused before any stream
        with pytest.raises(RpcError) as err:
            await d.dispatcher.call(SOCKET, "agents.watch", {"interval": 0.01})
        assert (err.value.code, err.value.message) == (
            jsonrpc.INVALID_PARAMS, "invalid params: Expected `float` >= 0.1 - at "
                                    "`$.interval`")

        # an agent not there yet is watched for: it comes when it is added
        async with socket_watch(d, {"names": ["c"]}) as notes:
            snap = await notes.next("agents.snapshot")
            assert snap.replicas == []
            await restart(d, "a")
            await d.dispatcher.call(SOCKET, "agents.add", {"agents": {
                "c": {"command": d.sup.agent("a").spec.command,
                      "env": d.sup.agent("a").spec.env}}})
            roster = await notes.next()
            assert (roster[0], roster[1].agent) == ("agents.roster", "c")
            assert [c.state for c in await notes.changes_of("c", 0, "ready")] == [
                "starting", "ready"]

        # stats.get's answer each interval
        channel = Recorder()
        run = asyncio.ensure_future(d.dispatcher.call(SOCKET, "stats.watch",
                                                      {"interval": 0.2}, channel))
        try:
            a = await channel.notes.next("stats.sample")
            b = await channel.notes.next("stats.sample")
            assert 0.1 < b.time - a.time < 2
            assert set(b.agents) == {"a", "b", "c"}
            assert b.supervisor.restarts == a.supervisor.restarts
        finally:
            run.cancel()


@pytest.mark.deadline(90)
async def test_a_client_that_does_not_read_is_resynced(tmp_path: Path) -> None:
    """It is sent nothing while it does not read, costs the daemon its cursor, and when
    it reads again past what the daemon kept, it is sent the fleet again, marked."""
    async with in_process(tmp_path, hello("a")) as d:
        watch = d.services.watch
        channel = Recorder()
        run = asyncio.ensure_future(d.dispatcher.call(SOCKET, "agents.watch", {}, channel))
        try:
            snap = await channel.notes.next("agents.snapshot")
            watch.ring = 3  # fewer changes kept than a restart makes
            channel.writable.clear()
            await restart(d, "a")
            await d.sup.wait_state("a", State.READY, timeout=30)
            await wait_until_async(lambda: watch.last == int(snap.id.split("-")[1]) + 4)
            assert channel.notes.seen == [] and len(watch.items) == 3
            channel.writable.set()
            again = await channel.notes.next()
            assert again[0] == "agents.snapshot"
            assert (again[1].resync, again[1].missed) == (True, 1)
            assert again[1].id == watch.id_of(watch.last)
            assert [r.state for r in again[1].replicas] == ["ready"]
            # and on from there, in order
            await restart(d, "a")
            steps = await channel.notes.changes_of("a", 0, "ready")
            assert [c.id for c in steps] == [watch.id_of(watch.last - 3 + i)
                                             for i in range(4)]
        finally:
            run.cancel()


async def sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, str,
                                                                       Any]]:
    """An SSE stream's events as (id, event, data decoded as the declared type)."""
    event: dict[str, str] = {}
    async for line in response.content:
        text = line.decode().rstrip("\n")
        if text.startswith(":"):
            continue
        if text:
            key, _, value = text.partition(": ")
            event[key] = value
            continue
        if event:
            kind = event["event"]
            yield event.get("id"), kind, strictly(TYPES[kind], event["data"].encode())
            event = {}


async def until(events: AsyncIterator[tuple[str | None, str, Any]], kind: str,
                pred: Any = None) -> tuple[str | None, Any]:
    async with asyncio.timeout(30):
        async for event_id, got, data in events:
            if got == kind and (pred is None or pred(data)):
                return event_id, data
    raise AssertionError("the stream ended")


@pytest.mark.deadline(120)
async def test_the_fleet_as_server_sent_events(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web-1") + hello("db")) as api:
        await api.token("reader", "agents:read")
        await api.token("web", "agents:read", agents="web-*")
        await api.token("logs", "logs:read")
        await api.token("metrics", "metrics:read")
        url = api.base + "/replicas/stream"

        def auth(token: str, **more: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {api.tokens[token]}", **more}

        # without the scope: 403 naming it, before any stream
        status, body, r = await api.ask("GET", "/replicas/stream", "logs")
        assert (status, r.content_type, body) == (403, PROBLEM, problem(
            403, "forbidden", "forbidden: agents.watch needs the agents:read scope, which "
                              "token logs does not hold", jsonrpc.FORBIDDEN))
        status, body, _ = await api.ask("GET", "/stats/stream", "reader")
        assert (status, body["detail"]) == (403, "forbidden: stats.watch needs the "
                                                 "metrics:read scope, which token reader "
                                                 "does not hold")

        ids: list[str] = []
        async with api.http.get(url, headers=auth("reader")) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            events = sse(stream)
            snap_id, snap = await until(events, "agents.snapshot")
            assert snap_id == snap.id and not snap.resync
            assert [r.name for r in snap.replicas] == ["web-1", "db"]
            await restart(api.d, "db")
            await api.d.sup.wait_state("db", State.READY, timeout=30)
            await restart(api.d, "web-1")
            async with asyncio.timeout(30):
                got = []
                while len(got) < 8:
                    event_id, change = await until(events, "agents.transition")
                    assert event_id == change.id
                    got.append(change)
            assert [(c.agent, c.state) for c in got] == [
                (a, s) for a in ("db", "web-1")
                for s in ("shutting_down", "terminated", "starting", "ready")]
            ids = [c.id for c in got]

        # resumed after the fourth: the four after it, and no snapshot first
        async with api.http.get(url, headers=auth("reader", **{"Last-Event-ID": ids[3]})
                                ) as stream:
            events = sse(stream)
            async with asyncio.timeout(30):
                again = [await anext(events) for _ in range(4)]
        assert [(i, k, d.agent) for i, k, d in again] == [
            (i, "agents.transition", "web-1") for i in ids[4:]]

        # an id of no change this daemon kept (another life's): the fleet, marked
        async with api.http.get(url, headers=auth("reader", **{"Last-Event-ID": "ab-1"})
                                ) as stream:
            event_id, kind, data = await anext(sse(stream))
        assert (kind, data.resync, data.missed, event_id) == (
            "agents.snapshot", True, None, api.d.services.watch.id_of(
                api.d.services.watch.last))

        # a token limited to web-*: web-1 only, in the snapshot and the changes
        async with api.http.get(url + "?interval=0.2", headers=auth("web")) as stream:
            events = sse(stream)
            _, snap = await until(events, "agents.snapshot")
            assert [r.name for r in snap.replicas] == ["web-1"]
            _, sample = await until(events, "agents.sample")
            assert [s.agent for s in sample.replicas] == ["web-1"]
            await restart(api.d, "db")
            await api.d.sup.wait_state("db", State.READY, timeout=30)
            await restart(api.d, "web-1")
            _, first = await until(events, "agents.transition")
            assert (first.agent, first.state) == ("web-1", "shutting_down")
        # and a name it does not see does not exist for it
        status, body, _ = await api.ask("GET", "/replicas/stream?names=db", "web")
        assert (status, body["detail"]) == (404, "no such agent: db (agents: web-1)")

        # stats: a sample each interval, of the agents the token sees
        async with api.http.get(api.base + "/stats/stream?interval=0.2",
                                headers=auth("metrics")) as stream:
            events = sse(stream)
            _, a = await until(events, "stats.sample")
            _, b = await until(events, "stats.sample")
        assert set(b.agents) == {"web-1", "db"} and b.time > a.time


@pytest.mark.deadline(60)
async def test_a_socket_caller_limited_to_some_agents(tmp_path: Path) -> None:
    """The glob holds on the socket too (a Caller with agents, as a cluster peer's)."""
    async with in_process(tmp_path, hello("web-1") + hello("db")) as d:
        limited = Caller(via="socket", agents="web-*")
        channel = Recorder()
        run = asyncio.ensure_future(d.dispatcher.call(limited, "agents.watch",
                                                      {"interval": 0.2}, channel))
        try:
            snap = await channel.notes.next("agents.snapshot")
            assert [r.name for r in snap.replicas] == ["web-1"]
            await restart(d, "db")
            await d.dispatcher.call(SOCKET, "agents.scale", {"name": "db", "replicas": 2})
            await d.sup.wait_state("db", State.READY, replica=1, timeout=30)
            await restart(d, "web-1")
            kinds = set()
            async with asyncio.timeout(30):
                while True:
                    kind, params = await channel.notes.next()
                    kinds.add(kind)
                    rows = getattr(params, "replicas", None)
                    agents = {r.agent if kind == "agents.sample" else r.name
                              for r in rows} if kind != "agents.roster" and rows else set()
                    assert agents <= {"web-1"}, (kind, params)
                    if kind in ("agents.transition", "agents.roster"):
                        assert params.agent == "web-1", (kind, params)
                    if kind == "agents.transition" and params.state == "ready":
                        break
            assert kinds == {"agents.sample", "agents.transition"} or kinds == {
                "agents.transition"}
        finally:
            run.cancel()


async def _lines(stream: asyncio.StreamReader, until: str, timeout: float = 30
                 ) -> list[str]:
    """A process's output lines up to the first that contains `until`."""
    out: list[str] = []
    async with asyncio.timeout(timeout):
        while not out or until not in out[-1]:
            line = await stream.readline()
            assert line, f"the output ended: {out}"
            out.append(line.decode().rstrip("\n"))
    return out


@pytest.mark.deadline(90)
async def test_corral_status_watch() -> None:
    # a daemon of its own process: the in-process one is the subreaper of this process's
    # children, and would take the CLI for a stray of its agents
    with running_daemon(shared_tmpdir(), hello("a") + hello("b")) as d:
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        cli = [sys.executable, "-m", "corral", "--socket", str(d.sock), "status", "--watch"]
        text = await asyncio.create_subprocess_exec(*cli, "a", stdout=asyncio.subprocess.PIPE,
                                                    env=env)
        js = await asyncio.create_subprocess_exec(*cli, "--json",
                                                  stdout=asyncio.subprocess.PIPE, env=env)
        try:
            assert text.stdout is not None and js.stdout is not None
            # the table, as `corral status a` prints it; then a line per change
            table = await _lines(text.stdout, "a#0")
            assert table[0].split() == ["AGENT", "STATE", "PID", "UPTIME", "RESTARTS",
                                        "CPU%", "RSS", "REASON"]
            assert table[1].split()[:2] == ["a#0", "ready"]
            first = msgspec.json.decode(await js.stdout.readline())
            assert first["event"] == "agents.snapshot"
            assert [r["name"] for r in first["replicas"]] == ["a", "b"]

            # as JSON: every notification, each as the method declares it
            async def changes(agent: str) -> list[m.ReplicaChange]:
                assert js.stdout is not None
                seen: list[m.ReplicaChange] = []
                while not seen or seen[-1].state != "ready":
                    note = msgspec.json.decode(await asyncio.wait_for(js.stdout.readline(),
                                                                      30))
                    kind = note.pop("event")
                    change = strictly(TYPES[kind], msgspec.json.encode(note))
                    if kind == "agents.transition" and change.agent == agent:
                        seen.append(change)
                return seen

            old = d.status()["a#0"]["pid"]
            await asyncio.to_thread(d.cli, "restart", "b")
            assert [c.state for c in await changes("b")] == [
                "shutting_down", "terminated", "starting", "ready"]
            await asyncio.to_thread(d.cli, "restart", "a")
            lines = await _lines(text.stdout, "starting -> ready")
            assert [c.state for c in await changes("a")] == [
                "shutting_down", "terminated", "starting", "ready"]
            new = d.status()["a#0"]["pid"]
            stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
            assert [re.sub(stamp, "T", ln) for ln in lines] == [
                f"T a#0[{old}] ready -> shutting_down: restarted on request",
                f"T a#0[{old}] shutting_down -> terminated: restarted on request",
                "T a#0 terminated -> starting: started",
                f"T a#0[{new}] starting -> ready: initialized"]
        finally:
            for p in (text, js):
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await asyncio.wait_for(p.wait(), 10)
