"""`corral mcp serve` against the official MCP SDK's client (ClientSession over
stdio_client): a real daemon, real upstream servers (the npm reference server, a server
built with the official SDK, the scripted one), filtering, progress, cancellation,
list_changed, faults."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_mcp import EVERYTHING, everything_reason
from .warmforks import sdk_toml

mcp = pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

SCRIPTED = Path(__file__).with_name("scripted_mcp.py")
pytestmark = [pytest.mark.skipif(everything_reason() is not None,
                                 reason=everything_reason() or ""),
              pytest.mark.usefixtures("warm_mcp_sdk")]

# the notes server a fork of this process's MCP SDK server (tests/warmforks.py)
NOTES = sdk_toml(f"{EXAMPLES}/notes_server.py")


def pool(revision: str) -> str:
    """Three real upstream servers: the official SDK's (notes), the npm reference server
    (ev), the scripted one speaking `revision` (sc)."""
    return f"""
[mcp_servers.notes]
command = {NOTES}
start_timeout = 30.0

[mcp_servers.ev]
command = ["node", "{EVERYTHING}", "stdio"]
start_timeout = 30.0

[mcp_servers.sc]
command = ["{PY}", "{SCRIPTED}", "{revision}"]
start_timeout = 30.0
timeout = 8.0
backoff_initial = 0.05
"""


def servers() -> str:
    return pool("v2025-06") + f"""
[agents.researcher]
command = ["{PY}", "{EXAMPLES}/researcher.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["notes__*"]
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), servers()) as d:
        yield d


@asynccontextmanager
async def gateway(d: Daemon, *args: str, seen: list[Any] | None = None
                  ) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=PY, args=["-m", "corral", "--socket", str(d.sock), "mcp", "serve", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)})

    async def on_message(msg: Any) -> None:
        if seen is not None:
            seen.append(msg)

    async with stdio_client(params) as (r, w), \
            ClientSession(r, w, message_handler=on_message) as session:
        await session.initialize()
        yield session


async def listed(s: ClientSession, *expected: str, timeout: float = 40) -> list[str]:
    """The tool names, once every expected one is there: lazy servers start on the first
    listing, and under load one may not be serving yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        names = [t.name for t in (await s.list_tools()).tools]
        if set(expected) <= set(names) or loop.time() > deadline:
            return names
        await asyncio.sleep(0.2)


def text(result: Any) -> str:
    return "".join(c.text for c in result.content if getattr(c, "text", None) is not None)


async def test_one_server_serves_the_tools_of_every_upstream_server(daemon: Daemon) -> None:
    async with gateway(daemon) as s:
        names = await listed(s, "notes__add", "ev__echo", "sc__echo")
        assert names[:3] == ["notes__add", "notes__get", "notes__search"]
        assert {"ev__echo", "ev__get-sum", "sc__echo", "sc__slow"} <= set(names)
        assert text(await s.call_tool("notes__add", {"title": "g", "text": "gw"})) == "stored g"
        assert text(await s.call_tool("ev__echo", {"message": "hi"})) == "Echo: hi"
        res = await s.call_tool("notes__add", {"title": 1})
        assert res.is_error  # the upstream server's isError, passed on as it was
        with pytest.raises(MCPError) as err:
            await s.call_tool("nope__x", {})
        assert "no such tool: nope__x (no MCP server nope)" in str(err.value)
    st = daemon.json("mcp", "status")["gateway"]
    assert st["clients"]["operator"]["calls"] >= 4
    assert st["clients"]["operator"]["errors"] >= 2  # isError and the unknown tool
    assert st["tools"]["notes__add"]["calls"] >= 2 and st["tools"]["notes__add"]["errors"] >= 1
    assert st["tools"]["notes__add"]["p50_ms"] is not None
    # each call a row; a line of the daemon log too, unless it was answered (decision 1630)
    log = daemon.cli("logs", "corral", "-n", "500").stdout
    said = 'gateway client operator: gateway.call {"client":"operator","tool":"%s"} -> '
    assert said % "notes__add" + "isError" in log
    assert said % "ev__echo" not in log
    assert said % "nope__x" + "error: no such tool: nope__x" in log
    rows = {(e["params"]["tool"], e["outcome"], e["who"], e["tenant"])
            for e in daemon.json("audit")["entries"] if e["method"] == "gateway.call"}
    assert {("notes__add", "isError", "gateway client operator", None),
            ("ev__echo", "ok", "gateway client operator", None)} <= rows


async def test_an_agents_identity_sees_and_calls_only_its_allowlist(daemon: Daemon) -> None:
    async with gateway(daemon, "--agent", "researcher") as s:
        names = await listed(s, "notes__add")
        assert names == ["notes__add", "notes__get", "notes__search"]
        assert text(await s.call_tool("notes__get", {"title": "g"})) in ("gw", "")
        with pytest.raises(MCPError) as err:
            await s.call_tool("ev__echo", {"message": "no"})
        assert str(err.value) == ("tool ev__echo is not allowed for gateway client "
                                  "agent:researcher (its tools allowlist: ['notes__*'])")
    r = daemon.cli("mcp", "serve", "--agent", "ghost", input="")
    assert (r.returncode, r.stderr) == (1, "corral mcp serve: no such agent: ghost (agents: "
                                           "researcher)\n")


async def test_progress_reaches_the_client_with_its_own_token(daemon: Daemon) -> None:
    steps: list[tuple[float, float | None, str | None]] = []

    async def progress(p: float, total: float | None, message: str | None) -> None:
        steps.append((p, total, message))

    async with gateway(daemon) as s:
        res = await s.call_tool("sc__progress", {"steps": 3}, progress_callback=progress)
        assert text(res) == "done"
        assert steps == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


async def test_a_cancelled_call_is_cancelled_upstream(daemon: Daemon) -> None:
    async with gateway(daemon) as s:
        call = asyncio.ensure_future(s.call_tool("sc__slow", {"seconds": 60}))
        # the upstream server writes "cancelled ID" on stderr when told
        await wait_for_log(daemon, "sc", "cancelled", after=lambda: call.cancel()
                           if not call.done() else None, delay_first=True)
        with pytest.raises(asyncio.CancelledError):
            await call
        assert text(await s.call_tool("sc__echo", {"text": "after"})) == "after"


async def wait_for_log(d: Daemon, name: str, needle: str, *, after: Any = None,
                       delay_first: bool = False, timeout: float = 20) -> None:
    """Wait until `needle` is in NAME's log; `after` runs once the call is in flight
    (the scripted server's sc#0 is then busy with it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    acted = after is None
    while loop.time() < deadline:
        if not acted:
            st = {s["name"]: s for s in d.json("mcp", "status")["mcp_servers"]}
            if st[name]["in_flight"]:
                after()
                acted = True
        else:
            logs = await asyncio.to_thread(d.cli, "logs", name, "-n", "50")
            if needle in logs.stdout:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{needle!r} never appeared in {name}'s log")


async def test_an_upstream_server_killed_mid_call_is_a_clear_error(daemon: Daemon) -> None:
    async with gateway(daemon) as s:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(MCPError) as err:
            await s.call_tool("sc__die", {})
        assert "MCP server sc#0 exited" in str(err.value) or "went away" in str(err.value), \
            str(err.value)
        assert loop.time() - start < 8.0  # within the server's call timeout, no hang


async def test_list_changed_when_a_server_is_removed_by_reload(daemon: Daemon) -> None:
    seen: list[Any] = []
    async with gateway(daemon, seen=seen) as s:
        assert "sc__echo" in await listed(s, "sc__echo")
        original = daemon.config.read_text()
        daemon.config.write_text(original.replace("[mcp_servers.sc]", "[mcp_servers.sc2]"))
        try:
            r = await asyncio.to_thread(daemon.cli, "reload")
            assert r.returncode == 0, r.stderr
            await wait_until_async(lambda: any(
                getattr(m, "method", None) == "notifications/tools/list_changed" for m in seen))
            names = {t.name for t in (await s.list_tools()).tools}
            assert "sc__echo" not in names
        finally:
            daemon.config.write_text(original)
            r = await asyncio.to_thread(daemon.cli, "reload")
            assert r.returncode == 0, r.stderr


async def wait_until_async(pred: Any, timeout: float = 60) -> None:
    """Until `pred()` holds, looked at on the loop; the bound a loaded 2-core host's, as
    tests/test_daemon_cli.py's wait_until's (a passing test pays nothing for it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.05)


def test_serve_without_a_daemon_says_so(tmp_path: Path) -> None:
    d = Daemon.__new__(Daemon)
    d.sock = tmp_path / "none.sock"
    r = d.cli("mcp", "serve", input="")
    assert r.returncode == 3
    assert r.stderr.startswith(f"corral mcp serve: cannot reach the corral daemon at "
                               f"{tmp_path}/none.sock")


async def test_resources_and_prompts_of_upstream_servers_pass_through(daemon: Daemon) -> None:
    async with gateway(daemon) as s:
        await listed(s, "ev__echo")
        prompts = [p.name for p in (await s.list_prompts()).prompts]
        assert "ev__simple-prompt" in prompts, prompts
        got = await s.get_prompt("ev__simple-prompt", {})
        assert got.messages and got.messages[0].role == "user"
        resources = (await s.list_resources()).resources
        assert resources, "server-everything lists resources"
        first = str(resources[0].uri)
        read = await s.read_resource(first)
        assert read.contents and str(read.contents[0].uri) == first
    async with gateway(daemon, "--agent", "researcher") as s:
        assert [p.name for p in (await s.list_prompts()).prompts] == []
        with pytest.raises(MCPError):
            await s.get_prompt("ev__simple-prompt", {})


async def test_a_client_of_the_stateless_revision_discovers_and_calls(daemon: Daemon) -> None:
    from mcp import Client

    params = StdioServerParameters(
        command=PY, args=["-m", "corral", "--socket", str(daemon.sock), "mcp", "serve"],
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    async with Client(params, mode="auto") as c:
        assert c.session.discover_result is not None  # server/discover, no initialize
        assert "2026-07-28" in c.session.discover_result.supported_versions
        names = [t.name for t in (await c.list_tools()).tools]
        assert "notes__add" in names
        assert text(await c.call_tool("notes__add", {"title": "s", "text": "t"})) == "stored s"


async def test_completion_of_an_upstream_prompts_argument_passes_through(
        daemon: Daemon) -> None:
    from mcp.types import PromptReference

    async with gateway(daemon) as s:
        await listed(s, "ev__echo")
        ref = PromptReference(type="ref/prompt", name="ev__completable-prompt")
        res = await s.complete(ref, {"name": "department", "value": "S"})
        assert res.completion.values == ["Sales", "Support"]
        res = await s.complete(ref, {"name": "name", "value": ""},
                               context_arguments={"department": "Engineering"})
        assert res.completion.values == ["Alice", "Bob", "Charlie"]
