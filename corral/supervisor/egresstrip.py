"""corral's control socket as an egress sandbox sees it (issue 88): a connect to it is
the boundary's refusal, recorded and answered in words.

A unix socket's connect that the sandbox refuses (the path is not in its mount namespace)
gives the kernel's errno and no notice to anyone: nothing of corral learns of it. The one
unix socket an agent has a reason to try is corral's own, at the path its config and
`corral` name; so an egress sandbox has, bound at that path, a listener of the daemon's
for its replica alone (`SOCKET.trip/LABEL` on the host, made as the replica starts). A
connect to it is accepted, recorded as `BoundaryRefusals.refused` of kind `connect` to
`unix:PATH`, answered with one JSON-RPC error line naming corral's boundary (the text a
corral client shows as its error) and closed: nothing is read from it. A peer of another
uid than the replica's (a local user who found the host's path) is closed unrecorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable

import msgspec

from .opentrip import GUARDED, Decoy, OpenWatch
from .refusals import BoundaryRefusals
from .sandbox import out_of_reach

PATH_MAX = 107  # a unix socket's path, less its NUL
# an MCP server's replica's key here and in egressdoors.py: an agent may have its name
# (`box#0` each), and the second to start had closed the first's listeners
SERVER_KEY = "mcp:"
UCRED = struct.Struct("3i")  # pid, uid, gid (SO_PEERCRED)
REFUSED_CODE = -32001


def named(key: str) -> str:
    """Whose a replica's key is, as its refusals name it: its agent's or server's name."""
    return key.removeprefix(SERVER_KEY).partition("#")[0]


def refusal_line(agent: str, target: str) -> bytes:
    """What the agent reads on connecting: why, in words, as a JSON-RPC error."""
    return msgspec.json.encode({"jsonrpc": "2.0", "id": None, "error": {
        "code": REFUSED_CODE,
        "message": f"refused by corral's boundary: {agent}'s egress does not reach "
                   f"unix:{target} (corral's control socket); this attempt is recorded "
                   "(boundary.refused)"}}) + b"\n"


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    try:
        uid: int = UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                UCRED.size))[1]
    except (OSError, AttributeError):
        return None
    return uid


def _made_own(directory: str) -> bool:
    """`directory` made, or there already as a directory of this process's uid (not a
    link: one a local user planted beside a control socket in a directory others write
    would have had its target's mode changed by root), passable and not listed."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o711)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return False
        os.fchmod(fd, 0o711)
    finally:
        os.close(fd)
    return True


class _Trip:
    """One replica's: its listener, the uid it hears and whose task it says, and what
    its sandbox binds (path inside -> the host's: the socket, the decoys)."""

    __slots__ = ("binds", "decoys", "server", "task_of", "uid")

    def __init__(self, server: asyncio.AbstractServer, uid: int,
                 task_of: Callable[[], str | None], binds: dict[str, str]) -> None:
        self.server, self.uid, self.task_of, self.binds = server, uid, task_of, binds
        self.decoys: list[Decoy] = []


class Trips:
    """The replicas' trips, by label: a listener at the control socket's path, and the
    decoys of the files no agent reads (opentrip.py) where fanotify can watch them."""

    def __init__(self, refusals: BoundaryRefusals | None) -> None:
        self.refusals = refusals
        self.trips: dict[str, _Trip] = {}
        self._opens: OpenWatch | None = None
        self.opens_refused: str | None = None  # why no decoys (asked once)

    async def open(self, label: str, control: str | None, uid: int | None,
                   gid: int | None, task_of: Callable[[], str | None]) -> dict[str, str]:
        """What to bind in replica `label`'s sandbox, run as `uid`/`gid` (None: the
        daemon's): a path inside -> the host's (at `control`, the control socket's path,
        its listener; at each of GUARDED, its decoy); none where there is none to be had
        (no control socket, a path past a unix socket's length, a directory not made,
        one the replica's user cannot reach: bwrap binds as that user, and a source it
        cannot reach would fail the start)."""
        uid = os.geteuid() if uid is None else uid
        gid = os.getegid() if gid is None else gid
        kept = self.trips.get(label)
        if kept is not None and (kept.uid, kept.task_of) == (uid, task_of):
            return kept.binds
        if control is None:
            return {}
        directory = f"{control}.trip"
        path = os.path.join(directory, label)
        if len(os.fsencode(path)) > PATH_MAX or self.refusals is None or \
                out_of_reach(os.path.dirname(control), uid, gid) is not None:
            return {}
        self.forget(label)  # (one made for another user or replica: made again)
        agent = named(label)
        refusals = self.refusals

        async def tripped(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if _peer_uid(writer) == uid:
                    refusals.refused(agent, "connect", f"unix:{control}", task=task_of())
                    writer.write(refusal_line(agent, control))
                    with contextlib.suppress(OSError):
                        await writer.drain()
            finally:
                writer.close()

        try:
            if not _made_own(directory):
                return {}
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # (a daemon's before this one, killed)
            server = await asyncio.start_unix_server(tripped, path=path)
            os.chmod(path, 0o666)  # any uid connects; the replica's alone is heard
        except OSError:
            return {}
        trip = self.trips[label] = _Trip(server, uid, task_of, {control: path})
        self._decoys(trip, path, agent)
        return trip.binds

    def _decoys(self, trip: _Trip, path: str, agent: str) -> None:
        """The trip's decoys made and watched, where fanotify can be had."""
        watch = self._watch()
        if watch is None:
            return
        for target in GUARDED:
            decoy = Decoy(f"{path}.{os.path.basename(target)}", agent, trip.uid, target,
                          trip.task_of)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(decoy.path)
                os.close(os.open(decoy.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY |
                                 os.O_NOFOLLOW | os.O_CLOEXEC, 0o444))
                watch.mark(decoy)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(decoy.path)
                continue
            trip.decoys.append(decoy)
            trip.binds[target] = decoy.path

    def _watch(self) -> OpenWatch | None:
        if self._opens is None and self.opens_refused is None:
            try:
                self._opens = OpenWatch(self._opened)
            except OSError as exc:
                self.opens_refused = str(exc)
        return self._opens

    def _opened(self, decoy: Decoy) -> None:
        if self.refusals is not None:
            self.refusals.refused(decoy.agent, "open", decoy.target, task=decoy.task_of())

    def forget(self, label: str) -> None:
        trip = self.trips.pop(label, None)
        if trip is None:
            return
        trip.server.close()
        if self._opens is not None:  # (by path: before the path goes)
            for decoy in trip.decoys:
                self._opens.unmark(decoy)
        for path in trip.binds.values():
            with contextlib.suppress(OSError):
                os.unlink(path)

    def close(self) -> None:
        for label in list(self.trips):
            self.forget(label)
        if self._opens is not None:
            self._opens.close()
            self._opens = None
