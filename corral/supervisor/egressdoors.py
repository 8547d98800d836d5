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
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from .egresswatch import Watch, listen_here
from .refusals import BoundaryRefusals

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH14x"
BUFFER = 65536


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


def made(host: str, port: int, within: str | None = None
         ) -> tuple[int, socket.socket, socket.socket | None]:
    """A new network namespace (its fd) with its loopback up, a listener at host:port
    in it and the packet socket that sees what it refuses (egresswatch.py; None where it
    cannot be had); `within`: the namespace at that path instead (a process's, kept
    across an upgrade). OSError where this process may not make one (not root)."""
    def make() -> tuple[int, socket.socket, socket.socket | None]:
        libc = _libc()
        if within is None:
            _checked(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        else:
            ns = os.open(within, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if within is None:
                _loopback_up()
            else:
                _checked(libc.setns(ns, CLONE_NEWNET), "setns(CLONE_NEWNET)")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(128)
            listener.setblocking(False)
        except BaseException:
            os.close(ns)
            raise
        try:
            packets: socket.socket | None = listen_here()
        except OSError:
            packets = None  # (its refusals unseen: the boundary holds all the same)
        return ns, listener, packets

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
    """One replica's namespace and the daemon's listener in it, passing connections on
    to the gateways' unix socket."""

    def __init__(self, ns: int, server: asyncio.AbstractServer, url: str,
                 watch: Watch | None) -> None:
        self.ns, self.server, self.url, self.watch = ns, server, url, watch

    def close(self) -> None:
        self.server.close()
        if self.watch is not None:
            self.watch.close()
        os.close(self.ns)


def no_task() -> str | None:
    return None


class Doors:
    def __init__(self, refusals: BoundaryRefusals | None = None) -> None:
        self.refusals = refusals  # where what a namespace refused is told (egresswatch.py)
        self.doors: dict[str, Door] = {}
        self.refused: str | None = None  # why this process makes none (asked once)

    async def open(self, label: str, url: str, gateways: str, within: str | None = None,
                   task_of: Callable[[], str | None] = no_task) -> int | None:
        """The namespace replica `label`'s sandbox runs in, its listener at `url`'s
        address passing on to `gateways`; None where this process may not make one.
        `within`: the namespace a process kept across `corral upgrade` runs in (the old
        image's listener went with its exec), given a listener again."""
        door = self.doors.get(label)
        if door is not None and door.url == url and within is None:
            return door.ns
        if door is not None:  # the gateways moved (a new address): a new door
            door.close()
            del self.doors[label]
        if self.refused is not None:
            return None
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            return None
        host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
        try:
            ns, listener, packets = made(host, parts.port, within)
        except OSError as exc:
            if within is None:
                self.refused = str(exc)
            return None

        async def passed_on(reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(gateways)
            except OSError:
                writer.close()  # the agent sees its connection reset
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
                writer.close()

        server = await asyncio.start_server(passed_on, sock=listener)
        watch = None
        if packets is not None and self.refusals is not None:
            watch = Watch(packets, self.refusals, label.partition("#")[0], task_of)
        elif packets is not None:
            packets.close()
        self.doors[label] = Door(ns, server, url, watch)
        return ns

    def close(self) -> None:
        for door in self.doors.values():
            with contextlib.suppress(OSError):
                door.close()
        self.doors.clear()
