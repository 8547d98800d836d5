"""A call held for a person whose HTTP client goes away before the answer is not made
when the person approves later (decision 2220). A gateway client's own call (a policy
rule's `approve`) and an agent's replica's call of no task (its `approve_models`, the
rule) alike: the ask is withdrawn when the client goes (`withdrawn by corral`, its data's
reason saying why), a late approval is refused in those words, and the tool (the model's
provider) is never reached. A real daemon, a real MCP server that counts its calls in a
file (tests/servers/counting_mcp.py), a stand-in model provider, raw HTTP clients at each
door that holds a call: the REST API's POST /api/v1/tools/NAME/call, /mcp and /mcp/NAME
on the [http] server and on the gateway's own site, a replica's own /mcp, and the model
gateway."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from corral.askviews import Ask, AskEnd
from corral.daemon.caller import Caller
from corral.jsonrpc import RpcError
from corral.supervisor.tasks.askwaits import AskEnded
from corral.supervisor.tasks.replicacalls import CALLER_GONE
from corral.taskoptions import TaskOptions

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, free_port, in_process, running_daemon, shared_tmpdir
from .mcp_post import VERSION
from .servers.model_upstream import StandIn
from .test_daemon_cli import wait_until
from .test_model_gateway import provider_key, upstream  # noqa: F401 (fixtures)

HERE = Path(__file__).parent
OPERATOR = Caller(via="socket")


CLIENT_TOKEN = "held-call-client-gone-gateway-token"


@pytest.fixture(scope="module")
def held() -> Iterator[tuple[Daemon, dict[str, tuple[int, str]]]]:
    """A daemon whose operator's rule holds `counting__bump` for a person; its [http]
    port with a token of `mcp:call`, and its gateway's own port with a tokens-file
    client's token."""
    tmp, port, gateway = shared_tmpdir(), free_port(), free_port()
    tokens = tmp / "tokens.toml"
    tokens.write_text(f'[clients.desk]\ntoken_sha256 = '
                      f'"{hashlib.sha256(CLIENT_TOKEN.encode()).hexdigest()}"\n'
                      f'tools = ["counting__*"]\n')
    with running_daemon(tmp, f"""
[agents.linked]
command = ["{PY}", "{EXAMPLES}/misbehave.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["counting__*"]

[mcp_servers.counting]
command = ["{PY}", "{HERE}/servers/counting_mcp.py", "{tmp}/server-count"]
shared = true

[[policy]]
name = "a person bumps"
match = {{ tool = "counting__bump" }}
effect = "approve"

[gateway]
listen = "127.0.0.1:{gateway}"
tokens_file = "{tokens}"
""", extra=f'[http]\nlisten = "127.0.0.1:{port}"\n') as d:
        token = d.json("token", "create", "held", "--scope", "mcp:call")["token"]
        env = d.ask("tasks.get", {"task_id": d.ask("tasks.submit", {
            "agent": "linked", "input": {"do": "env"}})["task_id"], "wait": True})["output"]
        at = urlsplit(env["CORRAL_MCP_URL"])
        assert at.port is not None and at.path == "/mcp", at
        yield d, {"http": (port, token), "gateway": (gateway, CLIENT_TOKEN),
                  "replica": (at.port, env["CORRAL_MCP_TOKEN"])}


def counted(d: Daemon) -> list[str]:
    path = d.dir / "server-count"
    return path.read_text().split() if path.exists() else []


def pending(d: Daemon) -> list[dict[str, Any]]:
    asks: list[dict[str, Any]] = d.ask("approvals.list")["asks"]
    return asks


def post(port: int, path: str, token: str, body: dict[str, Any],
         headers: dict[str, str]) -> socket.socket:
    """The request sent on a connection of its own, its answer not read."""
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in {
        "Host": f"127.0.0.1:{port}", "Authorization": f"Bearer {token}",
        "Content-Type": "application/json", "Content-Length": str(len(data)),
        **headers}.items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + data)
    return sock


def mcp_call(path: str, tool: str) -> Callable[[int, str, int], socket.socket]:
    def send(port: int, token: str, i: int) -> socket.socket:
        return post(port, path, token, {
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": tool, "arguments": {"i": i}, "_meta": {
                    "io.modelcontextprotocol/protocolVersion": VERSION,
                    "io.modelcontextprotocol/clientCapabilities": {}}}},
            {"Accept": "application/json, text/event-stream",
             "MCP-Protocol-Version": VERSION, "Mcp-Method": "tools/call", "Mcp-Name": tool})

    return send


def rest_call(port: int, token: str, i: int) -> socket.socket:
    return post(port, "/api/v1/tools/counting__bump/call", token, {"arguments": {"i": i}},
                {})


# door -> (the site it is on, how a call is sent there)
DOORS = {"rest": ("http", rest_call), "mcp": ("http", mcp_call("/mcp", "counting__bump")),
         "mcp-name": ("http", mcp_call("/mcp/counting", "bump")),
         "gateway-mcp": ("gateway", mcp_call("/mcp", "counting__bump")),
         "gateway-mcp-name": ("gateway", mcp_call("/mcp/counting", "bump")),
         # an agent's replica, running no task: a call of no task, its replica's
         "replica": ("replica", mcp_call("/mcp", "counting__bump"))}


@pytest.mark.deadline(180)
@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_held_call_whose_client_went_away_is_not_made_when_approved(
        held: tuple[Daemon, dict[str, tuple[int, str]]], door: str) -> None:
    d, sites = held
    site, send = DOORS[door]
    port, token = sites[site]
    before = counted(d)
    gone = send(port, token, 1)
    [ask] = wait_until(lambda: pending(d), 60, "the call's ask")
    assert ask["subject"] == {"tool": "counting__bump", "arguments": {"i": 1},
                              "policy": "a person bumps"}, ask
    gone.close()  # the client goes away before anyone answers
    ended = wait_until(lambda: (a := d.ask("approvals.get", {"id": ask["id"]}))["end"]
                       is not None and a, 60, "the ask withdrawn with its client")
    assert (ended["end"], ended["by"], ended["data"]) == (
        "withdrawn", "corral", {"reason": CALLER_GONE}), ended
    late = d.cli("approvals", "approve", ask["id"])
    assert late.returncode == 1
    assert re.fullmatch(rf"corral: ask {ask['id']} has ended: withdrawn by corral at \S+\n",
                        late.stderr), late.stderr
    # a call whose client waits is held and made once approved: the one counted
    waits = send(port, token, 2)
    try:
        [second] = wait_until(lambda: pending(d), 60, "the second call's ask")
        assert d.cli("approvals", "approve", second["id"]).returncode == 0
        answer = b""
        while b"bumped 2" not in answer:
            chunk = waits.recv(65536)
            assert chunk, answer
            answer += chunk
    finally:
        waits.close()
    assert counted(d) == [*before, "2"]
    assert pending(d) == []


# a model call's shape -> its head's framing of the body: the common shape lean.py
# reads, and a chunked body, aiohttp's
SHAPES = {"lean": lambda body: f"Content-Length: {len(body)}\r\n\r\n".encode() + body,
          "aiohttp": lambda body: b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n"
          % (len(body), body)}


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_a_held_model_call_whose_client_went_away_is_not_made_when_approved(
        tmp_path: Path, upstream: StandIn, shape: str) -> None:  # noqa: F811 - the fixture
    """The model gateway's door: a replica's model call of no task that `approve_models`
    holds, its client gone before the answer, is withdrawn and never reaches the
    provider; a late approval is refused as withdrawn."""
    toml = f"""
[agents.linked]
command = ["{PY}", "{EXAMPLES}/misbehave.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
approve_models = ["gpt-*"]

[gateway]
listen = "127.0.0.1:{free_port()}"

[models.gpt-small]
url = "{upstream.url}/v1"
format = "openai"
key_env = "CORRAL_TEST_PROVIDER_KEY"
"""
    async with in_process(tmp_path, toml) as d:
        ended: asyncio.Queue[Ask] = asyncio.Queue()
        d.sup.tasks.stream.subscribe(lambda e: ended.put_nowait(e.ask), AskEnded)
        env = (await d.sup.tasks.run("linked", {"do": "env"}, TaskOptions(timeout=60))).output
        base = urlsplit(env["OPENAI_BASE_URL"])
        assert base.hostname is not None and base.port is not None, base
        body = json.dumps({"model": "gpt-small", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        _, writer = await asyncio.open_connection(base.hostname, base.port)
        writer.write(f"POST {base.path}/chat/completions HTTP/1.1\r\n"
                     f"Host: {base.netloc}\r\nAuthorization: Bearer {env['OPENAI_API_KEY']}\r\n"
                     f"Content-Type: application/json\r\n".encode() + SHAPES[shape](body))
        await writer.drain()
        ask = await asyncio.wait_for(ended.get(), 30)
        assert (ask.pending, ask.agent, ask.subject["model"]) == (True, "linked", "gpt-small")
        assert ask.task_id.startswith("replica:linked#0:"), ask
        writer.close()  # the client goes away before anyone answers
        gone = await asyncio.wait_for(ended.get(), 10)
        assert (gone.id, gone.end, gone.by, gone.data) == (
            ask.id, AskEnd.WITHDRAWN, "corral", {"reason": CALLER_GONE}), gone
        with pytest.raises(RpcError) as late:
            await d.dispatcher.call(OPERATOR, "approvals.resolve",
                                    {"id": ask.id, "decision": "approved"})
        assert re.fullmatch(rf"ask {ask.id} has ended: withdrawn by corral at \S+",
                            late.value.message), late.value.message
        assert upstream.requests == []
