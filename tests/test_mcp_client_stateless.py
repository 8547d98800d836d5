"""corral's MCP client over stdio, held to what the conformance suite's client scenarios of
2026-07-28 require over HTTP (the suite has no stdio client harness): `_meta` on every
request and a refused probe asked again (request-metadata), input_required rounds
(sep-2322-client-request-state), a tool with malformed header marks left out and the
others kept (http-invalid-tool-headers), a JSON Schema 2020-12 kept as given
(json-schema-2020-12-preservation). The server is tests/servers/stateless_checks.py, a
real process the pool supervises; calls go through the pool as an agent's do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.mcp.client import MAX_INPUT_ROUNDS
from corral.supervisor import LogBatch, McpServerSpec, Supervisor
from corral.supervisor.mcpserver import McpServerReplica

from .servers.stateless_checks import SCHEMA

SERVER = Path(__file__).parent / "servers" / "stateless_checks.py"


def spec(tmp: Path) -> McpServerSpec:
    return McpServerSpec(name="c", command=[sys.executable, str(SERVER)], roots=[str(tmp)],
                         start_timeout=10.0, timeout=10.0, backoff_initial=0.05,
                         stop_timeout=1.0)


async def up(sup: Supervisor, tmp: Path) -> McpServerReplica:
    sup.add_mcp_server(spec(tmp))
    return await sup.mcp.instance(sup.mcp.server("c"), None)


async def answer(sup: Supervisor, tool: str) -> Any:
    result = await sup.mcp.call(f"c__{tool}", {})
    assert not result.get("isError"), result
    return json.loads(result["content"][0]["text"])


async def observed(sup: Supervisor) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = await answer(sup, "observed")
    return seen


async def test_every_request_carries_the_revisions_meta_and_a_refused_probe_is_asked_again(
        sup: Supervisor, tmp_path: Path) -> None:
    inst = await up(sup, tmp_path)
    assert inst.client.version == "2026-07-28"
    await sup.mcp.call("c__plain", {})
    seen = await observed(sup)
    # the probe refused with -32022 that names 2026-07-28 is sent once more; no initialize
    assert [s["method"] for s in seen] == ["server/discover", "server/discover",
                                           "tools/list", "tools/call", "tools/call"]
    for s in seen:
        assert s["version"] == "2026-07-28", s
        assert s["capabilities"] == {"roots": {"listChanged": True}}, s
        assert s["clientInfo"]["name"] == "corral", s


async def test_input_required_is_answered_and_sent_again_with_the_servers_state(
        sup: Supervisor, tmp_path: Path) -> None:
    await up(sup, tmp_path)
    got = await answer(sup, "echo_state")
    # elicitation is declined (nobody to ask), and the state comes back as it was sent
    assert got["inputResponses"] == {"confirm": {"action": "decline"}}
    first, again = [s for s in await observed(sup) if s["tool"] == "echo_state"]
    assert got["requestState"] == json.dumps({"tool": "echo_state", "first": first["id"]})
    assert again["id"] != first["id"]
    assert first["inputResponses"] is None and first["requestState"] is None

    got = await answer(sup, "no_state")
    assert got == {"inputResponses": {"confirm": {"action": "decline"}},
                   "requestState": None}
    got = await answer(sup, "roots")
    assert got["inputResponses"] == {"where": {"roots": [
        {"uri": tmp_path.resolve().as_uri(), "name": tmp_path.name}]}}
    # a result without resultType is complete: not sent again, nor carrying another's state
    assert (await sup.mcp.call("c__plain", {}))["content"][0]["text"] == "plain"
    plain = [s for s in await observed(sup) if s["tool"] == "plain"]
    assert len(plain) == 1
    assert plain[0]["inputResponses"] is None and plain[0]["requestState"] is None


async def test_sampling_asked_as_input_fails_the_call_saying_why(
        sup: Supervisor, tmp_path: Path) -> None:
    await up(sup, tmp_path)
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("c__sampling", {})
    assert err.value.code == jsonrpc.METHOD_NOT_FOUND
    assert err.value.message == (
        "tools/call: MCP server c#0 asked for 'sampling/createMessage' input, which corral "
        "does not offer (it runs unattended; see docs/decisions.md)")
    assert [s["tool"] for s in await observed(sup)].count("sampling") == 1


async def test_a_server_that_asks_for_input_for_ever_is_given_up_at_max_input_rounds(
        sup: Supervisor, tmp_path: Path) -> None:
    await up(sup, tmp_path)
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("c__forever", {})
    assert err.value.code == jsonrpc.REFUSED
    assert err.value.message == (
        f"tools/call: MCP server c#0 still asked for input after {MAX_INPUT_ROUNDS} rounds "
        "(corral's bound MAX_INPUT_ROUNDS): given up")
    rounds = [s for s in await observed(sup) if s["tool"] == "forever"]
    assert len(rounds) == MAX_INPUT_ROUNDS + 1
    assert len({s["id"] for s in rounds}) == len(rounds)


async def test_a_tool_whose_header_mark_breaks_sep_2243_is_left_out_and_the_others_kept(
        sup: Supervisor, tmp_path: Path) -> None:
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(x.decode() for x in e.lines), LogBatch)
    inst = await up(sup, tmp_path)
    assert inst.client.rejected_tools == ["'bad_header'"]
    assert "bad_header" not in [t["name"] for t in inst.client.tools]
    assert any("left out tool 'bad_header': property 'region': x-mcp-header 'My Region' "
               "is not an HTTP token (SEP-2243)" in x for x in logs), logs
    assert await answer(sup, "good_header") == {}
    with pytest.raises(RpcError) as err:
        await sup.mcp.call("c__bad_header", {})
    assert err.value.code == jsonrpc.NOT_FOUND


async def test_a_json_schema_2020_12_input_schema_is_kept_as_the_server_gave_it(
        sup: Supervisor, tmp_path: Path) -> None:
    inst = await up(sup, tmp_path)
    tool = inst.client.tool("rich_schema")
    assert tool is not None and tool["inputSchema"] == SCHEMA
    assert await answer(sup, "rich_schema") == {}
