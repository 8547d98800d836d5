"""The state file one daemon image hands the next across `corral upgrade`'s exec.

msgspec JSON in the state directory, mode 0600, written (and fsynced) just before the
exec and removed by the image that takes it once its set-up is over; its path rides the
environment (`CORRAL_HANDOFF`). It lists what the fds kept open across the exec are (the
control socket, its lock, each kept worker's pipes), the processes kept and their running
tasks (supervisor/adopt.py), the processes the next image ends (MCP servers, zygotes),
what the incarnation is (so its process records go on), and how to go back to the image
that wrote it when the next one cannot start (`fallback`)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from ..supervisor.adopt import HandedProcess
from ..supervisor.containment import ProcessRecord

# the layout of this file: an image that reads another refuses the handoff (the old one
# then goes on, and says so)
HANDOFF_VERSION = 1
VARIABLE = "CORRAL_HANDOFF"
FAILED_VARIABLE = "CORRAL_UPGRADE_FAILED"
NAME = "upgrade-handoff.json"


class Fallback(msgspec.Struct, frozen=True):
    """How the image that wrote the file is started again: its interpreter and its
    environment (a new install's failure to start goes back to the old one)."""

    python: str
    env: dict[str, str]
    boot: str  # the program it runs (upgrade.BOOT of that image)


class Handoff(msgspec.Struct, frozen=True):
    attempt: int  # the upgrade's number in the daemon process's life
    from_version: str
    pid: int
    asked_at: float  # wall time the upgrade was asked for
    started_at: float  # the daemon's start (its uptime goes on)
    config: str
    socket: str | None  # --socket, if it was given
    control: tuple[int, int]  # the control socket's listening fd, its lock file's fd
    owner: str  # the incarnation (containment tokens, process records)
    issued: int  # spawn tokens issued so far
    fallback: Fallback
    processes: list[HandedProcess] = []
    ended: list[ProcessRecord] = []  # not kept: the next image ends them
    version: int = HANDOFF_VERSION


def path_in(state_dir: Path) -> Path:
    return state_dir / NAME


def write(path: Path, h: Handoff) -> None:
    data = msgspec.json.encode(h)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


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
