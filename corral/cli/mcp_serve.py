"""`corral mcp serve`: an MCP host's stdio, bridged to the daemon's MCP gateway door.

Each JSON-RPC line the host writes is POSTed as it came to `/mcp` on the daemon's local
socket (daemon/localgateway.py, beside the control socket), where the caller is who its
peer credentials say, as on the control socket; what comes back, a JSON answer or an SSE
stream's messages, goes to stdout a line each, and so does the session's GET stream
(list_changed, resource updates). A call so enters by the `/mcp` door and passes its
chain as any HTTP client's does (decision 1580). A daemon that restarted or was upgraded
has forgotten the session: the host's `initialize` is sent again, a request the session's
absence refused (unread: never made) is sent again, and the host is told the lists
changed. Reconnecting: docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from .. import jsonrpc
from ..daemon.localgateway import local_socket
from ..jsonrpc import LineProtocol
from ..mcp import sse
from ..mcp.envelope import NAMED
from ..mcp.paramheaders import (
    EVENT_STREAM,
    JSON,
    METHOD_HEADER,
    NAME_HEADER,
    SESSION_HEADER,
    header_value,
)
from .unixhttp import ExchangeError, HttpAnswer, NoConnection, exchange

RETRY_EVERY = 0.2
MAX_EVENT = 64 << 20  # one message of an SSE stream, at most
AGAIN = "corral-mcp-serve"  # the id of a request of the bridge's own, never the host's
CHANGED = [f"notifications/{kind}/list_changed" for kind in ("tools", "resources", "prompts")]
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}


class HostLine(msgspec.Struct):
    """What the bridge reads of a host's message: what its headers say again."""

    id: jsonrpc.Id | None = None
    method: str | None = None
    params: dict[str, Any] | None = None


_message = msgspec.json.Decoder(HostLine)


def head_of(line: bytes) -> HostLine:
    try:
        return _message.decode(line)
    except (ValueError, RecursionError):  # (msgspec's, and a string not UTF-8)
        return HostLine()  # (a batch, or what the door refuses in its own words)


class SessionGone(Exception):
    """The daemon knows the session no more (it restarted): begin again."""


class Bridge:
    def __init__(self, control: Path, agent: str | None, token: str | None,
                 write: Callable[[bytes], None]) -> None:
        self.control = control  # the daemon, as its user names it
        self.target = "/mcp" + (f"?agent={quote(agent)}" if agent else "")
        # a connection a request: one refused was sent nothing, so is safe to try again
        self.socket = str(local_socket(control))
        self.auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self.reconnect = 0.0
        self.write = write
        self.session: str | None = None  # its Mcp-Session-Id
        self.init: bytes | None = None  # the host's initialize, to begin again with
        self.begun = 0  # sessions begun: a request refused for an older one begins none
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._listening: asyncio.Task[None] | None = None

    async def forward(self, line: bytes, head: HostLine) -> None:
        """One host message to the daemon, its answer (or the failure's) to the host."""
        if head.method == "initialize":
            self.init = line
        try:
            begun = self.begun
            try:
                await self._exchange(line, head)
            except SessionGone:
                await self.begin_again(begun)
                await self._exchange(line, head)
        except NoConnection as exc:
            self._fail(head, f"the corral daemon at {self.control} is not reachable "
                             f"({exc.strerror or exc})")
        except ValueError as exc:  # what no request may carry (exchange's refusal)
            self._fail(head, f"the request cannot be sent to the corral daemon: {exc}")
        except (ExchangeError, SessionGone, sse.TooLarge):
            self._fail(head, f"the corral daemon at {self.control} went away")

    def _fail(self, head: HostLine, message: str) -> None:
        if head.id is not None and head.method is not None:
            self.write(jsonrpc.encode(jsonrpc.ErrorResponse(head.id, jsonrpc.RpcError(
                jsonrpc.PEER_CLOSED, message).to_object())))

    async def _open(self, head: HostLine, body: bytes | None = None) -> HttpAnswer:
        """A POST of `body` (None: the session's GET stream), saying who, the session, and
        what the body says (its method and what it names, as a 2026-07-28 request's
        must); its connection tried again for `reconnect` seconds while none can be made,
        as while an upgrade's next image starts."""
        h = {"Accept": f"{JSON}, {EVENT_STREAM}", "Content-Type": JSON, **self.auth}
        if self.session is not None:
            h[SESSION_HEADER] = self.session
        if head.method is not None and head.id is not None:
            h[METHOD_HEADER] = header_value(head.method)  # (one no header carries: wrapped)
            named = (head.params or {}).get(NAMED.get(head.method, ""))
            if isinstance(named, str):
                h[NAME_HEADER] = header_value(named)
        deadline = asyncio.get_running_loop().time() + self.reconnect
        while True:
            try:
                return await exchange(self.socket, "GET" if body is None else "POST",
                                      self.target, h, body)
            except NoConnection:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(RETRY_EVERY)

    async def _exchange(self, line: bytes, head: HostLine, told: bool = True) -> None:
        """`line` sent, and (`told`) what answers it written to the host."""
        had = self.session
        async with await self._open(head, line) as resp:
            body = await resp.read() if resp.content_type != EVENT_STREAM else b""
            if resp.status == 404 and had is not None and b"initialize again" in body:
                raise SessionGone
            made = resp.headers.get(SESSION_HEADER)
            if made is not None and head.method == "initialize":
                self.session, self.begun = made, self.begun + 1
                self._listen()
            if told:
                await self._relay(resp, head, body)

    async def _relay(self, resp: HttpAnswer, head: HostLine, body: bytes) -> None:
        """The answer's messages to the host: a JSON body, or each of an SSE stream's; a
        refusal with the request's id where the door had not read it."""
        if resp.content_type == EVENT_STREAM:
            parser = sse.Parser(MAX_EVENT)
            async for chunk in resp.chunks():
                for ev in parser.feed(chunk):
                    if ev.event == "message" and ev.data.strip():
                        self.write(ev.data + b"\n")
        elif resp.status < 400 and body.strip():
            self.write(body.rstrip(b"\n") + b"\n")
        elif resp.status >= 400 and (head.id is not None or head.method is None):
            self.write(jsonrpc.encode(refusal(body, head.id)))

    async def begin_again(self, begun: int) -> None:
        """The host's initialize sent again (once for every request that found the
        session gone together), and the host told the lists changed."""
        if self.begun != begun or self.init is None:
            return
        self.session = None
        again = {"jsonrpc": "2.0", "id": AGAIN, "method": "initialize",
                 "params": msgspec.json.decode(self.init).get("params")}
        async with await self._open(HostLine(AGAIN, "initialize"),
                                    jsonrpc.encode(again)) as resp:
            made, body = resp.headers.get(SESSION_HEADER), await resp.read()
        if made is None:  # refused: the daemon serves this client no more
            raise SessionGone(refusal(body, None)["error"]["message"])
        self.session, self.begun = made, self.begun + 1
        self._listen()
        await self._exchange(jsonrpc.encode({"jsonrpc": "2.0", "method":
                                             "notifications/initialized"}), HostLine(), False)
        for method in CHANGED:
            self.write(jsonrpc.encode({"jsonrpc": "2.0", "method": method}))

    def _listen(self) -> None:
        if self._listening is not None and self._listening is not asyncio.current_task():
            self._listening.cancel()
        self._listening = asyncio.ensure_future(self._stream(self.begun))

    async def _stream(self, begun: int) -> None:
        """The session's GET stream, to the host; a daemon gone is sought for `reconnect`
        seconds (then `lost` says so), and a session it forgot begun again."""
        while self.begun == begun:
            try:
                async with await self._open(HostLine()) as resp:
                    if resp.status == 404:  # forgotten
                        await self.begin_again(begun)
                    if resp.status != 200:  # (else ended, or held elsewhere)
                        return
                    await self._relay(resp, HostLine(), b"")
            except NoConnection:
                if not self.lost.done():
                    self.lost.set_result(f"lost the corral daemon at {self.control} and "
                                         f"could not reconnect within {self.reconnect:g} s")
                return
            except SessionGone as exc:
                if not self.lost.done():
                    self.lost.set_result(f"the corral daemon at {self.control} did not "
                                         f"begin the session again: {exc}")
                return
            except (ExchangeError, sse.TooLarge):
                continue  # went away mid-stream: sought again

    async def close(self) -> None:
        """The host left: its session ended (what it still has in flight cancelled)."""
        if self._listening is not None:
            self._listening.cancel()
        if self.session is not None:
            with contextlib.suppress(OSError, ExchangeError):  # (NoConnection: an OSError)
                async with await exchange(self.socket, "DELETE", self.target, {
                        SESSION_HEADER: self.session, **self.auth}) as resp:
                    await resp.read()


def refusal(body: bytes, rid: jsonrpc.Id | None) -> dict[str, Any]:
    """The door's JSON-RPC error (its words as one, where it said them otherwise), with
    the request's id where the door had not read it."""
    with contextlib.suppress(ValueError):
        said = msgspec.json.decode(body)
        if isinstance(said, dict) and isinstance(said.get("error"), dict):
            return {**said, "id": said.get("id") if said.get("id") is not None else rid}
    return {"jsonrpc": "2.0", "id": rid, "error": {
        "code": jsonrpc.INVALID_REQUEST, "message": body.decode(errors="replace").strip()}}


async def serve(control: Path, agent: str | None, token: str | None, reconnect: float
                ) -> int:
    loop = asyncio.get_running_loop()
    write: Callable[[bytes], None]
    if pollable(sys.stdout.fileno()):
        out, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
        write = out.write  # type: ignore[attr-defined]
    else:  # a file, /dev/null: plain writes are fine there
        def write(data: bytes) -> None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    bridge = Bridge(control, agent, token, write)
    try:
        # a 2026-07-28 `server/discover` (no session needed) says at once whether the
        # daemon serves this client: exit 3 when it cannot be reached, 1 when it refuses
        probe = {"jsonrpc": "2.0", "id": AGAIN, "method": "server/discover",
                 "params": {"_meta": META}}
        try:
            async with await bridge._open(HostLine(AGAIN, "server/discover"),
                                          jsonrpc.encode(probe)) as resp:
                body = await resp.read()
        except NoConnection as exc:
            print(f"corral mcp serve: cannot reach the corral daemon at {control}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 3
        if resp.status != 200:
            print(f"corral mcp serve: {refusal(body, None)['error']['message']}",
                  file=sys.stderr)
            return 1
        bridge.reconnect = reconnect
        return await _serve(bridge, loop)
    finally:
        await bridge.close()


async def _serve(bridge: Bridge, loop: asyncio.AbstractEventLoop) -> int:
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def oversized(size: int, head: bytes, tail: bytes) -> None:
        bridge.write(jsonrpc.encode(jsonrpc.ErrorResponse(None, jsonrpc.RpcError(
            jsonrpc.INVALID_REQUEST, f"invalid request: a {size}-byte message is over the "
                                     "line limit").to_object())))
    reader = LineProtocol(lines.put_nowait, lambda exc: lines.put_nowait(None),
                          max_line=jsonrpc.DEFAULT_MAX_LINE, on_oversize=oversized)
    whole = not pollable(sys.stdin.fileno())
    if whole:  # a file, /dev/null: read whole, off the loop
        reader.data_received(await asyncio.to_thread(sys.stdin.buffer.read))
        reader.connection_lost(None)
    else:
        await loop.connect_read_pipe(lambda: reader, sys.stdin)
    calls: dict[Any, asyncio.Task[None]] = {}  # the host's requests in flight, by id
    while True:
        got = asyncio.ensure_future(lines.get())
        waiting: list[asyncio.Future[Any]] = [got, bridge.lost]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not got.done():
            got.cancel()
            print(f"corral mcp serve: {bridge.lost.result()}", file=sys.stderr)
            return 1
        line = got.result()
        if line is None:
            break
        head = head_of(line)
        if head.method == "initialize":  # its session, before what follows it
            await bridge.forward(line, head)
            continue
        if head.method == "notifications/cancelled":
            # its POST dropped: the door cancels what it was making (a 2026-07-28
            # request, of no session, has nothing else to hear it by)
            rid = (head.params or {}).get("requestId")
            cancelled = calls.pop((type(rid), rid), None)
            if cancelled is not None:
                cancelled.cancel()
            if bridge.session is None:
                continue
        call = asyncio.ensure_future(bridge.forward(line, head))
        if head.id is not None and head.method is not None:
            key = (type(head.id), head.id)  # (1 and "1" are two)
            calls[key] = call
            call.add_done_callback(lambda done, key=key: calls.pop(key, None)  # type: ignore[misc]
                                   if calls.get(key) is done else None)
    if whole:  # a file's requests are each answered (a host gone cancels what it left)
        await asyncio.gather(*calls.values(), return_exceptions=True)
    for call in list(calls.values()):
        call.cancel()
    return 0


def pollable(fd: int) -> bool:
    """Whether the loop's pipe transports can take `fd`: uvloop's end the process (libuv's
    abort) on what epoll refuses, a regular file or /dev/null."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def run_serve(path: Path, agent: str | None, token: str | None, reconnect: float) -> int:
    import uvloop

    return int(uvloop.run(serve(path, agent, token, reconnect)))
