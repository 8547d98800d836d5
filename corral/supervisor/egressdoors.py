"""egress = "gateways" as root (docs/sandbox.md#egress): a network namespace per replica,
made and held by the daemon (kept across restarts), with its listener at the gateways'
address passing connections on to their unix socket.

A spawn into it (`spawning_in`) is forked by the daemon's main thread, moved into the
namespace for the fork and back with nothing else run meanwhile: the process inherits the
namespace of the thread that forks it, and its sandbox's `--die-with-parent` that thread's
life."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import resource
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

from .egresstrip import Trips, named
from .egresswatch import Watch, listen_here
from .refusals import BoundaryRefusals

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH14x"
IP_FREEBIND = 15
BUFFER = 65536
# connections an agent's doors hold at once (each two of the daemon's fds: 9,000 of them
# held took it to 19,999 of its 20,000); past it a connection is reset and recorded
MAX_HELD = 256
# fds the doors together leave to the daemon's own work, whatever the agents hold
RESERVE_FDS = 1024


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _checked(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _on_a_thread(fn: Callable[[], T]) -> T:
    """`fn` on a thread made for it (its namespace is its own to change), its result."""
    out: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # raised again on the caller's thread
            failed.append(exc)

    t = threading.Thread(target=run, name="corral-netns")
    t.start()
    t.join()
    if failed:
        raise failed[0]
    return out[0]


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0))
        flags = struct.unpack(IFREQ, got)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def made(addresses: Sequence[tuple[str, int]], within: str | None = None
         ) -> tuple[int, list[socket.socket], socket.socket | None]:
    """A new network namespace (its fd) with its loopback up, every address in it local,
    a listener at each of `addresses` and the packet socket that sees what it refuses
    (egresswatch.py; None where it cannot be had); `within`: the namespace at that path
    instead (a process's, kept across an upgrade). OSError where this process may not
    make one (not root)."""
    def make() -> tuple[int, list[socket.socket], socket.socket | None]:
        libc = _libc()
        if within is None:
            _checked(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        else:
            ns = os.open(within, os.O_RDONLY | os.O_CLOEXEC)
        listeners: list[socket.socket] = []
        try:
            if within is None:
                _loopback_up()
            else:
                _checked(libc.setns(ns, CLONE_NEWNET), "setns(CLONE_NEWNET)")
            try:
                packets: socket.socket | None = listen_here()
            except OSError:
                packets = None  # (its refusals unseen: the boundary holds all the same)
            for host, port in addresses:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                listener = socket.socket(family, socket.SOCK_STREAM)
                listeners.append(listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # an address off the host: local by the route listen_here made
                listener.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                listener.bind((host, port))
                listener.listen(128)
                listener.setblocking(False)
        except BaseException:
            for listener in listeners:
                listener.close()
            os.close(ns)
            raise
        return ns, listeners, packets

    return _on_a_thread(make)


def spawning_in(ns: int, fn: Callable[[], T]) -> T:
    """`fn` (a fork/exec) run on the calling thread moved into namespace `ns` and back:
    what it starts is in it. The caller is the daemon's main thread, which lives through
    an upgrade's exec: `--die-with-parent` is tied to the forking thread, and a thread made
    for one fork ended at once and SIGKILLed the sandbox."""
    libc = _libc()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _checked(libc.setns(ns, CLONE_NEWNET), "setns(CLONE_NEWNET)")
        try:
            return fn()
        finally:
            _checked(libc.setns(home, CLONE_NEWNET), "setns(CLONE_NEWNET) back")
    finally:
        os.close(home)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


class Door:
    """One replica's namespace and the daemon's listeners in it, passing connections on
    (to the gateways' unix socket, or to the addresses an MCP server may reach)."""

    def __init__(self, ns: int, servers: Sequence[asyncio.AbstractServer], key: object,
                 watch: Watch | None) -> None:
        self.ns, self.servers, self.key, self.watch = ns, servers, key, watch

    def close(self) -> None:
        for server in self.servers:
            server.close()
        if self.watch is not None:
            self.watch.close()
        os.close(self.ns)


def no_task() -> str | None:
    return None


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class HoldQuota:
    """The connections the doors hold, by agent: MAX_HELD an agent, and all of them
    within the daemon's fds but RESERVE_FDS (two fds each)."""

    def __init__(self, per_agent: int = MAX_HELD) -> None:
        self.per_agent = per_agent
        fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.most = max(0, fds - RESERVE_FDS) // 2 if fds != resource.RLIM_INFINITY \
            else 1 << 30
        self.by_agent: dict[str, int] = {}
        self.total = 0

    def take(self, agent: str) -> str | None:
        """None: held; else why not."""
        held = self.by_agent.get(agent, 0)
        if held >= self.per_agent:
            return f"over {self.per_agent} connections held by the agent"
        if self.total >= self.most:
            return f"over {self.most} connections held by the agents (the daemon's fds)"
        self.by_agent[agent], self.total = held + 1, self.total + 1
        return None

    def give(self, agent: str) -> None:
        left = self.by_agent[agent] - 1
        if left:
            self.by_agent[agent] = left
        else:
            del self.by_agent[agent]
        self.total -= 1


def http_refusal(agent: str, at: tuple[str, int], why: str) -> bytes:
    """What an agent's HTTP client reads from a gateways' door that refused its
    connection: a 503 whose body names corral's boundary and why."""
    body = (f"refused by corral's boundary: agent {agent}'s connection to corral's "
            f"gateways at {at[0]}:{at[1]} ({why}); this attempt is recorded "
            "(boundary.refused)\n").encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8"
            b"\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode() +
            b"\r\n\r\n" + body)


def _passing_to(connect: Connect, agent: str, at: tuple[str, int], held: HoldQuota,
                refusals: BoundaryRefusals | None, task_of: Callable[[], str | None],
                http: bool) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                        Awaitable[None]]:
    """`http`: what it passes on to speaks HTTP (the gateways), so a refusal is said
    in an answer; else (an MCP server's `egress_allow`: any protocol) the connection is
    closed with nothing said."""
    async def passed_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        why = held.take(agent)
        if why is not None:
            if http:  # (nothing read: the answer written, the connection closed at once)
                writer.write(http_refusal(agent, at, why))
            writer.close()  # its fd given back
            if refusals is not None:
                refusals.refused(agent, "connect", f"{at[0]}:{at[1]} ({why})",
                                 task=task_of())
            return
        try:
            try:
                up_reader, up_writer = await connect()
            except OSError:
                writer.close()  # the agent sees its connection reset
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
                writer.close()
        finally:
            held.give(agent)

    return passed_on


class Doors:
    def __init__(self, refusals: BoundaryRefusals | None = None) -> None:
        self.refusals = refusals  # where what a namespace refused is told (egresswatch.py)
        self.doors: dict[str, Door] = {}
        self.held = HoldQuota()
        self.refused: str | None = None  # why this process makes none (asked once)
        # the control socket's path in each egress sandbox (as root or not)
        self.trips = Trips(refusals)

    async def open(self, label: str, url: str, gateways: str, within: str | None = None,
                   task_of: Callable[[], str | None] = no_task) -> int | None:
        """The namespace replica `label`'s sandbox runs in, its listener at `url`'s
        address passing on to `gateways`; None where this process may not make one.
        `within`: the namespace a process kept across `corral upgrade` runs in (the old
        image's listener went with its exec), given a listener again."""
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            return None
        host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
        return await self._open(label, url, [(host, parts.port)],
                                lambda _: lambda: asyncio.open_unix_connection(gateways),
                                within, task_of, http=True)

    async def open_allowed(self, label: str, allowed: Sequence[tuple[str, int]],
                           task_of: Callable[[], str | None] = no_task) -> int | None:
        """The namespace an MCP server's replica `label` runs in (egress = "none"): a
        listener at each address of `egress_allow`, passing on to that address from the
        daemon's own network, and nothing else; None where this process may not make one."""
        return await self._open(label, tuple(allowed), allowed,
                                lambda at: lambda: asyncio.open_connection(*at), None, task_of,
                                http=False)

    async def _open(self, label: str, key: object, addresses: Sequence[tuple[str, int]],
                    connect: Callable[[tuple[str, int]], Connect], within: str | None,
                    task_of: Callable[[], str | None], *, http: bool) -> int | None:
        door = self.doors.get(label)
        if door is not None and door.key == key and within is None:
            return door.ns
        if door is not None:  # what it passes on to moved (a new address): a new door
            door.close()
            del self.doors[label]
        if self.refused is not None:
            return None
        try:
            ns, listeners, packets = made(addresses, within)
        except OSError as exc:
            if within is None:
                self.refused = str(exc)
            return None
        agent = named(label)
        servers = [await asyncio.start_server(
            _passing_to(connect(at), agent, at, self.held, self.refusals, task_of, http),
            sock=listener) for at, listener in zip(addresses, listeners, strict=True)]
        watch = None
        if packets is not None and self.refusals is not None:
            watch = Watch(packets, self.refusals, agent, task_of)
        elif packets is not None:
            packets.close()
        self.doors[label] = Door(ns, servers, key, watch)
        return ns

    def forget(self, label: str) -> None:
        """Replica `label` is gone for good (its agent removed): its namespace let go."""
        self.trips.forget(label)
        door = self.doors.pop(label, None)
        if door is not None:
            with contextlib.suppress(OSError):
                door.close()

    def close(self) -> None:
        self.trips.close()
        for door in self.doors.values():
            with contextlib.suppress(OSError):
                door.close()
        self.doors.clear()
