"""The model gateway's calls served lean on its own site (corral/daemon/models/lean.py): a
model call of the common shape is parsed and answered by corral, anything else handed to
aiohttp with the connection, and the two answer alike.

Real parts: the daemon in this loop, the stand-in provider (tests/servers/
model_upstream.py), raw HTTP/1.1 written on a socket (the shapes no client library
sends at will: pipelined, chunked, a repeated Content-Length)."""

from __future__ import annotations

import asyncio
import gzip
import json
import textwrap
from pathlib import Path
from typing import Any

from .conftest import ROOT
from .daemon_harness import PY, free_port, in_process
from .servers.model_upstream import StandIn
from .test_model_gateway import provider_key, upstream  # noqa: F401
from .test_model_usage import CHAT, HERE, chat, token_of


def fleet(provider: str) -> str:
    return textwrap.dedent(f"""
        [agents.raw]
        command = ["{PY}", "{HERE}/raw_model_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}

        [gateway]
        listen = "127.0.0.1:{free_port()}"

        [models.m]
        url = "{provider}/v1"
        format = "openai"
        key_env = "CORRAL_TEST_PROVIDER_KEY"
    """)


class Wire:
    """One connection to the gateway, its answers read as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """An answer's status, headers (lowercase names) and body (a chunked one joined)."""
        head = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 60)).decode()
        lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            return int(lines[0].split()[1]), headers, await self.reader.readexactly(
                int(headers["content-length"]))
        assert headers["transfer-encoding"] == "chunked", head
        body = b""
        while size := int((await self.reader.readuntil(b"\r\n"))[:-2], 16):
            body += (await self.reader.readexactly(size + 2))[:-2]
        assert await self.reader.readexactly(2) == b"\r\n"
        return int(lines[0].split()[1]), headers, body


def post(path: str, body: Any, token: str, *extra: str, chunked: bool = False) -> bytes:
    raw = json.dumps(body).encode()
    framing = ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {len(raw)}"]
    head = "\r\n".join([f"POST {path} HTTP/1.1", "Host: corral", f"Authorization: Bearer "
                        f"{token}", "Content-Type: application/json", *framing, *extra])
    return (head + "\r\n\r\n").encode() + (b"%x\r\n%b\r\n0\r\n\r\n" % (len(raw), raw)
                                             if chunked else raw)


async def connected(d: Any) -> Wire:
    host, _, port = d.services.gateway.url.split("/")[2].rpartition(":")
    return Wire(*await asyncio.open_connection(host, int(port)))


def answered(answer: tuple[int, dict[str, str], bytes]) -> tuple[Any, ...]:
    """What an agent's client reads of an answer: its status, content type, the
    upstream's request id passed back, and its body (a whole one decoded; a stream's
    events)."""
    status, headers, body = answer
    ctype, request_id = headers["content-type"], headers.get("x-request-id")
    if ctype.startswith("text/event-stream"):
        return status, ctype, request_id, body.split(b"\n\n")
    return status, ctype, request_id, json.loads(body)


async def test_lean_and_aiohttp_answer_a_call_alike_and_pipelined_calls_in_order(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """On one connection: calls of the common shape (two pipelined, answered in their
    order; counted `lean`), then the same calls with a chunked body (aiohttp's: the
    connection handed over), a GET of aiohttp's, then one of the common shape again
    (aiohttp's from then on): whole, streamed and refused (a wrong token, an unknown
    model), each answered as the other path answers it; and one saying `Connection:
    close`, then closed. Fails with the lean path's answers unlike aiohttp's, a call
    lean.py should take not taken, or the pipelined call (or a body in two writes)
    answered out of order or lost."""
    async with in_process(tmp_path, fleet(upstream.url)) as d:
        token = await token_of(d)
        lean_calls = d.services.gateway_status()["models"]["lean"]
        wire = await connected(d)
        calls = [(CHAT, chat("one"), token), (CHAT, chat("two", stream=True), token),
                 (CHAT, chat("three"), "not-a-token"), (CHAT, {"model": "nope"}, token)]
        pipelined = post(*calls[0]) + post(*calls[1])
        wire.writer.write(pipelined[:-9])  # (the second's body's end: in a later write)
        await wire.writer.drain()
        for _ in range(3):
            await asyncio.sleep(0)
        wire.writer.write(pipelined[-9:])
        lean = [answered(await wire.answer()), answered(await wire.answer())]
        for call in calls[2:]:
            wire.writer.write(post(*call))
            lean.append(answered(await wire.answer()))
        assert [a[:3] for a in lean] == [
            (200, "application/json; charset=utf-8", None),
            (200, "text/event-stream", "req_standin"),
            (401, "application/json", None), (404, "application/json", None)]
        assert lean[0][3]["choices"][0]["message"]["content"] == "echo: one"
        assert lean[1][3][-2:] == [b"data: [DONE]", b""]
        assert lean[2][3]["error"]["message"].startswith("unauthorized: not a corral model")
        assert d.services.gateway_status()["models"]["lean"] == lean_calls + 4
        handed = []
        for call in calls:
            wire.writer.write(post(*call, chunked=True))
            handed.append(answered(await wire.answer()))
        wire.writer.write(b"GET /.well-known/oauth-protected-resource HTTP/1.1\r\n"
                          b"Host: corral\r\n\r\n")
        status, headers, _ = await wire.answer()
        assert (status, headers["content-type"]) == (200, "application/json; charset=utf-8")
        wire.writer.write(post(*calls[0]))
        handed.append(answered(await wire.answer()))
        assert handed == [*lean, lean[0]]
        assert d.services.gateway_status()["models"]["lean"] == lean_calls + 4
        wire.writer.close()
        # `Connection: close`, its body written after its head: answered, then closed
        wire = await connected(d)
        closing = post(*calls[0], "Connection: close")
        wire.writer.write(closing[:-5])
        await wire.writer.drain()
        for _ in range(3):  # (the daemon's loop is this one: it reads the head meanwhile)
            await asyncio.sleep(0)
        wire.writer.write(closing[-5:])
        assert answered(await wire.answer()) == lean[0]
        assert d.services.gateway_status()["models"]["lean"] == lean_calls + 5
        assert await asyncio.wait_for(wire.reader.read(), 60) == b""
        wire.writer.close()


async def test_a_head_lean_does_not_take_is_aiohttps_to_refuse(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """A repeated Content-Length (a smuggling attempt), one of digits int() refuses ('²',
    a digit to str.isdigit()) and a header line over 8190 bytes: handed to aiohttp, which
    refuses each with a 400 and reads nothing after it; the gateway made no call. Fails
    with lean taking any as a call (or raising on the '²')."""
    async with in_process(tmp_path, fleet(upstream.url)) as d:
        token = await token_of(d)
        made = upstream.calls()
        for extra in ("Content-Length: 3", "X-Pad: " + "x" * 9000, "²"):
            wire = await connected(d)
            wire.writer.write(post(CHAT, chat("smuggled"), token, extra) if extra != "²" else
                              post(CHAT, chat("smuggled"), token).replace(
                                  b"Content-Length: ", b"Content-Length: \xb2", 1))
            status, _, body = await wire.answer()
            assert status == 400, body
            assert await asyncio.wait_for(wire.reader.read(), 60) == b""  # (closed)
            wire.writer.close()
        assert upstream.calls() == made


async def test_a_compressed_body_is_aiohttps_to_read(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """A call whose body is gzip'ed (`Content-Encoding: gzip`), to a model endpoint and to
    the MCP gateway's /mcp: answered as a plain one is, by aiohttp, which inflates it.
    Fails with lean taking it (it read the compressed bytes as the JSON: a 400 saying
    the body is not UTF-8)."""
    async with in_process(tmp_path, fleet(upstream.url)) as d:
        token = await token_of(d)
        lean_calls = d.services.gateway_status()["models"]["lean"]
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "gz", "version": "1"}}}
        for path, body in ((CHAT, chat("packed")), ("/mcp", initialize)):
            raw = gzip.compress(json.dumps(body).encode())
            wire = await connected(d)
            wire.writer.write("\r\n".join([
                f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}",
                "Content-Type: application/json", "Accept: application/json, text/event-stream",
                "Content-Encoding: gzip", f"Content-Length: {len(raw)}", "", ""]).encode() + raw)
            status, _, got = await wire.answer()
            assert status == 200, (path, got)
            if path == CHAT:
                assert json.loads(got)["choices"][0]["message"]["content"] == "echo: packed"
            else:
                assert json.loads(got.split(b"data: ")[-1] if got.startswith(b"event")
                                  else got)["result"]["serverInfo"]["name"] == "corral"
            wire.writer.close()
        assert d.services.gateway_status()["models"]["lean"] == lean_calls


async def test_a_stream_of_no_task_cut_after_its_last_event_counts_the_text_that_passed(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """A call of no task whose stream comes in one write, its last event too but no usage,
    then its connection closed before the chunked end: the agent has every event but the
    last, its stream cut; the call is counted `cut`, at its request's estimate in and the
    text that passed out (a token a delta at least, one for every four bytes: the role's
    1, "echo: " 2, "endcut" 2, the stop's 1). Fails with that read's text, read for the
    count only when it is needed, not read."""
    async with in_process(tmp_path, fleet(upstream.url)) as d:
        token = await token_of(d)
        before = d.services.gateway_status()["models"]["models"]["m"]
        wire = await connected(d)
        request = post(CHAT, chat("endcut", stream=True), token)
        wire.writer.write(request)
        got = await asyncio.wait_for(wire.reader.read(), 60)  # (to the connection's end)
        wire.writer.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), got
        assert b"echo: " in body and b"endcut" in body and b'"finish_reason": "stop"' in body
        assert b"[DONE]" not in body and not body.endswith(b"0\r\n\r\n"), body
        stats = d.services.gateway_status()["models"]["models"]["m"]
        sent = len(request.partition(b"\r\n\r\n")[2])
        assert (stats["cut"] - before["cut"], stats["input_tokens"] - before["input_tokens"],
                stats["output_tokens"] - before["output_tokens"]) == (1, -(-sent // 4), 6)
