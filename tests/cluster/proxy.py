"""A TCP proxy the test controls, between one node and Redis: `cut()` drops every
connection through it and refuses new ones (a node cut off from Redis while the others
still reach it), `reset()` with a reset (RST) rather than a close; `restore()` lets
connections through again; `watch()` tells when the node sends a command (what it does,
seen on the wire: no hook in the node for the test); `hold()` keeps Redis's answers to the
node back for a while after it sends a command (a command that ran, its answer late, as on
a loaded host); `gate()` keeps one command back on its way to Redis, or its answers on
their way back, until the test opens it (or for a time: a write late to Redis). Between a
primary and its replica, `stall()` stops the replication stream at a given write: the
primary took it and what follows, the replica never has them."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Gate:
    """The next command holding every one of `parts`, held at the proxy: on its way to
    Redis, or (`answers`) run at once and its answers held on their way back; `reached`
    once it is held there, which lasts until `opened` or `most` seconds."""

    parts: tuple[bytes, ...]
    answers: bool
    most: float
    reached: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)

    def hold(self) -> None:
        self.reached.set()
        self.opened.wait(self.most)


class Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.closed = threading.Event()
        self.resetting = threading.Event()
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.watches: list[tuple[tuple[bytes, ...], threading.Event]] = []
        self.holds: list[tuple[tuple[bytes, ...], float]] = []
        self.stalls: list[tuple[bytes, ...]] = []
        self.gates: list[Gate] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, server]
            held = [0.0]  # until when (monotonic) the server's answers wait (inf: never sent)
            armed: list[Gate] = []  # the gate the next answers on it wait at
            for a, b, seen in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(a, b, seen, held, armed),
                                 daemon=True).start()

    def watch(self, *parts: bytes) -> threading.Event:
        """Set once the node sends a command holding every one of `parts` (a RESP
        command is its words in order: `parts` are matched within what one send and
        the 4 KiB before it hold)."""
        event = threading.Event()
        with self.lock:
            self.watches.append((parts, event))
        return event

    def hold(self, seconds: float, *parts: bytes) -> None:
        """Once: the next command holding every one of `parts` goes to Redis at once, and
        Redis's answers on that connection reach the node `seconds` later."""
        with self.lock:
            self.holds.append((parts, seconds))

    def gate(self, *parts: bytes, answers: bool = True, most: float = 30.0) -> Gate:
        """Once: the next command holding every one of `parts` (within one send) is held
        on its way to Redis, or, with `answers`, sent at once and Redis's answers on that
        connection held, until the gate is opened or `most` seconds have passed."""
        g = Gate(parts, answers, most)
        with self.lock:
            self.gates.append(g)
        return g

    def stall(self, *parts: bytes) -> None:
        """Once: from the first of Redis's answers holding every one of `parts`, nothing
        more of Redis reaches the client on that connection (a replica following the
        primary through the proxy: the stream cut at that write, the link still up)."""
        with self.lock:
            self.stalls.append(parts)

    def _pump(self, src: socket.socket, dst: socket.socket, seen: bool,
              held: list[float], armed: list[Gate]) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if seen and self.gates:
                    with self.lock:  # (armed before the command goes: its answer cannot pass)
                        g = next((g for g in self.gates if all(p in data for p in g.parts)),
                                 None)
                        if g is not None:
                            self.gates.remove(g)
                            if g.answers:
                                armed.append(g)
                    if g is not None and not g.answers:
                        g.hold()
                elif not seen and armed:
                    with self.lock:
                        g = armed.pop() if armed else None
                    if g is not None:
                        g.hold()
                if seen and (self.watches or self.holds):
                    tail = (tail + data)[-(len(data) + 4096):]
                    with self.lock:
                        for parts, event in self.watches:
                            if all(part in tail for part in parts):
                                event.set()
                        for hold in list(self.holds):
                            if all(part in data for part in hold[0]):
                                self.holds.remove(hold)
                                held[0] = time.monotonic() + hold[1]
                elif not seen and self.stalls:
                    tail = (tail + data)[-(len(data) + 4096):]
                    with self.lock:
                        for parts in list(self.stalls):
                            if all(part in tail for part in parts):
                                self.stalls.remove(parts)
                                held[0] = float("inf")
                if not seen and held[0] == float("inf"):
                    continue
                if not seen and (wait := held[0] - time.monotonic()) > 0:
                    time.sleep(wait)
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                if self.resetting.is_set():
                    s.close()
                else:
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off.set()
        with self.lock:
            conns, self.open = self.open, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def reset(self) -> None:
        """`cut()`, each connection reset (RST) rather than closed: as the kernel ends a
        killed Redis's connections whose bytes it had yet to read."""
        self.cut_off.set()
        self.resetting.set()
        with self.lock:
            conns, self.open = self.open, []
        # each socket's pump woken by a shutdown of its reading end alone (which sends
        # nothing; a close would wait for its blocked recv), and its close then a reset
        for s in conns:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RD)

    def restore(self) -> None:
        self.cut_off.clear()
        self.resetting.clear()

    def close(self) -> None:
        self.closed.set()
        self.cut()
        # a close alone does not wake the accept() blocked in the thread (Linux): the
        # join then waited its whole 5 s; a shutdown of the listener ends the accept
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the proxy's accept thread did not end"
