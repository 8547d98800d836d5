"""An attacker's pass over the process records a daemon is handed (issue 86's pass): the
state database's at a start after a crash (decision 1420 squashed its migrations) and the
upgrade's hand-off's at its settle. A row is the daemon's own writing, yet a database
copied from another host, restored from elsewhere or made may name what corral never
made, and a pid recorded is another process's once its own is reaped. Real processes,
real signals."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from corral.daemon.upgrade import end_processes
from corral.supervisor.containment import CgroupTree, Containment, ProcessRecord, read_stat

from .test_containment import incarnation, record_of, spawn_leftover
from .test_gateway_stdio import wait_until_async


def bystander() -> subprocess.Popen[bytes]:
    """A process of another service: no spawn token of corral's, a session of its own."""
    return subprocess.Popen(["sleep", "1000"], start_new_session=True)


def fake_cgroup(path: Path, pid: int) -> Path:
    """A directory that reads as a cgroup holding `pid`, with an empty child."""
    (path / "child").mkdir(parents=True)
    (path / "cgroup.procs").write_text(f"{pid}\n")
    return path


async def test_a_records_cgroup_outside_corrals_tree_is_neither_stopped_nor_removed(
        tmp_path: Path) -> None:
    # a crashed incarnation's record naming another service's cgroup (here a directory
    # that reads as one): before, its processes were stopped and its empty directories
    # removed, as if corral had made it
    old = incarnation()
    leftover = spawn_leftover(f"{old}.1")
    other = bystander()
    try:
        theirs = fake_cgroup(tmp_path / "system.slice" / "other.service", other.pid)
        tree = tmp_path / "corral"
        tree.mkdir()
        for root in (None, CgroupTree(str(tree))):  # no tree of its own, and one
            c = Containment("off")
            c.tree = root
            report = await c.reclaim([record_of(leftover, f"{old}.1", cgroup=str(theirs))],
                                     [old])
            assert other.poll() is None, "another service's process was stopped"
            assert (theirs / "child").is_dir()
            assert report.cgroups == 0
        assert leftover.wait(5) == -signal.SIGTERM  # its own record still stops it
        # the tree's own leaf (the daemon's) and a path leading out of it by `..` are
        # not corral's either
        for named in (tree / "supervisor", tree / ".." / "system.slice" / "other.service"):
            again = spawn_leftover(f"{old}.2")
            c = Containment("off")
            c.tree = CgroupTree(str(tree))
            await c.reclaim([record_of(again, f"{old}.2", cgroup=str(named))], [old])
            assert again.wait(5) == -signal.SIGTERM
            assert other.poll() is None
            assert (theirs / "child").is_dir()
    finally:
        for p in (leftover, other):
            p.kill()
            p.wait()


async def test_a_records_cgroup_below_corrals_tree_is_stopped_and_removed(
        tmp_path: Path) -> None:
    old = incarnation()
    leftover = spawn_leftover(f"{old}.1")
    tree = tmp_path / "corral"
    mine = tree / "agent-old-0"
    # in the replica's cgroup (the record's process's descendant), leaving it as it ends,
    # as the kernel would take it out
    escapee = subprocess.Popen(["python3", "-c", (
        "import os, signal, sys, time\n"
        "def end(*_):\n"
        f"    open({str(mine / 'cgroup.procs')!r}, 'w').close()\n"
        "    os._exit(128 + signal.SIGTERM)\n"
        "signal.signal(signal.SIGTERM, end)\n"
        "print('up', flush=True)\n"
        "time.sleep(1000)\n")], start_new_session=True, stdout=subprocess.PIPE)
    try:
        assert escapee.stdout is not None and escapee.stdout.readline() == b"up\n"
        fake_cgroup(mine, escapee.pid)
        c = Containment("off")
        c.tree = CgroupTree(str(tree))
        await c.reclaim([record_of(leftover, f"{old}.1", cgroup=str(mine))], [old])
        assert escapee.wait(5) == 128 + signal.SIGTERM
        assert not (mine / "child").exists()
        assert leftover.wait(5) == -signal.SIGTERM
    finally:
        for p in (leftover, escapee):
            p.kill()
            p.wait()
    assert os.path.isdir(tree)


# a containment, the old image's process's record, that process, and the bystander
Handed = tuple[Containment, ProcessRecord, "Popen[bytes]", "Popen[bytes]"]


@pytest.fixture
def handed(tmp_path: Path) -> Iterator[Handed]:
    """The old image's process as its record in the state database names it, that record
    naming another service's cgroup (a bystander's, here a directory that reads as one),
    and a containment whose own tree is elsewhere; both processes killed after."""
    old = incarnation()
    leftover = spawn_leftover(f"{old}.1")
    other = bystander()
    try:
        theirs = fake_cgroup(tmp_path / "system.slice" / "other.service", other.pid)
        tree = tmp_path / "corral"
        tree.mkdir()
        c = Containment("off")
        c.tree = CgroupTree(str(tree))
        yield c, record_of(leftover, f"{old}.1", cgroup=str(theirs)), leftover, other
    finally:
        for p in (leftover, other):
            p.kill()
            p.wait()


def alive(other: Popen[bytes]) -> None:
    """A SIGKILL sent is pending by now: a killed process is gone well within the wait."""
    with pytest.raises(subprocess.TimeoutExpired):
        other.wait(1)


async def test_a_handed_records_cgroup_outside_corrals_tree_is_not_killed_at_its_end(
        handed: Handed) -> None:
    # the upgrade's new image tracks the old one's processes by their records in the
    # state database (adopted) and ends those no replica took: before, a record's
    # cgroup of another service had every process in it killed at that end
    c, rec, _, other = handed
    c.adopted(rec)
    assert c.cgroup_of(rec.token) is None
    c.ended(rec.token)
    alive(other)


async def test_the_upgrades_end_of_a_kept_record_kills_no_cgroup_outside_corrals_tree(
        handed: Handed) -> None:
    # the upgrade's settle ends the old image's processes no replica took, each by its
    # record in the state database: before, its own end killed whatever the record's
    # cgroup held, another service's too
    c, rec, leftover, other = handed
    await end_processes([rec], c)
    assert leftover.wait(5) is not None
    alive(other)


async def test_the_upgrades_end_of_a_record_whose_pid_is_reused_reaps_no_child_of_another(
        ) -> None:
    # the upgrade's settle ends the old image's processes no replica took; a record's
    # process gone and its pid now a child of the new image's (a replica started since,
    # ended, not yet reaped by its own waiter): before, waitpid took that child's exit
    # status from it
    child = subprocess.Popen(["python3", "-c", "raise SystemExit(7)"])
    try:
        await wait_until_async(lambda: (st := read_stat(child.pid)) is not None
                               and st.state == "Z")
        st = read_stat(child.pid)
        assert st is not None
        gone = ProcessRecord(token=f"{incarnation()}.1", kind="agent", name="old",
                             replica=0, pid=child.pid, start_time=st.start_time - 1,
                             pgid=st.pgid, sid=st.sid)
        await end_processes([gone], Containment("off"))
        assert child.wait(5) == 7, "its exit status was taken by the upgrade's settle"
    finally:
        child.kill()
        child.wait()
