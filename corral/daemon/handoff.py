"""The state file one daemon image hands the next across `corral upgrade`'s exec: what
the fds kept open are, what they hold, and how to go back to the image that wrote it.

msgspec JSON in the state directory, mode 0600, written just before the exec (not
fsynced: the same kernel reads it a moment later, and a crash meanwhile leaves no process
to hand over) and removed by the image that takes it once its set-up is over; its path
rides the environment (`CORRAL_HANDOFF`)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from ..cluster.handover import NodeHanded
from ..statefiles import open_file
from ..supervisor.adopt import HandedProcess

# the layout of this file: an image that reads another refuses the handoff (the old one
# then goes on, and says so). 2: MCP servers' sessions, listening sockets, subscriptions;
# 3: plain programs, idle replicas, the task counters; 4: a cluster node's incarnation and
# claims; 5: no processes to end (the next image finds them by their records, as a crash's);
# 6: a handed process named by its record's token (its pid and start time the store's);
# 7: no incarnation nor start (the store's row of this process, the process's own start);
# 8: a handed process's start its record's, its program and its parent unsaid (waitpid
# tells whose child it is; its program named only a failed exec's status 127); 9: an
# agent's gateway token (its digest) and what its calls of no task read; 10: no counts, no
# idleness, no health (they start again as after a restart: decision 2080); 11: a cluster
# claim its id, fence and run alone (its task is its record in Redis: decision 2210); 12:
# a node's name and consumer unsaid (the config's name, and its incarnation's consumer)
HANDOFF_VERSION = 12
VARIABLE = "CORRAL_HANDOFF"
FAILED_VARIABLE = "CORRAL_UPGRADE_FAILED"
NAME = "upgrade-handoff.json"


class Fallback(msgspec.Struct, frozen=True):
    """How the image that wrote the file is started again: its interpreter and its
    environment (a new install's failure to start goes back to the old one)."""

    python: str
    env: dict[str, str]
    boot: str  # the program it runs (upgrade.BOOT of that image)


# a server's drain: the fd of its listening socket it keeps open, and what serves on
# it again
Drain = Callable[[], Awaitable[tuple[int, Callable[[], Awaitable[None]]]]]


class Listener(msgspec.Struct, frozen=True):
    """A listening socket held open across the exec: whose ("http", "gateway"), the
    address it was bound for (the config's `listen`), its fd."""

    name: str
    listen: str
    fd: int


class ResourceSubscription(msgspec.Struct, frozen=True):
    """An agent's resource subscription on a kept MCP server (the server holds it)."""

    server: str
    uri: str
    subscriber: str  # the agent replica's label


class Listeners:
    """The listening sockets of the daemon's HTTP server and gateway: told by them as
    they serve (`serving`) and stop (`gone`), so that an upgrade holds them open across
    its exec; in the image that took a handoff, the sockets it inherited, taken by the
    server started for the same address (`take`) instead of binding one: a client that
    connects meanwhile waits in the socket's backlog, never refused."""

    def __init__(self, inherited: list[Listener] | None = None) -> None:
        self._inherited = {i.name: i for i in inherited or []}
        self._serving: dict[str, Listener] = {}
        # each server's drain (corral upgrade): it stops accepting and closes its
        # connections once their requests are answered; the fd it keeps, and how it
        # serves again if nothing is handed over
        self._drains: dict[str, Drain] = {}
        # each drained server's way back to accepting, by its name
        self._backs: dict[str, Callable[[], Awaitable[None]]] = {}

    def take(self, name: str, listen: str) -> socket.socket | None:
        """The socket inherited for `name` if it was bound for `listen` (the config may
        have changed it: then a new one is bound, and the old closed by `close_unused`)."""
        i = self._inherited.get(name)
        if i is None or i.listen != listen:
            return None
        del self._inherited[name]
        sock = socket.socket(fileno=i.fd)
        sock.set_inheritable(False)
        sock.setblocking(False)
        return sock

    def close_unused(self) -> None:
        for i in self._inherited.values():
            with contextlib.suppress(OSError):
                os.close(i.fd)
        self._inherited.clear()

    def serving(self, name: str, listen: str, fd: int, drain: Drain) -> None:
        self._serving[name] = Listener(name, listen, fd)
        self._drains[name] = drain

    def gone(self, name: str) -> None:
        self._serving.pop(name, None)
        self._drains.pop(name, None)

    async def go_away(self) -> None:
        """corral upgrade's drain of every server: no connection accepted (its socket
        kept open: they wait in its backlog for the next image), each open one closed,
        at once if idle, else once its request in flight is answered."""
        drains = [(name, drain) for name, drain in self._drains.items()
                  if name in self._serving]
        for name, go in drains:
            fd, back = await go()
            self._serving[name] = Listener(name, self._serving[name].listen, fd)
            self._backs[name] = back

    async def come_back(self) -> None:
        """Nothing was handed over: every drained server accepts again."""
        backs, self._backs = self._backs, {}
        for back in backs.values():
            await back()

    def held(self) -> list[Listener]:
        """What the exec keeps open."""
        return list(self._serving.values())


class Handoff(msgspec.Struct, frozen=True):
    attempt: int  # the upgrade's number in the daemon process's life
    from_version: str
    asked_at: float  # wall time the upgrade was asked for
    config: str
    socket: str | None  # --socket, if it was given
    control: tuple[int, int]  # the control socket's listening fd, its lock file's fd
    issued: int  # spawn tokens the incarnation issued so far
    fallback: Fallback
    processes: list[HandedProcess] = []
    listeners: list[Listener] = []
    # the gateway's address the agents were given (its URL, its unix socket): the next
    # image gives it on before its HTTP parts start (they start after the adoptions)
    gateway: tuple[str, str | None] = ("", None)
    subscriptions: list[ResourceSubscription] = []
    cluster: NodeHanded | None = None  # a cluster node's (cluster/handover.py)
    version: int = HANDOFF_VERSION


def write(path: Path, h: Handoff) -> None:
    # refused if a link is in its place: the daemon (root) would write through it
    with os.fdopen(open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(msgspec.json.encode(h))


def read(path: Path) -> Handoff:
    """The file, or ValueError naming what is wrong with it (another layout's)."""
    raw = path.read_bytes()
    try:
        version = msgspec.json.decode(raw, type=dict[str, object]).get("version")
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path}: not a handoff file: {exc}") from None
    if version != HANDOFF_VERSION:
        raise ValueError(f"{path}: handoff version {version}, this corral reads "
                         f"{HANDOFF_VERSION}")
    try:
        return msgspec.json.decode(raw, type=Handoff)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path}: {exc}") from None
