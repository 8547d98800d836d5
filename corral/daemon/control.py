"""The control socket: a unix socket speaking JSON-RPC, one connection per client.

A lock file beside the socket is held (flock) for the daemon's life, so a second daemon
refuses at once and a stale socket is safely replaced. Who is served and each client's
budgets (the constants below): docs/operations.md, docs/guide.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import logging
import os
import pwd
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec

from .. import jsonrpc
from ..cork import Cork, Parts
from ..jsonrpc import LineProtocol, Peer, RpcError
from ..methods import CANCEL, GOING_AWAY
from ..paths import runtime_directory
from ..statefiles import open_file
from ..supervisor.stream import ALSO_STREAMED
from ..throttle import Throttle
from ..timeouts import cancel_all, within
from .api import Dispatcher
from .caller import Caller

log = logging.getLogger("corral.control")

# a task input may be up to 16 MiB; a bigger request line is refused, never buffered
MAX_REQUEST = 16 * 1024 * 1024 + 64 * 1024
# unread replies of one client: above HIGH its requests are not read; above LIMIT (only
# pushed notifications can get there) it is disconnected
REPLY_HIGH = 1024 * 1024
REPLY_LOW = 256 * 1024
REPLY_LIMIT = 32 * 1024 * 1024
MAX_IN_FLIGHT = 64  # requests of one client being worked on at once; then it waits
# corral upgrade's drain: how long the requests read before it have to be answered, and
# the clients' last bytes to be written before they are cut
DRAIN_WAIT = 2.0
LEAVE_WAIT = 1.0


def _cancel_id(raw: Any) -> jsonrpc.Id | None:
    """The request a `request.cancel {id}` notification names."""
    try:
        params = msgspec.json.decode(raw) if raw is not msgspec.UNSET else None
    except (msgspec.DecodeError, UnicodeDecodeError):  # a string in it not UTF-8
        return None
    rid = params.get("id") if isinstance(params, dict) else None
    return rid if isinstance(rid, int | str) else None


class AlreadyRunning(Exception):
    pass


async def any_set(events: list[asyncio.Event], timeout: float) -> None:
    """Until one of `events` is set again (each cleared first), `timeout` at most."""
    for event in events:
        event.clear()
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_all(waits)


class Connection(LineProtocol):
    """One client: its credentials, its Peer, write flow control and its budget."""

    def __init__(self, server: ControlServer) -> None:
        super().__init__(self._line, self._eof, max_line=MAX_REQUEST,
                         on_oversize=self._oversize, last_line_unterminated=False)
        self.server = server
        self.uid = self.pid = self.gid = -1
        self.caller = Caller(via="socket")
        self.peer = Peer(
            self.name,  # (named by its credentials at connect)
            self._send,
            dispatch=self._dispatch,
            reply_to_garbage=True,
            on_garbage=self._garbage,
            cancel_method=CANCEL,
            cancel_id_of=_cancel_id,
            on_handled=self._flow,
        )
        self.writable = asyncio.Event()
        self.writable.set()
        self.lines = 0  # complete request lines received
        self._lines_at_check = 0
        self._unread_since: float | None = None  # replies not read since (loop time)
        self._watch: asyncio.TimerHandle | None = None
        self._streams: set[asyncio.Task[Any]] = set()  # follows: they end with the client
        # streaming requests, which an upgrade's drain does not wait for (they would not end)
        self._waits: set[asyncio.Task[Any]] = set()
        self.leaving = False  # corral upgrade's drain: no request read any more
        self._cork = Cork(asyncio.get_running_loop(), self._write)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid, self.uid, self.gid = struct.unpack("3i", creds)
        self.name = self.peer.name = f"client pid {self.pid} uid {self.uid}"
        refusal: RpcError | None = None
        try:
            tenant = self.server.tenant_of(self.uid, self.gid)
        except RpcError as exc:
            tenant, refusal = None, exc
        self.caller = Caller(via="socket", uid=self.uid, gid=self.gid, pid=self.pid,
                             tenant=tenant)
        transport.set_write_buffer_limits(high=REPLY_HIGH, low=REPLY_LOW)  # type: ignore[attr-defined]
        server = self.server
        if refusal is not None:
            log.warning("refused control connection from uid %d pid %d: %s", self.uid,
                        self.pid, refusal.message)
        elif not server.authorized(self.uid, self.gid):
            log.warning("refused control connection from uid %d pid %d", self.uid, self.pid)
            server.report(
                f"refused control connection from uid {self.uid} pid {self.pid}", "audit")
            refusal = RpcError(
                jsonrpc.UNAUTHORIZED,
                f"unauthorized: uid {self.uid} may not use this socket (allowed: root, uid "
                f"{os.geteuid()}" + (f", group {server.group}" if server.group
                                     else "") + ")")
        elif len(server.connections) >= server.max_connections:
            text = (f"refused: too many control connections ({len(server.connections)} "
                    f"open, max_connections = {server.max_connections})")
            server.complaints(f"{self.name}: {text}")
            refusal = RpcError(jsonrpc.REFUSED, text)
        if refusal is not None:
            self.peer.send_error(None, refusal)
            self.close()
            return
        server.connections.add(self)
        self._watch = asyncio.get_running_loop().call_later(server.idle_timeout, self._check)

    def _send(self, data: bytes) -> None:
        # through a Cork: the answers of a burst (a batch of the task journal committed
        # under 64 waiting requests) go in one write, and wake the client once
        if not cast(asyncio.WriteTransport, self.transport).is_closing():
            self._cork.write((data,))

    def _write(self, parts: Parts) -> None:
        # uvloop's transports are not registered as asyncio.WriteTransport: a cast
        t = cast(asyncio.WriteTransport, self.transport)
        if t.is_closing():
            return
        t.writelines(parts)
        # the backlog before these messages counts: one large answer the client asked for
        # is not a client that does not read
        if not self.writable.is_set() and \
                t.get_write_buffer_size() - sum(map(len, parts)) > REPLY_LIMIT:
            self.disconnect(f"{t.get_write_buffer_size()} bytes of replies unread "
                            f"(limit {REPLY_LIMIT})")

    def close(self) -> None:
        """Hang up after what is written so far, the turn's gathered answers too."""
        if self.transport is not None:
            self._cork.flush()
            self.transport.close()

    def disconnect(self, reason: str) -> None:
        """Close a client that went over its budget, saying why in the daemon's log."""
        text = f"closed the control connection of {self.name}: {reason}"
        log.warning("%s", text)
        self.server.report(text, "event")
        if self.transport is not None:  # abort: close() would wait for the unread replies
            cast(asyncio.WriteTransport, self.transport).abort()

    def _check(self) -> None:
        self._watch = None
        if self.transport is None or self.transport.is_closing():
            return
        timeout = self.server.idle_timeout
        loop = asyncio.get_running_loop()
        if self._unread_since is not None and loop.time() - self._unread_since >= timeout:
            self.disconnect(f"replies not read for {timeout:g} s")
            return
        stuck = self.lines == 0 or self.holding  # never asked anything, or half a line
        if (self.lines == self._lines_at_check and stuck and not self.peer.handling
                and self.writable.is_set()):
            self.disconnect(f"no complete request within {timeout:g} s")
            return
        self._lines_at_check = self.lines
        self._watch = loop.call_later(timeout, self._check)

    def pause_writing(self) -> None:
        # the client is not reading its replies: stop reading its requests
        self.writable.clear()
        self._unread_since = asyncio.get_running_loop().time()
        self._flow()

    def resume_writing(self) -> None:
        self.writable.set()
        self._unread_since = None
        self._flow()

    def _flow(self) -> None:
        """Read requests only while the client reads its replies, under MAX_IN_FLIGHT."""
        busy = self.peer.handling >= MAX_IN_FLIGHT
        if not self.writable.is_set() or busy or self.leaving:
            self.pause()
        elif self.paused:
            self.resume()
        self._maybe_done()

    def eof_received(self) -> bool:
        # the client has sent everything: what it asked is answered (it may still read,
        # a half-close), except streams, which only ever end with the client
        super().eof_received()
        for task in list(self._streams):
            task.cancel()
        self._maybe_done()
        return True

    def _maybe_done(self) -> None:
        """After a half-close, hang up once every request read has been answered."""
        if (self.at_eof and not self.paused and not self.peer.handling
                and self.transport is not None):
            self.close()

    def _line(self, line: bytes) -> None:
        self.lines += 1
        self.peer.feed_line(line)
        if self.peer.handling >= MAX_IN_FLIGHT:
            self.pause()

    def _eof(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.gone(self)
        self.writable.set()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.peer.close("client disconnected")

    def _garbage(self, line: bytes, why: str) -> None:
        self.server.complaints(f"{self.name}: answered a line that is not JSON-RPC ({why})")

    def _oversize(self, size: int, head: bytes, tail: bytes) -> None:
        self.peer.send_error(None, RpcError(
            jsonrpc.INVALID_REQUEST,
            f"invalid request: {size} bytes is over the {MAX_REQUEST}-byte limit"))

    def _dispatch(self, method: str, params: Any, peer: Peer) -> Any:
        run = self.server.dispatcher.dispatch(self.caller, method, params, self)
        spec = Dispatcher.method(method)
        if spec.endless:
            return self._apart(run, self._streams)
        if spec.streaming:
            return self._apart(run, self._waits)
        return run

    async def _apart(self, run: Any, held: set[asyncio.Task[Any]]) -> Any:
        """A request the upgrade's drain does not wait for, held in `_streams` (a stream
        only ever ends with the client: its half-close cancels it too) or `_waits`."""
        task = asyncio.current_task()
        assert task is not None
        held.add(task)
        try:
            return await run
        finally:
            held.discard(task)

    # corral upgrade's drain --------------------------------------------------------------
    def stop_reading(self) -> None:
        """Read no more requests (the client sends those to the next image)."""
        self.leaving = True
        self.pause()

    @property
    def working(self) -> bool:
        """A request read is being answered that the drain waits for."""
        return self.peer.handling > len(self._streams) + len(self._waits)

    def leave(self, reason: str) -> None:
        """Answer what is still being worked on (UNAVAILABLE: ask again), say the last
        request read (GOING_AWAY), and hang up once that is written."""
        if self.transport is None or self.transport.is_closing():
            return
        ended = self.peer.answer_unfinished(RpcError(
            jsonrpc.UNAVAILABLE, f"the corral daemon is {reason}: it ended this call "
            "unfinished; what it did stands (a task it submitted runs on: see `corral "
            "tasks`), ask again", {"going_away": True}))
        if ended:
            log.info("%s: %d requests answered unfinished for the upgrade", self.name, ended)
        self.peer.notify(GOING_AWAY, {"last_id": self.peer.last_id, "reason": reason})
        self.close()

    def notify(self, method: str, params: Any) -> None:
        self.peer.notify(method, params)


Report = Callable[[str, str], None]  # (text, stream): into the daemon's log


class ControlServer:
    def __init__(self, dispatcher: Dispatcher[Any], report: Report, path: Path,
                 group: str | None, *, max_connections: int = 1000,
                 idle_timeout: float = 60.0) -> None:
        self.dispatcher = dispatcher
        self.report = report
        self.path = path
        self.group = group
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.complaints = Throttle(self._complain)
        self.group_gid: int | None = None
        if group is not None:
            try:
                self.group_gid = grp.getgrnam(group).gr_gid
            except KeyError:
                log.warning("control socket group %s does not exist; ignoring it", group)
        self.connections: set[Connection] = set()
        # a Unix group's members are the callers of a tenant (gid -> tenant)
        self.tenant_groups: dict[int, str] = {}
        self._server: asyncio.AbstractServer | None = None
        self._lock_fd = -1
        # the listening socket during the upgrade's drain: connections wait in its backlog
        self._listener_copy: socket.socket | None = None
        self._leaving: set[Connection] = set()
        self._left: asyncio.Event | None = None
        # sockets whose peers are judged as this one's (localgateway.py): the same mode
        # and group
        self.shared: list[Path] = []

    def _complain(self, text: str) -> None:
        log.warning("%s", text, extra=ALSO_STREAMED)
        self.report(text, "event")

    def set_tenant_groups(self, groups: dict[int, str]) -> None:
        self.tenant_groups = dict(groups)
        if self._server is not None:
            self._open_to_tenants()

    def _open_to_tenants(self) -> None:
        """With tenants' groups, the socket is open to every local user (0666), as one
        file has one group: each peer is then judged by its credentials at connect."""
        for path in (self.path, *self.shared):
            with contextlib.suppress(OSError):
                os.chmod(path, 0o666 if self.tenant_groups else 0o660)

    def share(self, path: Path) -> None:
        """`path`, a socket whose peers are judged as this one's, given its mode and
        group, now and at each change of the tenants' groups."""
        self.shared.append(path)
        self._open_to_tenants()
        if self.group_gid is not None:
            with contextlib.suppress(PermissionError):
                os.chown(path, -1, self.group_gid)

    def tenant_of(self, uid: int, gid: int) -> str | None:
        """The tenant a peer calls as: the one whose group it is in. Root and the daemon's
        uid are operators; a peer in the groups of two tenants is refused."""
        if uid in (0, os.geteuid()) or not self.tenant_groups:
            return None
        found = {t for g, t in self.tenant_groups.items() if g in self._groups(uid, gid)}
        if len(found) > 1:
            raise RpcError(jsonrpc.UNAUTHORIZED, f"unauthorized: uid {uid} is in the groups "
                                                 f"of tenants {', '.join(sorted(found))}")
        return found.pop() if found else None

    @staticmethod
    def _groups(uid: int, gid: int) -> set[int]:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            return {gid}
        return {gid, *os.getgrouplist(name, gid)}

    def authorized(self, uid: int, gid: int) -> bool:
        if uid in (0, os.geteuid()) or gid == self.group_gid:  # (no user database look-up)
            return True
        if self.group_gid is None and not self.tenant_groups:
            return False
        groups = self._groups(uid, gid)
        return bool(self.tenant_groups.keys() & groups) or self.group_gid in groups

    def fds(self) -> tuple[int, int]:
        """The listening socket's fd and the lock file's, handed over by corral upgrade."""
        if self._listener_copy is not None:
            return self._listener_copy.fileno(), self._lock_fd
        assert self._server is not None
        return cast(asyncio.Server, self._server).sockets[0].fileno(), self._lock_fd

    async def go_away(self, reason: str) -> int:
        """corral upgrade's drain: no connection accepted (they wait in the backlog of the
        socket handed to the next image), no request read; those read are answered (still
        worked on after DRAIN_WAIT, and streams: UNAVAILABLE), then each client is told the
        last request read (GOING_AWAY) and cut. How many connections were told."""
        if self._server is None or self._listener_copy is not None:
            return 0
        listen = cast(asyncio.Server, self._server).sockets[0]
        self._listener_copy = socket.socket(fileno=os.dup(listen.fileno()))
        self._server.close()  # (its fd: the dup keeps the socket and its backlog)
        self._server = None
        conns = list(self.connections)
        for conn in conns:
            conn.stop_reading()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_WAIT
        while (busy := [c for c in conns if c.working]) and loop.time() < deadline:
            await any_set([c.peer.ends() for c in busy], deadline - loop.time())
        self._leaving = set(self.connections)
        self._left = asyncio.Event()
        for conn in list(self._leaving):
            conn.leave(reason)
        if self._leaving:
            with contextlib.suppress(TimeoutError):
                await within(self._left.wait(), LEAVE_WAIT)
        for conn in list(self._leaving):  # its client reads nothing: cut
            conn.disconnect(f"its last answers were not read within {LEAVE_WAIT:g} s of "
                            "the upgrade's drain")
        return len(conns)

    def gone(self, conn: Connection) -> None:
        self._leaving.discard(conn)
        if not self._leaving and self._left is not None:
            self._left.set()

    async def come_back(self) -> None:
        """The upgrade did not happen: accept connections again."""
        kept, self._listener_copy = self._listener_copy, None
        if kept is None:
            return
        self._left = None
        await self._listen(sock=kept)

    async def _listen(self, **where: Any) -> None:
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: Connection(self), backlog=128, **where)

    async def start(self, inherited: tuple[int, int] | None = None) -> None:
        """Bind the socket, or serve `inherited` (listening fd, locked lock file's fd)."""
        if inherited is not None:
            listen_fd, self._lock_fd = inherited
            os.set_inheritable(self._lock_fd, False)
            os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
            sock = socket.socket(fileno=listen_fd)
            sock.set_inheritable(False)
            await self._listen(sock=sock)
            return
        # a directory of our own (made here, or systemd's RuntimeDirectory) may be opened to
        # the group; a shared one (/tmp) is never touched
        own_dir = not self.path.parent.exists() or self.path.parent == runtime_directory()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # beside a socket in a shared directory (/tmp) too: a link there is refused
        self._lock_fd = open_file(self.path.with_name(self.path.name + ".lock"),
                                  os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip()
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise AlreadyRunning(
                f"another corral daemon (pid {holder or '?'}) is running on {self.path}"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        # we hold the lock, so a socket file here is stale: its daemon is gone
        self.path.unlink(missing_ok=True)
        old_umask = os.umask(0o117)  # the socket is born 0660, never briefly wider
        try:
            await self._listen(path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o660)
        if self.tenant_groups:
            self._open_to_tenants()
        if self.group_gid is not None:
            with contextlib.suppress(PermissionError):
                os.chown(self.path, -1, self.group_gid)
                if own_dir:  # members must be able to reach the socket: root:GROUP 0750
                    os.chown(self.path.parent, -1, self.group_gid)
                    os.chmod(self.path.parent, 0o750)

    async def close(self) -> None:
        self.complaints.flush()
        if self._listener_copy is not None:  # (stopped during an upgrade's drain)
            self._listener_copy.close()
            self._listener_copy = None
            self.path.unlink(missing_ok=True)
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                conn.close()
            with contextlib.suppress(Exception):
                await within(self._server.wait_closed(), 2)
            self._server = None
            self.path.unlink(missing_ok=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
