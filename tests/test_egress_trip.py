"""corral's control socket's path in an egress sandbox, the replica's trip
(corral/supervisor/egresstrip.py, issue 88): a connect of the replica's uid is recorded and
answered in words; another uid's is closed unrecorded; and what a local user plants where
the trips' directory goes (a link, a directory of its own) is neither followed nor used."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import pytest

from corral.supervisor.egresstrip import Trips, refusal_line
from corral.supervisor.refusals import BoundaryRefusals, BoundaryRefused
from corral.supervisor.stream import Stream

from .daemon_harness import shared_tmpdir

SYSTEM_PY = "/usr/bin/python3"
CONNECT = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(10)\n"
           "s.connect(sys.argv[1])\nsys.stdout.write(s.recv(4096).decode())")


async def connect(path: str, uid: int) -> bytes:
    """What a process of `uid` reads on connecting to `path` (run on a thread: the
    loop meanwhile accepts)."""
    done = await asyncio.to_thread(subprocess.run, [SYSTEM_PY, "-c", CONNECT, path],
                                   user=uid, group=uid, extra_groups=[],
                                   capture_output=True, timeout=30, check=True)
    return done.stdout


def recorder() -> tuple[BoundaryRefusals, list[BoundaryRefused]]:
    stream = Stream()
    said: list[BoundaryRefused] = []
    stream.subscribe(said.append, BoundaryRefused)
    return BoundaryRefusals(stream), said


async def test_a_link_planted_where_the_trips_go_is_not_followed(tmp_path: Path) -> None:
    """The control socket in a directory others write: a link planted at SOCKET.trip
    would have had root change its target's mode and bind a socket in it."""
    refusals, _ = recorder()
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    control = tmp_path / "corral.sock"
    (tmp_path / "corral.sock.trip").symlink_to(target)
    trips = Trips(refusals)
    try:
        assert await trips.open("box#0", str(control), None, None, lambda: "t1") == {}
        assert stat.S_IMODE(target.stat().st_mode) == 0o755
        assert list(target.iterdir()) == []
    finally:
        trips.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="another uid's connect: the test as root")
@pytest.mark.skipif(not os.access(SYSTEM_PY, os.X_OK), reason=f"no {SYSTEM_PY}")
async def test_the_trip_hears_its_replicas_uid_alone_and_no_one_elses_directory() -> None:
    tmp = shared_tmpdir()
    refusals, said = recorder()
    trips = Trips(refusals)
    control = str(tmp / "corral.sock")
    try:
        # a directory of another uid there already: not used
        (tmp / "corral.sock.trip").mkdir()
        os.chown(tmp / "corral.sock.trip", 65534, 65534)
        assert await trips.open("box#0", control, 65534, 65534, lambda: "t1") == {}
        (tmp / "corral.sock.trip").rmdir()
        binds = await trips.open("box#0", control, 65534, 65534, lambda: "t1")
        path = binds[control]
        assert path == f"{control}.trip/box#0"
        # as root, the decoys of /etc/shadow and /etc/gshadow beside it (opentrip.py)
        assert binds == {control: path, "/etc/shadow": f"{path}.shadow",
                         "/etc/gshadow": f"{path}.gshadow"}
        assert stat.S_IMODE(os.stat(f"{control}.trip").st_mode) == 0o711
        # the replica's uid: recorded, and told in words
        out = await connect(path, 65534)
        assert out == refusal_line("box", control)
        assert [(e.agent, e.task, e.kind, e.target) for e in said] == [
            ("box", "t1", "connect", f"unix:{control}")]
        # another uid (here root): closed, nothing said, nothing recorded
        out = await connect(path, 0)
        assert out == b"" and len(said) == 1 and refusals.counts == {("box", "connect"): 1}
    finally:
        trips.close()
        assert not os.path.exists(f"{control}.trip/box#0")
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        tmp.rmdir()
