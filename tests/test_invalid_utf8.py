"""A message whose params (or result) carry a string that is not UTF-8 (the raw byte 0xff)
from a less trusted peer: the envelope is decoded with params and result kept undecoded,
and their UTF-8 was met only when a handler decoded them (a 500 over HTTP, a handler's
traceback). Each path answers it as it answers malformed JSON, logs no traceback, and
serves the next message: /mcp on the [http] site and on the gateway's own site (a request,
a notification, a batch), `corral mcp serve`'s stdio, the control socket, and an MCP
server's answer read by the pool's client (over stdio and over HTTP)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import msgspec
import pytest

from .daemon_harness import PY, Daemon, free_port, running_daemon, shared_tmpdir
from .test_gateway_stateless import META, STATELESS, serve
from .test_hostile import connect, log_lines, read_replies

BAD_SERVER = __file__.replace("test_invalid_utf8.py", "bad_utf8_mcp.py")
BAD_HTTP_SERVER = __file__.replace("test_invalid_utf8.py", "bad_utf8_http_mcp.py")
CALL = (b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"bu__good",'
        b'"arguments":{"text":"\xff"},"_meta":' + msgspec.json.encode(META) + b'}}')
NOT_UTF8 = "parse error: JSON is malformed: not UTF-8: invalid start byte at byte "


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def remote() -> Iterator[str]:
    """bad_utf8_http_mcp.py, serving; its URL."""
    proc = subprocess.Popen([PY, BAD_HTTP_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{proc.stdout.readline().split()[1]}/mcp"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def daemon(http_port: int, remote: str) -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), f"""
[mcp_servers.bu]
command = ["{PY}", "{BAD_SERVER}"]
start_timeout = 30.0
timeout = 30.0

[mcp_servers.hu]
url = "{remote}"
start_timeout = 30.0
timeout = 30.0

[mcp_servers.hs]
url = "{remote.replace('/mcp', '/sse')}"
transport = "sse"
restart = "never"
start_timeout = 30.0
timeout = 30.0

[gateway]
listen = "127.0.0.1:0"
anonymous_tools = ["*"]

[http]
listen = "127.0.0.1:{http_port}"
""") as d:
        yield d


def sites(d: Daemon, http_port: int) -> list[tuple[str, dict[str, str]]]:
    """/mcp on the gateway's own site (anonymous) and on the [http] site (an API token)."""
    gateway = str(d.json("mcp", "status")["gateway"]["http"]["url"])
    token = d.json("token", "create", f"utf8-{free_port()}", "--scope", "mcp:call")["token"]
    return [(gateway, {}), (f"http://127.0.0.1:{http_port}/mcp",
                            {"Authorization": f"Bearer {token}"})]


def stateless(method: str, name: str | None = None) -> dict[str, str]:
    h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
         "MCP-Protocol-Version": STATELESS, "Mcp-Method": method}
    return h | ({"Mcp-Name": name} if name else {})


async def post(url: str, body: bytes, h: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=h) as r:
        return r.status, msgspec.json.decode(await r.read()) if r.status != 202 else None


def no_traceback(d: Daemon) -> None:
    assert [x for x in log_lines(d, n=2000) if "Traceback" in x or "UnicodeDecodeError" in x] \
        == []


async def test_mcp_over_http_answers_a_parse_error_and_serves_on(daemon: Daemon,
                                                                 http_port: int) -> None:
    for url, auth in sites(daemon, http_port):
        bodies = {  # each the path's answer to malformed JSON: 400, -32700, no id
            "a request": (CALL, stateless("tools/call", "bu__good")),
            "a notification": (b'{"jsonrpc":"2.0","method":"notifications/cancelled",'
                               b'"params":{"requestId":"\xff","_meta":'
                               + msgspec.json.encode(META) + b'}}',
                               stateless("notifications/cancelled")),
            "a batch": (b"[" + CALL + b"]", stateless("tools/call", "bu__good")),
            "its method": (b'{"jsonrpc":"2.0","id":8,"method":"tools/\xff"}',
                           stateless("tools/list")),
        }
        for what, (body, h) in bodies.items():
            status, got = await post(url, body, h | auth)
            assert status == 400, (url, what, got)
            assert got["id"] is None and got["error"]["code"] == -32700, (url, what, got)
            assert got["error"]["message"].startswith(NOT_UTF8), (url, what, got)
        status, got = await post(url, CALL.replace(b"\xff", b"fine"),
                                 stateless("tools/call", "bu__good") | auth)
        assert (status, got["id"], got["result"]["content"][0]["text"]) == (200, 7, "ok")
    no_traceback(daemon)


async def test_mcp_serve_over_stdio_answers_a_parse_error_and_serves_on(
        daemon: Daemon) -> None:
    async with serve(daemon) as (w, r):
        for line in (CALL, b"[" + CALL + b"]"):
            w.write(line + b"\n")
            got = msgspec.json.decode(await asyncio.wait_for(r.readline(), 30))
            assert got["id"] is None and got["error"]["code"] == -32700, got
            assert got["error"]["message"].startswith(NOT_UTF8), got
        w.write(CALL.replace(b"\xff", b"fine") + b"\n")
        got = msgspec.json.decode(await asyncio.wait_for(r.readline(), 30))
        assert (got["id"], got["result"]["content"][0]["text"]) == (7, "ok")
    no_traceback(daemon)


def test_the_control_socket_answers_each_request_and_serves_on(daemon: Daemon) -> None:
    """A request is answered with its own id (-32602, as a handler's decode of its params
    said before: tests/test_hostile.py), in a batch too; a notification is malformed JSON
    (-32700 with no id, as the line of a string not UTF-8 in its envelope)."""
    s = connect(daemon)
    s.sendall(b'{"jsonrpc":"2.0","method":"events.publish","params":{"topic":"\xff"}}\n'
              b'[{"jsonrpc":"2.0","id":1,"method":"agents.status","params":{"names":["\xff"]'
              b'}}]\n{"jsonrpc":"2.0","id":2,"method":"daemon.info"}\n')
    dropped, first, second = read_replies(s, 3)
    assert dropped["id"] is None and dropped["error"]["code"] == -32700, dropped
    assert dropped["error"]["message"].startswith(NOT_UTF8), dropped
    assert first["id"] == 1 and first["error"]["code"] == -32602, first
    assert first["error"]["message"].startswith("invalid params: not UTF-8"), first
    assert second["id"] == 2 and second["result"]["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    s.close()
    no_traceback(daemon)


async def test_an_mcp_servers_answer_not_utf8_is_a_clear_error_and_it_serves_on(
        daemon: Daemon, http_port: int) -> None:
    """Its notification before it, also not UTF-8, is discarded as garbage with a note."""
    url, _ = sites(daemon, http_port)[0]
    call = CALL.replace(b"bu__good", b"bu__bad").replace(b"\xff", b"x")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, got = await post(url, call, stateless("tools/call", "bu__bad"))
    assert loop.time() - t0 < 20  # at once, not at the call's timeout (30 s)
    assert got["id"] == 7 and got["error"]["code"] == -32700, got
    assert got["error"]["message"].startswith(
        "the answer of MCP server bu#0 is not UTF-8: invalid start byte at byte "), got
    notes = log_lines(daemon, "bu")
    assert any("discarded a stdout line that is not JSON-RPC (JSON is malformed: not UTF-8: "
               "invalid start byte at byte 83)" in x and "notifications/message" in x
               for x in notes), notes
    status, got = await post(url, call.replace(b"bu__bad", b"bu__good"),
                             stateless("tools/call", "bu__good"))
    assert (status, got["result"]["content"][0]["text"]) == (200, "ok")
    bu = {s["name"]: s for s in daemon.json("mcp", "status")["mcp_servers"]}["bu"]
    assert (bu["state"], bu["restarts"]) == ("ready", 0), bu
    no_traceback(daemon)


async def test_a_remote_servers_answers_not_utf8_are_clear_errors_and_it_serves_on(
        daemon: Daemon, http_port: int, remote: str) -> None:
    """Over HTTP: a result not UTF-8 as from a stdio server; a 400 whose error's id is not
    UTF-8 is the request's HTTP error (it raised in the transport: the request waited for
    its timeout)."""
    url, _ = sites(daemon, http_port)[0]
    loop = asyncio.get_running_loop()
    said = {}
    for tool in ("hu__bad", "hu__refused", "hu__good"):
        t0 = loop.time()
        _, got = await post(url, CALL.replace(b"bu__good", tool.encode()).replace(
            b"\xff", b"x"), stateless("tools/call", tool))
        assert loop.time() - t0 < 20, tool  # at once, not at the call's timeout (30 s)
        said[tool] = got.get("error") or got["result"]["content"][0]["text"]
    assert said["hu__bad"]["code"] == -32700 and said["hu__bad"]["message"].startswith(
        "the answer of MCP server hu#0 is not UTF-8: invalid start byte at byte "), said
    assert f"{remote}: HTTP 400 Bad Request: " in said["hu__refused"]["message"], said
    assert said["hu__good"] == "ok", said
    no_traceback(daemon)


async def test_a_remote_servers_stream_not_utf8_ends_its_call_with_that_error(
        daemon: Daemon, http_port: int) -> None:
    """Over an event stream (a POST's, and the GET that resumes it): a message whose own
    envelope is not UTF-8 (its method; its "jsonrpc") ends the call at once with the error
    of an answer not UTF-8 (its id unread: the transport's reader raised and the call
    waited for its timeout; the answer's id alone was read and the call waited too)."""
    from .bad_utf8_http_mcp import UNREAD_JSONRPC, UNREAD_METHOD

    url, _ = sites(daemon, http_port)[0]
    loop = asyncio.get_running_loop()
    for tool, at in (("hu__streamed", UNREAD_METHOD.index(b"\xff")),
                     ("hu__resumed", UNREAD_JSONRPC.index(b"\xff"))):
        t0 = loop.time()
        _, got = await post(url, CALL.replace(b"bu__good", tool.encode()).replace(
            b"\xff", b"x"), stateless("tools/call", tool))
        assert loop.time() - t0 < 20, tool  # at once, not at the call's timeout (30 s)
        assert (got["id"], got["error"]) == (7, {
            "code": -32700, "message": "the answer of MCP server hu#0 is not UTF-8: "
                                       f"invalid start byte at byte {at}"}), (tool, got)
    _, got = await post(url, CALL.replace(b"bu__good", b"hu__good").replace(b"\xff", b"x"),
                        stateless("tools/call", "hu__good"))
    assert got["result"]["content"][0]["text"] == "ok", got
    hu = {s["name"]: s for s in daemon.json("mcp", "status")["mcp_servers"]}["hu"]
    assert (hu["state"], hu["restarts"]) == ("ready", 0), hu
    no_traceback(daemon)


def test_a_remote_servers_notification_not_utf8_is_dropped_and_the_call_answered(
        remote: str) -> None:
    """On a call's event stream, a log line and a progress notification whose params alone
    are not UTF-8 (their envelopes read: not the answer) are discarded as a stdio server's
    are, each with a note in the server's log, and the call has its answer (each ended it
    with "the answer ... is not UTF-8")."""
    from .bad_utf8_http_mcp import BAD, NOISY

    with running_daemon(shared_tmpdir(), f'[mcp_servers.hu]\nurl = "{remote}"\n') as d:
        t0 = time.monotonic()
        r = d.cli("tools", "call", "hu__noisy")
        assert time.monotonic() - t0 < 20  # at once, not at the call's timeout (30 s)
        assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
        notes = [x for x in log_lines(d, "hu") if "discarded" in x]
        assert d.stop() == 0
        assert "discarded" not in d.said()  # the server's log, not the daemon's stderr
    assert notes == [
        f"discarded a message that is not JSON-RPC (JSON is malformed: not UTF-8: invalid "
        f"start byte at byte {n.index(BAD)}): {n[:120].decode('utf-8', 'replace')!r}"
        for n in NOISY], notes


async def test_a_legacy_servers_endpoint_not_utf8_fails_the_call_at_once(
        daemon: Daemon, http_port: int, remote: str) -> None:
    """An HTTP+SSE server whose endpoint event is not UTF-8 (its stream held open): the
    stream's reader raised, the endpoint was never known, each call waited for its timeout
    and the server was never seen lost. Now the stream is lost at once, and said why."""
    url, _ = sites(daemon, http_port)[0]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    _, got = await post(url, CALL.replace(b"bu__good", b"hs__any").replace(b"\xff", b"x"),
                        stateless("tools/call", "hs__any"))
    assert loop.time() - t0 < 20  # at once, not at the start's timeout (30 s)
    why = (f"SSE stream lost: {remote.replace('/mcp', '/sse')} sent an endpoint that is not "
           "UTF-8: invalid start byte at byte 12")
    assert (got["id"], got["error"]) == (7, {
        "code": -32012, "message": f"MCP server hs#0 is not serving: {why}"}), got
    hs = {s["name"]: s for s in daemon.json("mcp", "status")["mcp_servers"]}["hs"]
    assert (hs["state"], hs["last_exit"]) == ("terminated", why), hs
    no_traceback(daemon)


async def test_params_nested_too_deeply_are_a_parse_error_on_mcp_too(daemon: Daemon,
                                                                      http_port: int) -> None:
    """The other way a body's params kept undecoded raised in the envelope's decode
    (RecursionError: a 500 over HTTP, a line handler's traceback over stdio)."""
    deep = CALL.replace(b'"\xff"', b"[" * 100_000 + b"]" * 100_000)
    for url, auth in sites(daemon, http_port):
        status, got = await post(url, deep, stateless("tools/call", "bu__good") | auth)
        assert (status, got) == (400, {"jsonrpc": "2.0", "id": None, "error": {
            "code": -32700, "message": "parse error: JSON nested too deeply"}}), url
    async with serve(daemon) as (w, r):
        w.write(deep + b"\n" + CALL.replace(b"\xff", b"fine") + b"\n")
        got = msgspec.json.decode(await asyncio.wait_for(r.readline(), 30))
        assert got == {"jsonrpc": "2.0", "id": None, "error": {
            "code": -32700, "message": "parse error: JSON nested too deeply"}}
        got = msgspec.json.decode(await asyncio.wait_for(r.readline(), 30))
        assert (got["id"], got["result"]["content"][0]["text"]) == (7, "ok")
    no_traceback(daemon)


async def test_a_number_out_of_range_in_params_is_refused_with_its_id_and_it_serves_on(
        daemon: Daemon, http_port: int) -> None:
    """Valid JSON that is not Python's (1e999999: msgspec's "Number out of range") in a
    request's params: kept undecoded by the envelope like a string not UTF-8, met when a
    handler decodes them. Each is refused with the request's id, as invalid params, not a
    500 with a traceback; the next request is served."""
    far = CALL.replace(b'"\xff"', b"1e999999")
    listing = (b'{"jsonrpc":"2.0","id":9,"method":"tools/list","params":{"x":1e999999,'
               b'"_meta":' + msgspec.json.encode(META) + b'}}')
    for url, auth in sites(daemon, http_port):
        for body, h, rid in ((far, stateless("tools/call", "bu__good"), 7),
                             (listing, stateless("tools/list"), 9)):
            status, got = await post(url, body, h | auth)
            assert (status, got["id"], got["error"]["code"]) == (200, rid, -32602), (url, got)
            assert "Number out of range" in got["error"]["message"], (url, got)
        status, got = await post(url, CALL.replace(b"\xff", b"fine"),
                                 stateless("tools/call", "bu__good") | auth)
        assert (status, got["id"], got["result"]["content"][0]["text"]) == (200, 7, "ok")
    async with serve(daemon) as (w, r):
        w.write(far + b"\n" + CALL.replace(b"\xff", b"fine") + b"\n")
        refused = msgspec.json.decode(await asyncio.wait_for(r.readline(), 30))
        assert refused["id"] == 7 and refused["error"]["code"] == -32602, refused
        served = msgspec.json.decode(await asyncio.wait_for(r.readline(), 30))
        assert served["result"]["content"][0]["text"] == "ok", served
    no_traceback(daemon)
