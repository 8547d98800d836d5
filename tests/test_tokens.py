"""Tokens of the HTTP API (daemon/tokens.py) and callers limited to some agents
(Caller.agents, enforced by the one Dispatcher for every transport). Against a real
daemon in this process; the CLI as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.daemon.daemon import Daemon
from corral.daemon.tokens import PREFIX, Tokens, tokens_of
from corral.jsonrpc import RpcError
from corral.supervisor import State

from .conftest import ROOT
from .daemon_harness import hello, in_process, sleeper
from .test_gateway_stdio import wait_until_async

SOCKET = Caller(via="socket")


def running(tmp_path: Path, agents: str) -> contextlib.AbstractAsyncContextManager[Daemon]:
    return in_process(tmp_path, agents)


async def refused(d: Daemon, caller: Caller, method: str, params: Any = None
                  ) -> tuple[int, str]:
    with pytest.raises(RpcError) as e:
        await d.dispatcher.call(caller, method, params)
    return e.value.code, e.value.message


async def cli(d: Daemon, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral", "--socket", str(d.services.socket_path), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.deadline(120)
async def test_a_token_is_shown_once_kept_as_a_hash_expires_and_is_revoked(
        tmp_path: Path) -> None:
    async with running(tmp_path, hello("web-1")) as d:
        rc, out, err = await cli(d, "token", "create", "ci", "--scope", "agents:read",
                                 "--scope", "tasks:run", "--agents", "web-*",
                                 "--expires", "30d", "--json")
        assert rc == 0, err
        made = msgspec.json.decode(out)
        assert list(made) == ["name", "scopes", "agents", "created", "expires", "tenant",
                              "token"]
        assert (made["name"], made["scopes"], made["agents"]) == (
            "ci", ["agents:read", "tasks:run"], "web-*")
        assert made["expires"] == pytest.approx(made["created"] + 30 * 86400)
        secret = made["token"]
        assert secret.startswith(PREFIX) and len(secret) > 40

        tokens = tokens_of(d.services.store)
        t = tokens.authenticate(secret)
        assert t is not None and (t.name, t.scopes, t.agents) == (
            "ci", frozenset({"agents:read", "tasks:run"}), "web-*")
        assert tokens.authenticate(secret + "x") is None
        assert tokens.authenticate(secret.removeprefix(PREFIX)) is None
        # only the hash is in the database, and a daemon reading it again knows the token
        rows = d.services.store.db.execute("SELECT name, hash FROM tokens").fetchall()
        assert rows == [("ci", hashlib.sha256(secret.encode()).hexdigest())]
        db = (tmp_path / "state").glob("corral.db*")
        assert not any(secret.encode() in p.read_bytes() for p in db)
        again = Tokens(d.services.store).authenticate(secret)
        assert again is not None and again.name == "ci"

        # the listing never shows a secret
        rc, out, err = await cli(d, "token", "list", "--json")
        assert rc == 0, err
        assert msgspec.json.decode(out) == {"tokens": [
            {k: v for k, v in made.items() if k != "token"}]}

        # refusals, each with nothing created
        assert await refused(d, SOCKET, "tokens.create", {"name": "ci", "scopes": [
            "admin"]}) == (jsonrpc.CONFLICT, "token ci exists (revoke it first)")
        assert await refused(d, SOCKET, "tokens.create", {"name": "x", "scopes": [
            "agents:read", "root"]}) == (
            jsonrpc.INVALID_PARAMS, "unknown scope root (known: admin, agents:read, "
            "agents:write, approvals, audit:read, events, logs:read, mcp:call, "
            "metrics:read, tasks:read, tasks:run)")
        assert await refused(d, SOCKET, "tokens.create", {"name": "x", "scopes": []}) == (
            jsonrpc.INVALID_PARAMS, "name at least one scope")
        assert await refused(d, SOCKET, "tokens.create", {"name": "a b", "scopes": [
            "admin"]}) == (jsonrpc.INVALID_PARAMS, "token name must be 1-64 characters of "
                                                   "[A-Za-z0-9_-], starting with a letter "
                                                   "or digit")
        rc, _, err = await cli(d, "token", "create", "y", "--scope", "admin",
                               "--expires", "0d")
        assert (rc, err.splitlines()[-1]) == (
            2, "Error: Invalid value for --expires: a token's lifetime must be positive")
        assert [t.name for t in tokens.list()] == ["ci"]

        # a token that expires is refused from then on (its second of life outlasts a
        # loaded machine's stall between the create and the first check)
        brief = await d.dispatcher.call(SOCKET, "tokens.create", {
            "name": "brief", "scopes": ["agents:read"], "expires_in": 1.0})
        assert tokens.authenticate(brief.token) is not None
        await wait_until_async(lambda: tokens.authenticate(brief.token) is None)
        assert brief.expires <= time.time()

        # revoked: refused at once, and gone from the database; a second revoke is a 404
        rc, out, err = await cli(d, "token", "revoke", "ci")
        assert (rc, out) == (0, "revoked token ci\n"), err
        assert tokens.authenticate(secret) is None
        assert Tokens(d.services.store).authenticate(secret) is None
        rc, _, err = await cli(d, "token", "revoke", "ci")
        assert (rc, err) == (1, "corral: no such token: ci\n")

        # creating and revoking are audited, the secret nowhere in the row
        audit = await d.dispatcher.call(SOCKET, "audit.list", {"limit": 10})
        rows = [(e.method, e.params.get("name"), e.outcome) for e in audit.entries]
        assert ("tokens.create", "ci", "ok") in rows and ("tokens.revoke", "ci", "ok") in rows
        assert secret not in msgspec.json.encode(audit).decode()


@pytest.mark.deadline(120)
async def test_a_caller_limited_to_web_agents_cannot_see_or_touch_db(tmp_path: Path) -> None:
    async with running(tmp_path, hello("web-1") + sleeper("db")) as d:
        sup = d.sup
        web = Caller(via="http", token="web", agents="web-*")
        db_pid = sup.agent("db").replicas[0].pid

        status = await d.dispatcher.call(web, "agents.status")
        assert [a.name for a in status.agents] == ["web-1"]
        assert list(status.tasks) == ["web-1"]
        stats = await d.dispatcher.call(web, "stats.get")
        assert list(stats.agents) == ["web-1"]
        assert list(stats.tasks["agents"]) == ["web-1"]
        # db is as absent as an agent that does not exist: the limited caller is told of
        # its own agents alone
        for caller, name, told in [
                (web, "db", "agents: web-1"),
                (SOCKET, "nobody", "agents: db, web-1"),
                (web, "nobody", "agents: web-1"),
                (web, "web-2", "did you mean `web-1`?"),
                (web, "dbb", "agents: web-1"),
                (SOCKET, "dbb", "did you mean `db`?")]:
            assert await refused(d, caller, "agents.describe", {"name": name}) == (
                jsonrpc.NOT_FOUND, f"no such agent: {name} ({told})"), (caller.who, name)
        assert await refused(d, web, "agents.status", {"names": ["db"]}) == (
            jsonrpc.NOT_FOUND, "no such agent: db (agents: web-1)")
        for method in ("agents.stop", "agents.restart", "agents.signal", "agents.remove"):
            params = {"names": ["web-1", "db#0"]} | (
                {"signal": "CONT"} if method == "agents.signal" else {})
            assert await refused(d, web, method, params) == (
                jsonrpc.NOT_FOUND, "no such agent: db (agents: web-1)"), method
        assert await refused(d, web, "agents.scale", {"name": "db", "replicas": 0}) == (
            jsonrpc.NOT_FOUND, "no such agent: db (agents: web-1)")
        assert await refused(d, web, "agents.stop", {"all": True}) == (
            jsonrpc.FORBIDDEN, "forbidden: token web is limited to agents matching web-*: "
                               "name the agents rather than all")
        assert await refused(d, web, "agents.add", {"agents": {"db2": {
            "command": ["true"]}}}) == (
            jsonrpc.FORBIDDEN, "forbidden: token web is limited to agents matching web-*: "
                               "may not add db2")
        assert await refused(d, web, "config.reload") == (
            jsonrpc.FORBIDDEN, "forbidden: token web is limited to agents matching web-*: "
                               "config.reload is for callers that see every agent")
        assert await refused(d, web, "tasks.run", {"agent": "db"}) == (
            jsonrpc.NOT_FOUND, "no such agent: db (agents: web-1)")
        assert await refused(d, web, "tools.list", {"agent": "db"}) == (
            jsonrpc.NOT_FOUND, "no such agent: db (agents: web-1)")

        # db's task: neither seen nor cancelled by the limited caller
        running_task = await d.dispatcher.call(SOCKET, "tasks.submit", msgspec.json.encode({
            "agent": "db", "input": {"do": "sleep", "seconds": 60}}))
        tid = running_task.task_id
        await wait_until_async(lambda: d.sup.tasks.get(tid).status == "running")
        assert await refused(d, web, "tasks.get", {"task_id": tid}) == (
            jsonrpc.NOT_FOUND, f"no such task: {tid}")
        assert await refused(d, web, "tasks.cancel", {"task_id": tid}) == (
            jsonrpc.NOT_FOUND, f"no such task: {tid}")
        mine = await d.dispatcher.call(web, "tasks.run", b'{"agent": "web-1", "input": {}}')
        assert mine.status == "succeeded"
        listed = await d.dispatcher.call(web, "tasks.list")
        assert [t.agent for t in listed.tasks] == ["web-1"]
        lines = await d.dispatcher.call(web, "logs.tail", {"lines": 1000})
        assert lines.lines and {ln.source for ln in lines.lines} == {"web-1"}
        assert await refused(d, web, "logs.tail", {"names": ["corral"]}) == (
            jsonrpc.NOT_FOUND, "no such agent: corral (agents: web-1)")

        # nothing of db changed: the same process, its task still running
        r = sup.agent("db").replicas[0]
        assert (r.state, r.pid) == (State.BUSY, db_pid)
        assert (await d.dispatcher.call(SOCKET, "tasks.get", {"task_id": tid})
                ).status == "running"
        cancelled = await d.dispatcher.call(SOCKET, "tasks.cancel", {"task_id": tid})
        assert cancelled.status == "cancelled"


class Lines:
    """A follow's channel: the sources of each `logs.lines` batch it is sent, in order."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.batches: list[set[str]] = []

    def notify(self, method: str, params: Any) -> None:
        assert method == "logs.lines", method
        self.batches.append({ln.source for ln in params["lines"]})


@pytest.mark.deadline(120)
async def test_a_limited_caller_following_every_log_is_sent_only_its_agents_lines(
        tmp_path: Path) -> None:
    async with running(tmp_path, hello("web-1") + sleeper("db")) as d:
        web = Caller(via="http", token="web", agents="web-*")
        mine, every = Lines(), Lines()
        follows = [asyncio.create_task(d.dispatcher.call(caller, "logs.follow",
                                                         {"lines": 1000}, channel))
                   for caller, channel in ((web, mine), (SOCKET, every))]
        try:
            # the backlog: the socket is told of db, the limited caller is not
            await wait_until_async(lambda: bool(mine.batches and every.batches))
            assert {"web-1", "db"} <= set().union(*every.batches)
            assert mine.batches == [{"web-1"}]
            # a line of db's, then web-1's restart: the limited caller is sent web-1's
            # lines, and never a batch with db's
            crash = {"agent": "db", "input": {"do": "crash"}}
            await d.dispatcher.call(SOCKET, "tasks.submit", msgspec.json.encode(crash))
            seen = len(every.batches)
            await wait_until_async(lambda: "db" in set().union(*every.batches[seen:]))
            await d.dispatcher.call(SOCKET, "agents.restart", {"names": ["web-1"]})
            await wait_until_async(lambda: len(mine.batches) > 1)
            assert all(batch == {"web-1"} for batch in mine.batches), mine.batches
        finally:
            for follow in follows:
                follow.cancel()
            for follow in follows:
                with contextlib.suppress(asyncio.CancelledError):
                    await follow
