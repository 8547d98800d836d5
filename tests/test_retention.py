"""Stores that grow with use are bounded (issue 74; docs/operations.md#retention): an
agent's spec revisions past `revisions_kept` (or past `revisions_kept_mb` of specs) are
pruned, the newest kept; a removed agent's revisions and log files go once
`removed_retention` has passed since its removal, another agent's stay. The real daemon in
this loop, its agents real processes, the CLI over the control socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.daemon.daemon import Daemon
from corral.jsonrpc import RpcError

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, in_process
from .test_http_api import SOCKET
from .test_tokens import cli


def speaking(name: str) -> list[str]:
    """An agent's command that says its name on stderr (a line of its log), then serves."""
    return ["/bin/sh", "-c", f'echo "{name} was here" >&2; exec {PY} {EXAMPLES}/hello.py']


def toml(name: str) -> str:
    return (f'[agents.{name}]\ncommand = {json.dumps(speaking(name))}\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\n')


async def add(d: Daemon, name: str) -> None:
    await d.dispatcher.call(SOCKET, "agents.add", {"agents": {name: {
        "command": speaking(name), "env": {"PYTHONPATH": str(ROOT)}}}})


async def change(d: Daemon, name: str, n: int, pad: int = 0) -> None:
    """A change of the agent's spec: a revision."""
    await d.dispatcher.call(SOCKET, "agents.update", {"name": name, "set": {
        "env": {"PYTHONPATH": str(ROOT), "N": f"{n:0{pad}d}"}}})


async def revisions(d: Daemon, name: str) -> list[int]:
    got = await d.dispatcher.call(SOCKET, "agents.history", {"name": name})
    return [r.revision for r in got.revisions]


async def until(what: str, done: Any) -> None:
    """Until `await done()` is true (30 s at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not await done():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


def logs_of(d: Daemon, name: str) -> list[str]:
    log_dir = d.services.hub.log_dir
    assert log_dir is not None
    return sorted(p.name for p in log_dir.iterdir() if p.name.startswith(f"{name}.log"))


def rows(d: Daemon, sql: str) -> list[Any]:
    return list(d.services.store.db.execute(sql))


@pytest.mark.deadline(180)
async def test_revisions_past_their_bound_are_pruned_the_newest_kept(
        tmp_path: Path) -> None:
    unbounded = "revisions_kept = 0\nrevisions_kept_mb = 0"
    async with in_process(tmp_path, "", supervisor=unbounded) as d:
        await add(d, "chat")
        for n in range(1, 6):
            await change(d, "chat", n)
        assert await revisions(d, "chat") == [1, 2, 3, 4, 5, 6]
    # a lower bound since: the sweep just after start-up prunes to it, the newest kept
    async with in_process(tmp_path, "", supervisor="revisions_kept = 3") as d:
        async def three() -> bool:
            return await revisions(d, "chat") == [4, 5, 6]
        await until("revisions pruned to 3", three)
        # each change prunes its agent's at once, numbered on
        await change(d, "chat", 6)
        assert await revisions(d, "chat") == [5, 6, 7]
        history = await d.dispatcher.call(SOCKET, "agents.history", {"name": "chat"})
        assert history.revisions[-1].change == "env.N changed"
        # a pruned one is not there to roll back to
        with pytest.raises(RpcError) as refused:
            await d.dispatcher.call(SOCKET, "agents.rollback", {"name": "chat",
                                                                "revision": 2})
        assert (refused.value.code, refused.value.message) == (
            jsonrpc.NOT_FOUND, "no revision 2 of chat (its revisions kept: 5..7; see "
                               "`corral history chat`)")
    # by bytes: a spec with a 1000-digit N is over 1 KB; 1.5 KiB holds it and a small one,
    # not two of it
    async with in_process(tmp_path, "", supervisor="revisions_kept = 0\n"
                                                   "revisions_kept_mb = 0.0015") as d:
        await change(d, "chat", 7, pad=1000)
        assert await revisions(d, "chat") == [7, 8]
        await change(d, "chat", 8, pad=1000)
        assert await revisions(d, "chat") == [9]


@pytest.mark.deadline(180)
async def test_a_removed_agents_revisions_and_logs_go_after_their_retention(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, toml("keep"), supervisor="removed_retention = 0") as d:
        await add(d, "chat")
        await change(d, "chat", 1)

        async def spoken() -> bool:
            return bool(logs_of(d, "chat")) and bool(logs_of(d, "keep"))
        await until("both agents logged", spoken)
        assert await revisions(d, "chat") == [1, 2]
        rc, _, err = await cli(d, "remove", "chat")
        assert rc == 0, err

        async def gone() -> bool:
            return (not logs_of(d, "chat") and not rows(
                d, "SELECT * FROM revisions WHERE agent = 'chat'") and not rows(
                d, "SELECT * FROM removed_agents"))
        await until("chat's revisions and logs deleted", gone)
        # another agent's stay
        assert logs_of(d, "keep") == ["keep.log"]
        assert await revisions(d, "keep") == [1]
        # a chat added again starts anew
        await add(d, "chat")
        assert await revisions(d, "chat") == [1]
