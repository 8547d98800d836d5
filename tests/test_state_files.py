"""The files the daemon (root) writes in its own directories are its own (issue 52, item
4a): a symbolic link, a hard link, a FIFO put in one's place is refused with the path and
what is there, and nothing outside is written, truncated, created or chmodded — the
upgrade's hand-off file, the state database and the files SQLite makes beside it, the
trace store, the socket's lock, the daemon's log, the step journal's files, the packages'
rollout marker and lock, the OAuth tokens (statefiles.py)."""

from __future__ import annotations

import errno
import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.statefiles import check_database, make_dir, open_file

from .daemon_harness import Daemon, hello, shared_tmpdir

PRECIOUS = b"root's own file: never to be written by corral\n"


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def victim(tmp: Path) -> Path:
    """A file outside corral's directories, as a link would point at one."""
    v = tmp / "outside" / "victim"
    v.parent.mkdir(exist_ok=True)
    v.write_bytes(PRECIOUS)
    v.chmod(0o644)
    return v


def untouched(v: Path, ghost: Path) -> None:
    assert v.read_bytes() == PRECIOUS
    assert v.stat().st_mode & 0o777 == 0o644
    assert not ghost.exists()  # a dangling link's target is not created


def refusal(path: Path, what: str) -> str:
    return f"{path} is {what}, not a file of corral's own: refused (remove it)"


def test_a_link_fifo_or_hard_link_in_a_files_place_is_refused_and_left_alone(
        tmp: Path) -> None:
    v = victim(tmp)
    ghost = tmp / "outside" / "ghost"
    own = tmp / "own"
    own.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for name, plant, what in (
            ("link", lambda p: p.symlink_to(v), "a symbolic link"),
            ("dangling", lambda p: p.symlink_to(ghost), "a symbolic link"),
            ("hard", lambda p: os.link(v, p), "a hard link to a file of 2 names"),
            ("fifo", lambda p: os.mkfifo(p), "a FIFO"),
            ("dir", lambda p: p.mkdir(), "a directory")):
        path = own / name
        plant(path)
        with pytest.raises(OSError) as exc:
            open_file(path, flags)
        assert (exc.value.errno, exc.value.strerror) == (errno.ELOOP, refusal(path, what))
        untouched(v, ghost)
    # the database and the files SQLite makes beside it, looked at before it opens them
    (own / "db").write_bytes(b"")
    (own / "db-wal").symlink_to(v)
    with pytest.raises(OSError) as exc:
        check_database(own / "db")
    assert exc.value.strerror == refusal(own / "db-wal", "a symbolic link")
    # a directory's place
    (own / "dirlink").symlink_to(v.parent)
    with pytest.raises(OSError) as exc:
        make_dir(own / "dirlink")
    assert exc.value.strerror == (f"{own / 'dirlink'} is a symbolic link, not a directory "
                                  "of corral's own: refused (remove it)")
    # a file of its own: opened, truncated
    fd = open_file(own / "fine", flags)
    os.write(fd, b"x")
    os.close(fd)
    os.close(open_file(own / "fine", flags))
    assert (own / "fine").read_bytes() == b""
    assert sorted(p.name for p in v.parent.iterdir()) == ["victim"]


def test_an_upgrade_refuses_a_link_in_the_hand_off_files_place(tmp: Path) -> None:
    from corral.daemon.handoff import NAME

    v = victim(tmp)
    d = Daemon(tmp, hello("w"))
    try:
        d.start()
        assert d.proc is not None
        pid = d.status()["w#0"]["pid"]
        planted = d.state / NAME
        planted.symlink_to(v)
        r = d.cli("upgrade")
        assert r.returncode == 1, r.stderr
        # (refused after the new install's check: the report says it, on stdout)
        assert r.stdout == (f"corral: upgrade refused, nothing changed: the state file "
                            f"{planted} cannot be written: "
                            f"{refusal(planted, 'a symbolic link')}\n")
        untouched(v, tmp / "ghost")
        assert d.proc.poll() is None and d.status()["w#0"]["pid"] == pid
        assert d.json("run", "w", "--input", '{"name": "x"}')["status"] == "succeeded"
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize("name", ["corral.db", "corral.db-wal", "corral.db-shm",
                                  "traces.db", "traces.db-wal", "logs/corral.log"])
def test_a_daemon_does_not_start_on_a_link_in_a_state_files_place(tmp: Path,
                                                                   name: str) -> None:
    v = victim(tmp)
    d = Daemon(tmp, hello("w"), extra="")
    d.config.write_text(d.config.read_text() + textwrap.dedent("""
        [tracing]
        export_interval = 0.05
    """))
    planted = d.state / name
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(v)
    assert refused_at_start(d, planted)
    untouched(v, tmp / "ghost")
    assert planted.is_symlink()


def test_a_daemon_does_not_start_on_a_link_in_its_socket_locks_place(tmp: Path) -> None:
    d = Daemon(tmp, hello("w"))
    ghost = tmp / "outside" / "ghost"
    ghost.parent.mkdir()
    planted = d.sock.with_name(d.sock.name + ".lock")
    planted.symlink_to(ghost)
    assert refused_at_start(d, planted)
    assert not ghost.exists()


def refused_at_start(d: Daemon, planted: Path) -> bool:
    """d, started, exits 1 saying it refuses the link planted; closed either way."""
    try:
        d.start(wait_ready=False)
        assert d.proc is not None
        assert d.proc.wait(30) == 1
        assert d.proc.stderr is not None
        err = d.proc.stderr.read().decode()
        assert refusal(planted, "a symbolic link") in err, err
        return True
    finally:
        d.close()
