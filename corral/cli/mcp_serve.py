"""`corral mcp serve`: the pool as an MCP server over stdio, for a host that starts it.

The MCP side is corral.mcp.gateway's session; what it serves comes from the running daemon
through the control socket (`gateway.list`, `gateway.call`, `gateway.watch`), so the
daemon's allowlists, limits, accounting and audit apply exactly as to HTTP clients.
Reconnecting, and a call the departed image never read, are said in docs/gateway.md."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import LineProtocol, Peer, RpcError
from ..mcp.logrelay import LogRelay
from ..mcp.server import GatewaySession, Progress, StdioTransport
from ..methods import CANCEL, GOING_AWAY, GatewayCall, GatewayItems, GatewayList, GatewayWatch
from ..timeouts import within

RETRY_EVERY = 0.2


class DaemonLink:
    """The control-socket connection, its notifications, and reconnection."""

    def __init__(self, path: Path, agent: str | None, token: str | None,
                 reconnect: float) -> None:
        self.path = path
        self.who: dict[str, Any] = {"agent": agent, "token": token}
        self.reconnect = reconnect
        self.peer: Peer | None = None
        self.features: frozenset[str] = frozenset({"tools"})
        self.lost = asyncio.Event()
        self.up = asyncio.Event()
        # the kinds of list a later `gateway.changed` names, for the host (`_serve`)
        self.changes: asyncio.Queue[list[str]] = asyncio.Queue()
        # the connection a daemon left for an upgrade, and the last request it read
        self._left: tuple[Peer, int] | None = None
        self._progress: dict[int, Progress] = {}
        self._logs: dict[int, LogRelay] = {}
        self._ids = itertools.count(1)
        self._first_change: asyncio.Future[None] | None = None
        self._watch_task: asyncio.Future[None] | None = None
        self._transport: asyncio.BaseTransport | None = None

    def close(self) -> None:
        """Leaving: nothing more is sent or expected on the control socket."""
        if self.peer is not None:
            self.peer.close("corral mcp serve is exiting")
        if self._transport is not None:
            self._transport.close()

    async def connect(self, within_s: float = 10.0) -> None:
        """Connect, and wait `within_s` for the daemon's first `gateway.changed`."""
        loop = asyncio.get_running_loop()
        holder: list[Peer] = []

        def line(data: bytes) -> None:
            holder[0].feed_line(data)

        def eof(exc: Exception | None) -> None:
            holder[0].close(f"the corral daemon at {self.path} went away")
            self.up.clear()
            self.lost.set()

        transport, _ = await loop.create_unix_connection(
            lambda: LineProtocol(line, eof), str(self.path))
        peer = Peer(f"corral daemon at {self.path}", transport.write,  # type: ignore[attr-defined]
                    on_notification=self._notification, cancel_method=CANCEL)
        holder.append(peer)
        self.peer = peer
        self._transport = transport
        self.lost.clear()
        first: asyncio.Future[None] = loop.create_future()
        self._first_change = first
        # the watch runs for the connection's life; its first notification says what
        # the pool serves
        self._watch_task = asyncio.ensure_future(self._watch(peer))
        await within(first, within_s)
        self._left = None  # (the next image has answered)
        self.up.set()

    async def _watch(self, peer: Peer) -> None:
        with contextlib.suppress(RpcError):
            await peer.request(GatewayWatch.declared.name, {})

    def _notification(self, method: str, raw: Any, peer: Peer) -> None:
        params = msgspec.json.decode(raw) if raw is not msgspec.UNSET else {}
        if method == GOING_AWAY and isinstance(params.get("last_id"), int):
            self._left = (peer, params["last_id"])
        elif method == "gateway.progress":
            cb = self._progress.get(params.pop("progress_id", None))
            if cb is not None:
                cb(params)
        elif method == "gateway.log":
            said = self._logs.get(params.pop("progress_id", None))
            if said is not None:
                said.send(params)  # at its level: the daemon's LogRelay
        elif method == "gateway.changed":
            self.features = frozenset(params.get("features") or ["tools"])
            if self._first_change is not None and not self._first_change.done():
                self._first_change.set_result(None)
            elif params.get("kinds"):
                self.changes.put_nowait(params["kinds"])

    def _live(self) -> Peer:
        if self.peer is None or self.peer.closed is not None:
            raise RpcError(jsonrpc.PEER_CLOSED, f"the corral daemon at {self.path} is not "
                                                "reachable (reconnecting)")
        return self.peer

    async def _ask(self, method: str, params: dict[str, Any], type: Any) -> Any:
        """`method` asked of the daemon. After a GOING_AWAY, a call is sent to the next
        image only once it has answered (so one given up on is never read later), and a
        call the image that left never read is sent again then."""
        while True:
            if self._left is not None and not self.up.is_set():
                try:
                    await within(self.up.wait(), self.reconnect)
                except TimeoutError:
                    raise RpcError(jsonrpc.PEER_CLOSED, f"the corral daemon at {self.path} "
                                   f"went away for an upgrade and did not come back within "
                                   f"{self.reconnect:g} s: {method} was not made") from None
                continue
            peer = self._live()
            rid = peer.sent + 1  # (the id `request` gives it, before its first await)
            try:
                return await peer.request(method, params, type=type)
            except RpcError as exc:
                left = self._left
                if exc.code != jsonrpc.PEER_CLOSED or left is None or left[0] is not peer \
                        or rid <= left[1]:
                    raise

    async def list_items(self, kind: str) -> list[dict[str, Any]]:
        res: GatewayItems = await self._ask(
            GatewayList.declared.name, {**self.who, "kind": kind}, GatewayItems)
        return res.items

    async def task(self, method: str, params: dict[str, Any]) -> Any:
        """Not offered over stdio (its features have no "tasks"): the HTTP gateway's."""
        raise RpcError(jsonrpc.METHOD_NOT_FOUND, f"method not found: {method}")

    async def subscribe(self, uri: str, on_update: Callable[[str], None]) -> None:
        """Not offered over stdio (no "subscriptions"): the HTTP gateway's."""
        raise RpcError(jsonrpc.METHOD_NOT_FOUND, "method not found: resources/subscribe")

    async def unsubscribe(self, uri: str) -> None:
        raise RpcError(jsonrpc.METHOD_NOT_FOUND, "method not found: resources/unsubscribe")

    async def forward(self, method: str, params: dict[str, Any],
                      on_progress: Progress | None, on_log: LogRelay | None = None) -> Any:
        pid = next(self._ids)
        if on_progress is not None:
            self._progress[pid] = on_progress
        if on_log is not None:
            self._logs[pid] = on_log
        try:
            # the result is passed on as the daemon wrote it, never decoded here
            return await self._ask(
                GatewayCall.declared.name, {**self.who, "method": method, "params": params,
                                            "progress_id": pid if on_progress or on_log
                                            else None,
                                            "log_level": on_log.level if on_log else None},
                msgspec.Raw)
        finally:
            self._progress.pop(pid, None)
            self._logs.pop(pid, None)


async def serve(path: Path, agent: str | None, token: str | None, reconnect: float) -> int:
    link = DaemonLink(path, agent, token, reconnect)
    try:
        return await _serve(link)
    finally:
        link.close()


async def _serve(link: DaemonLink) -> int:
    loop = asyncio.get_running_loop()
    try:
        await link.connect()
    except (OSError, TimeoutError) as exc:
        print(f"corral mcp serve: cannot reach the corral daemon at {link.path}: "
              f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 3
    if any(v is not None for v in link.who.values()):  # refuse an unknown identity at once
        try:
            await link.list_items("tools")
        except RpcError as exc:
            print(f"corral mcp serve: {exc.message}", file=sys.stderr)
            return 1
    write: Callable[[bytes], None]
    try:
        out, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
        write = out.write  # type: ignore[attr-defined]
    except ValueError:  # stdout is a regular file: plain writes are fine there
        def write(data: bytes) -> None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    # its notifications (list_changed) are written as its answers are
    session = GatewaySession(link, push=lambda msg: write(jsonrpc.encode(msg)))
    done: asyncio.Future[None] = loop.create_future()

    def stdin_closed() -> None:
        session.close()
        if not done.done():
            done.set_result(None)
    await loop.connect_read_pipe(lambda: StdioTransport(session, write, stdin_closed),
                                 sys.stdin)
    while not done.done():
        lost: asyncio.Future[Any] = asyncio.ensure_future(link.lost.wait())
        changed: asyncio.Future[list[str]] = asyncio.ensure_future(link.changes.get())
        waiting: list[asyncio.Future[Any]] = [done, lost, changed]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if changed.done():
            session.notify_changed(changed.result())
        else:
            changed.cancel()
        if done.done():
            lost.cancel()
            break
        if not lost.done():
            lost.cancel()
            continue
        if not await _reconnect(link, done):
            if done.done():
                break
            print(f"corral mcp serve: lost the corral daemon at {link.path} and could not "
                  f"reconnect within {link.reconnect:g} s", file=sys.stderr)
            session.close()
            return 1
        session.notify_changed(["tools", "resources", "prompts"])
    return 0


async def _reconnect(link: DaemonLink, done: asyncio.Future[None]) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + link.reconnect
    while loop.time() < deadline and not done.done():
        try:
            await link.connect(max(0.01, min(10.0, deadline - loop.time())))
            return True
        except (OSError, TimeoutError):
            await asyncio.sleep(RETRY_EVERY)
    return False


def run_serve(path: Path, agent: str | None, token: str | None, reconnect: float) -> int:
    import uvloop

    return int(uvloop.run(serve(path, agent, token, reconnect)))
