"""A token of no tenant limited to an agent glob (`corral token create --agents 'web*'`)
names the operator's (the default tenant's) agents alone (issue 74, DESIGN 27): an
agent's name is its tenant's caller's to choose, so acme's agent named `web-evil` is
none of the glob's — not listed, not described, not run, its task not read, its events
not sent — over REST, the event stream and /mcp/corral alike, each answered as an agent
or a task there is not.

Real parts: an in-process daemon serving HTTP and the gateway (/mcp at the HTTP
server), agents of examples/misbehave.py, the official MCP SDK's client."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from .daemon_harness import PY, sleeper
from .test_gateway_stdio import wait_until_async
from .test_http_adversary import api_of
from .test_http_api import SOCKET, serving, sse_events
from .test_http_mcp import mcp_session as session

pytest.importorskip("mcp")
from mcp.shared.exceptions import MCPError

MANY = Path(__file__).parent / "servers" / "many_tools.py"
UNSEEN = "no such agent: web-evil (did you mean `web-a`?)"  # as one there is not


@pytest.mark.deadline(120)
async def test_a_glob_of_no_tenant_sees_and_acts_on_no_tenants_agent_of_its_letters(
        tmp_path: Path) -> None:
    agents = (sleeper("web-a") + 'tools = ["ours__*"]\n' + sleeper("web-evil")
              + 'tenant = "acme"\ntools = ["theirs__*"]\n')
    servers = "".join(f'[mcp_servers.{name}]\ncommand = ["{PY}", "{MANY}", "2"]\n'
                      f'start_timeout = 30.0\ntenant = "{tenant}"\n\n'
                      for name, tenant in (("ours", "default"), ("theirs", "acme")))
    async with serving(tmp_path, agents, http='[tenants.acme]\n[gateway]\n'
                       f'listen = "127.0.0.1:0"\n\n{servers}') as api:
        d = api.d
        await api.token("glob", "agents:read", "agents:write", "tasks:run", "tasks:read",
                        "events", "mcp:call", agents="web*")
        status, body, _ = await api.ask("GET", "/agents", "glob")
        assert status == 200 and [a["name"] for a in body["agents"]] == ["web-a"], body
        for verb, path, sent in (("GET", "/agents/web-evil", None),
                                 ("POST", "/agents/web-evil/restart", None),
                                 ("POST", "/tasks", {"agent": "web-evil", "input": {}})):
            status, body, _ = await api.ask(verb, path, "glob", sent)
            assert (status, body["detail"]) == (404, UNSEEN), (path, body)
        # the operator's task of web-evil: as a task there is not, and listed nowhere
        theirs = await d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
            {"agent": "web-evil", "input": {"do": "echo"}}))
        assert theirs.status == "succeeded", theirs
        status, body, _ = await api.ask("GET", f"/tasks/{theirs.task_id}", "glob")
        assert (status, body["detail"]) == (404, f"no such task: {theirs.task_id}"), body
        status, body, _ = await api.ask("GET", "/tasks", "glob")
        assert status == 200 and body["tasks"] == [], body

        # the event stream: web-evil's worker's event is not sent, web-a's is
        auth = {"Authorization": f"Bearer {api.tokens['glob']}"}
        async with api.http.get(api.base + "/events/stream?pattern=t.*",
                                headers=auth) as stream:
            ring = api_of(d).ring
            mine = [theirs.task_id]
            await wait_until_async(lambda: len(ring.readers) == 1 and ring.task is not None)
            for agent in ("web-evil", "web-a"):
                done = await d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
                    {"agent": agent, "input": {"do": "publish", "topic": f"t.{agent}",
                                               "data": 0}}))
                assert done.status == "succeeded", done
                mine.append(done.task_id)
            (got,) = await sse_events(stream, 1)
        assert got["data"]["topic"] == "t.web-a", got

        # /mcp/corral: web-evil is no tool of the glob's, and a call of it runs nothing
        async with session(api.base.removesuffix("/api/v1") + "/mcp/corral",
                           api.tokens["glob"]) as s:
            assert [t.name for t in (await s.list_tools()).tools] == ["web-a"]
            with pytest.raises(MCPError) as err:
                await s.call_tool("web-evil", {"do": "echo"})
            assert str(err.value) == UNSEEN
            ran = await s.call_tool("web-a", {"do": "echo", "n": 1})
            assert not ran.is_error, ran
            assert json.loads(ran.content[0].text) == {"do": "echo", "n": 1}  # type: ignore[union-attr]
        # at /mcp, the tools of its agents' allowlists: web-a's, never web-evil's
        # (acme's own server's)
        async with session(api.base.removesuffix("/api/v1") + "/mcp",
                           api.tokens["glob"]) as s:
            names = sorted(t.name for t in (await s.list_tools()).tools)
            assert names and all(n.startswith("ours__") for n in names), names
            with pytest.raises(MCPError) as err:
                await s.call_tool("theirs__create_invoice", {})
            assert str(err.value).startswith("tool theirs__create_invoice is not allowed "
                                              "for gateway client token glob")
        listed = await d.dispatcher.call(SOCKET, "tasks.list", {"agent": "web-evil"})
        # (of web-evil's tasks, the operator's two alone: the refused call ran none)
        assert sorted(t.task_id for t in listed.tasks) == sorted(mine[:2]), listed
