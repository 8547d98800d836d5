"""An agent's tools allowlist, as its tenant narrows it, is kept from one call to the next
(supervisor/tools.py `allowlist`: every call's view link asks for it, at every door): a
reload that changes the servers its tenant sees, or the agent's own `tools`, changes the
verdict of the very next call, at the worker link and at the MCP gateway. Against the
real daemon in this process."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.daemon.caller import Caller
from corral.daemon.daemon import Daemon
from corral.jsonrpc import RpcError
from corral.supervisor import AgentSpec, Supervisor

from .conftest import agent
from .daemon_harness import in_process
from .test_tenants import TWO, notes, sleeper

OPERATOR = Caller(via="socket")
FLEET = (sleeper("a1", "a", 'tools = ["*"]\n') + notes("aserv", "a") + notes("zserv", "b")
         + notes("common", "b", shared=True))


async def worker_call(d: Daemon, tool: str) -> Any:
    """What a1's task's one call of `tool` by its worker link came back with."""
    done = await d.dispatcher.call(OPERATOR, "tasks.run", msgspec.json.encode(
        {"agent": "a1", "input": {"do": "tools", "tool": tool, "arguments": {"text": "x"}}}))
    [answer] = msgspec.json.decode(bytes(done.output))
    return answer


async def gateway_refusal(d: Daemon, tool: str) -> str | None:
    """The MCP gateway's refusal of a tools/call of `tool` by a client speaking as a1
    (`corral mcp serve --agent a1`), None when it is called."""
    gw = d.services.gateway
    try:
        await gw.forward(gw.identify(agent="a1"), "tools/call",
                         {"name": tool, "arguments": {"text": "x"}}, None)
    except RpcError as exc:
        return exc.message
    return None


async def reload(d: Daemon, old: str, new: str) -> None:
    config = d.services.config_path
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    await d.dispatcher.call(OPERATOR, "config.reload")


@pytest.mark.deadline(240)  # (two reloads, one a rolling restart: slow on a loaded host)
async def test_a_reload_of_the_servers_or_the_agents_tools_changes_the_next_calls_verdict(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, FLEET, TWO) as d:
        sup = d.sup
        spec = sup.agents["a1"].spec
        # tenant b's shared server is a's to call, at both doors; asked twice, the list
        # is the one kept
        assert sup.mcp.allowlist(spec) == ["corral__*", "aserv__*", "common__*"]
        assert sup.mcp.allowlist(spec) is sup.mcp.allowlist(spec)
        assert "error" not in await worker_call(d, "common__echo")
        assert await gateway_refusal(d, "common__echo") is None

        # shared no more (the agent's spec the same object): its next calls refused
        await reload(d, 'shared = true', 'shared = false')
        assert sup.agents["a1"].spec is spec
        refused = await worker_call(d, "common__echo")
        assert refused.get("message") == (
            "tool common__echo is not allowed for agent a1 (its tools allowlist: "
            "['corral__*', 'aserv__*'])"), refused
        assert await gateway_refusal(d, "common__echo") == (
            "tool common__echo is not allowed for gateway client agent:a1 (its tools "
            "allowlist: ['corral__*', 'aserv__*'])")
        assert "error" not in await worker_call(d, "aserv__echo")

        # the agent's own list narrowed: its next calls of the rest refused
        await reload(d, 'tools = ["*"]', 'tools = ["common__*"]')
        assert sup.agents["a1"].spec is not spec
        refused = await worker_call(d, "aserv__echo")
        assert refused.get("message") == (
            "tool aserv__echo is not allowed for agent a1 (its tools allowlist: [])"), refused
        assert await gateway_refusal(d, "aserv__echo") == (
            "tool aserv__echo is not allowed for gateway client agent:a1 (its tools "
            "allowlist: [])")


async def test_a_removed_agents_kept_allowlist_goes_with_it(sup: Supervisor) -> None:
    """Agents made per job under new names, each asked for its allowlist (a tool call's
    view does) and removed: none of their specs is held once they are gone (the soak
    under fresh names, bench/RESULTS.md: the kept allowlists held every removed agent's
    spec until their cap cleared them all, 78 to 408 live specs past its warm-up)."""
    for i in range(6):
        spec = agent(f"job{i}", autostart=False)
        sup.add(spec)
        assert sup.mcp.allowlist(spec) is sup.mcp.allowlist(spec)  # kept while it lives
        await sup.remove(spec.name)
    del spec
    gc.collect()
    assert [o.name for o in gc.get_objects()
            if isinstance(o, AgentSpec) and o.name.startswith("job")] == []
