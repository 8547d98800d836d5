"""A command given no socket (no --socket, no CORRAL_SOCKET) that finds no daemon at the
standard place names the socket of one that answers nearby, found from the current
directory up (the Quick start's `examples/.corral/corral.sock`, a config's
`.corral/corral.sock`), and never uses it unasked (decision 2380)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import paths

ROOT = Path(__file__).resolve().parent.parent
START = ("start it with `corral daemon --config PATH` (or `systemctl start corral`), or "
         "point at it with --socket / CORRAL_SOCKET\n")


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory of its own under /tmp: a unix socket's path is at most 107 bytes, and
    pytest's tmp_path under xdist is most of that before the checkout's directories."""
    d = Path(tempfile.mkdtemp(prefix="cs-"))
    yield d
    shutil.rmtree(d)


def _status(cwd: Path, runtime: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CORRAL_SOCKET", "RUNTIME_DIRECTORY")}
    env.update(PYTHONPATH=str(ROOT), XDG_RUNTIME_DIR=str(runtime))
    return subprocess.run([sys.executable, "-m", "corral", *args, "status"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def _standard(runtime: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the command looks with no socket given, under the environment `_status`
    gives it."""
    monkeypatch.delenv("CORRAL_SOCKET", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return paths.client_socket(None)


def _listening(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    return sock


@pytest.mark.parametrize(("place", "cwd"), [
    ("examples/.corral", "docs"),   # ./run.sh's, from a directory of the checkout
    (".corral", "."),               # a config's own, from its directory
])
def test_a_daemon_nearby_is_named(short: Path, monkeypatch: pytest.MonkeyPatch,
                                  place: str, cwd: str) -> None:
    home = short / "new user"   # a space: the export shown is quoted
    near = home / place / "corral.sock"
    (home / cwd).mkdir(parents=True, exist_ok=True)
    standard = _standard(short / "rt", monkeypatch)
    with _listening(near):
        r = _status(home / cwd, short / "rt")
    assert (r.returncode, r.stdout) == (3, "")
    assert r.stderr == (
        f"corral: cannot reach the corral daemon at {standard}: no socket there\n"
        f"a daemon answers at {near}, found from this directory: "
        f"export CORRAL_SOCKET='{near}' (or pass --socket)\n")


def test_a_stale_socket_or_a_socket_given_is_not_offered(
        short: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = short
    standard = _standard(tmp_path / "rt", monkeypatch)
    stale = tmp_path / "examples" / ".corral" / "corral.sock"
    _listening(stale).close()  # bound, then no one listens: a daemon that died
    r = _status(tmp_path, tmp_path / "rt")
    assert (r.returncode, r.stderr) == (
        3, f"corral: cannot reach the corral daemon at {standard}: no socket there\n{START}")

    given = tmp_path / "given.sock"
    with _listening(tmp_path / "live" / ".corral" / "corral.sock"):
        r = _status(tmp_path / "live", tmp_path / "rt", "--socket", str(given))
    # the operator named a socket: that one is the answer's, none other is offered
    assert (r.returncode, r.stderr) == (
        3, f"corral: cannot reach the corral daemon at {given}: no socket there\n{START}")
