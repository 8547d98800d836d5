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
from pathlib import Path

import msgspec

from .refusals import BoundaryRefusals
from .sandbox import out_of_reach

PATH_MAX = 107  # a unix socket's path, less its NUL
UCRED = struct.Struct("3i")  # pid, uid, gid (SO_PEERCRED)
REFUSED_CODE = -32001


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


class Trips:
    """The replicas' listeners at the control socket's path, by label."""

    def __init__(self, refusals: BoundaryRefusals | None) -> None:
        self.refusals = refusals
        # by label: its listener, its host path, the uid it hears, whose task it says
        self.trips: dict[str, tuple[asyncio.AbstractServer, str, int,
                                    Callable[[], str | None]]] = {}

    async def open(self, label: str, control: str | None, uid: int | None,
                   gid: int | None, task_of: Callable[[], str | None]) -> str | None:
        """The host path to bind at `control` (the control socket's path) in replica
        `label`'s sandbox, run as `uid`/`gid` (None: the daemon's); None where there is
        none to be had (no control socket, a path past a unix socket's length, a
        directory not made, one the replica's user cannot reach: bwrap binds as that
        user, and a source it cannot reach would fail the start)."""
        uid = os.geteuid() if uid is None else uid
        gid = os.getegid() if gid is None else gid
        kept = self.trips.get(label)
        if kept is not None and kept[2:] == (uid, task_of):
            return kept[1]
        if control is None:
            return None
        directory = f"{control}.trip"
        path = os.path.join(directory, label)
        if len(os.fsencode(path)) > PATH_MAX or self.refusals is None or \
                out_of_reach(Path(control).parent, uid, gid) is not None:
            return None
        self.forget(label)  # (one made for another user or replica: made again)
        agent = label.partition("#")[0]
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
                return None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # (a daemon's before this one, killed)
            server = await asyncio.start_unix_server(tripped, path=path)
            os.chmod(path, 0o666)  # any uid connects; the replica's alone is heard
        except OSError:
            return None
        self.trips[label] = (server, path, uid, task_of)
        return path

    def forget(self, label: str) -> None:
        kept = self.trips.pop(label, None)
        if kept is not None:
            kept[0].close()
            with contextlib.suppress(OSError):
                os.unlink(kept[1])

    def close(self) -> None:
        for label in list(self.trips):
            self.forget(label)
