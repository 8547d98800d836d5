"""The client the official conformance suite (`@modelcontextprotocol/conformance client`)
launches: corral's McpClient over corral's HTTP transport, doing what each scenario asks.

    conformance_client.py SERVER_URL      (scenario in MCP_CONFORMANCE_SCENARIO,
                                           its data in MCP_CONFORMANCE_CONTEXT)

Exit 0 when the scenario's exchange went through; 1 with the error on stderr when not.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from corral.jsonrpc import RpcError
from corral.mcp.client import McpClient
from corral.mcp.http import Auth, HttpTransport
from corral.mcp.oauth import Redirect

TIMEOUT = 60.0  # a loaded machine starts the suite's many clients slowly
# the suite's fixed client id metadata document URL (SEP-991), and a redirect URI
CIMD_URL = "https://conformance-test.local/client-metadata.json"
REDIRECT = "http://localhost:3000/callback"
# scenarios that watch how each of their tools is called (input_required rounds, a tool
# left out for its malformed header marks while the others are still called)
CALL_EVERY_TOOL = ("sep-2322-client-request-state", "http-invalid-tool-headers")


async def run(url: str, scenario: str, context: dict[str, Any]) -> None:
    auth = make_auth(url, scenario, context)
    client = McpClient("conformance")
    transport = HttpTransport("conformance", url, feed=lambda b: peer.feed_line(b),
                              on_lost=lambda why: print(f"lost: {why}", file=sys.stderr),
                              auth=auth, param_headers=client.param_headers)
    peer = client.make_peer(transport.send)
    try:
        await client.connect(TIMEOUT)
        tools = await client.list_tools(TIMEOUT)
        names = [t["name"] for t in tools]
        if scenario == "tools_call":
            print(await client.call_tool("add_numbers", {"a": 5, "b": 3}, timeout=TIMEOUT))
        elif scenario == "sse-retry":
            print(await client.call_tool("test_reconnection", {}, timeout=TIMEOUT))
        elif scenario.startswith("elicitation"):
            # corral declines elicitation by design (docs/decisions.md): the server's
            # request gets a clean error and the tool reports it
            print(await client.call_tool(names[0], {}, timeout=TIMEOUT))
        elif scenario.startswith("auth/") and "test-tool" in names:
            print(await client.call_tool("test-tool", {}, timeout=TIMEOUT))
        elif context.get("toolCalls"):  # the calls the scenario names, as it names them
            for call in context["toolCalls"]:
                print(await client.call_tool(call["name"], call.get("arguments") or {},
                                             timeout=TIMEOUT))
        elif scenario == "json-schema-2020-12-preservation":
            # the schema of the focal tool, as corral's client keeps it, sent back
            focal = next(t for t in tools if t["name"] != "json_schema_echo")
            print(await client.call_tool("json_schema_echo",
                                         {"schema": focal["inputSchema"]}, timeout=TIMEOUT))
        elif scenario in CALL_EVERY_TOOL:
            for name in names:
                print(await client.call_tool(name, {}, timeout=TIMEOUT))
    finally:
        await transport.close()


def make_auth(url: str, scenario: str, context: dict[str, Any]) -> Auth | None:
    if not scenario.startswith("auth/"):
        return None
    from corral.mcp.oauth import OAuth, OAuthSettings

    settings = OAuthSettings(
        client_id=context.get("client_id"), client_secret=context.get("client_secret"),
        private_key_pem=context.get("private_key_pem"),
        signing_algorithm=context.get("signing_algorithm"),
        client_metadata_url=CIMD_URL, redirect_uri=REDIRECT,
        idp_token_endpoint=context.get("idp_token_endpoint"),
        idp_id_token=context.get("idp_id_token"), idp_client_id=context.get("idp_client_id"),
        grant="client_credentials" if "client-credentials" in scenario else
        "id_jag" if "cross-app-access" in scenario
        or "enterprise-managed-authorization" in scenario else "authorization_code")
    tokens = Path(tempfile.mkdtemp(prefix="corral-conformance-")) / "tokens.json"
    return OAuth("conformance", url, settings, tokens, authorize=follow_redirect)


async def follow_redirect(url: str, redirect_uri: str, state: str) -> Redirect:
    """The test authorization servers approve at once and redirect to `redirect_uri`: the
    code is read off that redirect (where `corral mcp login` has a browser and a loopback
    listener)."""
    async with aiohttp.ClientSession() as http, \
            http.get(url, allow_redirects=False) as resp:
        location = resp.headers.get("Location", "")
    query = parse_qs(urlsplit(location).query)
    if not location.startswith(redirect_uri) or query.get("state") != [state]:
        raise RpcError(-32000, f"unexpected authorization redirect: {location!r}")
    return Redirect(query["code"][0], (query.get("iss") or [None])[0])


def main() -> int:
    url = sys.argv[1]
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    try:
        asyncio.run(run(url, scenario, context))
    except RpcError as exc:
        print(f"error {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
