"""The tests' fork server (tests/forkserver.py): its children are `python -m corral ARGS`
as a fresh interpreter would run it: exit status, stdio, environment, cwd, signals, fds,
reaping and CPU, each checked against a child started by subprocess where they can be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from . import forkserver
from .conftest import ROOT
from .daemon_harness import Daemon, corral_popen, corral_run, hello

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# a CLI that blocks until its stdin ends: `run --input -` reads it before anything else
READS_STDIN = ["--socket", "/nonexistent/corral.sock", "run", "w", "--input", "-"]


@pytest.fixture(scope="module")
def shared_server() -> Iterator[forkserver.ForkServer]:
    """One server for the tests of what a request's child gets: each asks its own child
    with its own environment, and a server's start (its imports) was most of their time
    at load (10-16 s each at load 14)."""
    s = forkserver.ForkServer()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def server(shared_server: forkserver.ForkServer) -> Iterator[forkserver.ForkServer]:
    """The module's server, with no child of a test left to the next."""
    yield shared_server
    for child in psutil.Process(shared_server.pid).children():
        child.kill()


def fresh(args: list[str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, "-m", "corral", *args], env=ENV, **kw)  # type: ignore[call-overload, no-any-return]


def status_line(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def blocked_on_stdin(pid: int) -> None:
    """Wait until `pid` sleeps in a read (of its stdin): its setup is done."""
    deadline = time.monotonic() + 30
    while True:
        stack = Path(f"/proc/{pid}/wchan").read_text()
        if psutil.Process(pid).status() == psutil.STATUS_SLEEPING and "pipe" in stack:
            return
        assert time.monotonic() < deadline, f"{pid} never blocked on its stdin: {stack}"
        time.sleep(0.01)


def test_exit_status_stdout_and_stderr(server: forkserver.ForkServer) -> None:
    ok = server.popen(["completion", "bash"], env=ENV, stdout=forkserver.PIPE,
                      stderr=forkserver.PIPE, text=True)
    out, err = ok.communicate(timeout=30)
    want = subprocess.run([PY, "-m", "corral", "completion", "bash"], env=ENV,
                          capture_output=True, text=True, timeout=30)
    assert (ok.returncode, out, err) == (0, want.stdout, "")
    unreachable = server.popen(["--socket", "/nonexistent/corral.sock", "status"], env=ENV,
                               stdout=forkserver.PIPE, stderr=forkserver.PIPE)
    out, err = unreachable.communicate(timeout=30)
    assert (unreachable.returncode, out) == (3, b"")
    assert err.decode().startswith("corral: cannot reach the corral daemon at "
                                   "/nonexistent/corral.sock: no socket there\n")


def test_stdin_is_the_requests(server: forkserver.ForkServer) -> None:
    child = server.popen(READS_STDIN, env=ENV, stdin=forkserver.PIPE,
                         stdout=forkserver.PIPE, stderr=forkserver.PIPE, text=True)
    # valid JSON, read: it goes on to the socket (a stdin not ours reads "": not JSON)
    out, err = child.communicate('{"valid": true}', timeout=30)
    assert (child.returncode, out) == (3, "")
    assert err.startswith("corral: cannot reach the corral daemon at "
                          "/nonexistent/corral.sock: no socket there\n")


def test_environment_and_cwd_are_the_requests(server: forkserver.ForkServer,
                                              tmp_path: Path) -> None:
    (tmp_path / "here.toml").write_text('[supervisor]\nsocket = "x.sock"\n')
    child = server.popen(["check-config", "here.toml"], env=ENV, cwd=str(tmp_path),
                         stdout=forkserver.PIPE, stderr=forkserver.PIPE, text=True)
    assert child.communicate(timeout=30) == ("here.toml: ok (0 agents, 0 MCP servers)\n", "")
    env = {**ENV, "CORRAL_SOCKET": str(tmp_path / "from-env.sock")}
    child = server.popen(["status"], env=env, stdout=forkserver.PIPE,
                         stderr=forkserver.PIPE, text=True)
    _, err = child.communicate(timeout=30)
    assert err.startswith(f"corral: cannot reach the corral daemon at {tmp_path}/"
                          "from-env.sock: no socket there\n")


def test_an_environment_read_at_use_not_at_import(server: forkserver.ForkServer,
                                                  tmp_path: Path) -> None:
    """CORRAL_CLIENT_TIMEOUT was read at corral.cli.client's import: a forked CLI had the
    server's (600 s) and waited on a daemon that does not answer for ten minutes."""
    import socket

    silent = socket.socket(socket.AF_UNIX)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen()
    try:
        child = server.popen(["--socket", str(tmp_path / "silent.sock"), "status"],
                             env={**ENV, "CORRAL_CLIENT_TIMEOUT": "0.2"},
                             stdout=forkserver.PIPE, stderr=forkserver.PIPE, text=True)
        _, err = child.communicate(timeout=20)
    finally:
        silent.close()
    assert (child.returncode, err) == (
        1, "corral: the daemon did not answer agents.status within 0.2 s\n")


def test_signals_as_a_fresh_interpreter_has_them(tmp_path: Path) -> None:
    """Dispositions and mask as in a child started by subprocess (the server ignores
    SIGINT; it was started with SIGTERM blocked here): what it ignores, catches and blocks
    is the same, and SIGINT and SIGTERM end it as they end a fresh one."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        server = forkserver.ForkServer()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        for sig, status in ((signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)):
            forked = server.popen(READS_STDIN, env=ENV, stdin=forkserver.PIPE,
                                  stdout=forkserver.PIPE, stderr=forkserver.PIPE)
            started = fresh(READS_STDIN, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
            for p in (forked, started):
                blocked_on_stdin(p.pid)
            for key in ("SigBlk", "SigIgn", "SigCgt"):
                assert status_line(forked.pid, key) == status_line(started.pid, key), key
            forked.send_signal(sig)
            started.send_signal(sig)
            assert forked.wait(30) == started.wait(30) == status
            assert forked.stderr is not None and started.stderr is not None
            assert forked.stderr.read() == started.stderr.read()
            for p in (forked, started):
                for stream in (p.stdin, p.stdout, p.stderr):
                    assert stream is not None
                    stream.close()
    finally:
        server.close()


def test_no_fd_of_the_server_in_a_child(server: forkserver.ForkServer) -> None:
    forked = server.popen(READS_STDIN, env=ENV, stdin=forkserver.PIPE,
                          stdout=forkserver.PIPE, stderr=forkserver.PIPE)
    try:
        blocked_on_stdin(forked.pid)
        assert sorted(os.listdir(f"/proc/{forked.pid}/fd")) == ["0", "1", "2"]
    finally:
        forked.kill()
        assert forked.wait(30) == -signal.SIGKILL


def test_a_timeout_kills_the_child_and_none_is_left_a_zombie(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    import socket

    monkeypatch.setenv("CORRAL_TEST_FORK", "1")
    silent = socket.socket(socket.AF_UNIX)  # it connects, and waits for an answer
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen()
    try:
        with pytest.raises(subprocess.TimeoutExpired) as raised:
            corral_run(["--socket", str(tmp_path / "silent.sock"), "status"], timeout=0.5)
        assert raised.value.timeout == 0.5
        server_pid = forkserver.server_pid()
        assert server_pid is not None
        # killed (it would wait on the socket, still open), and reaped: no zombie
        assert psutil.Process(server_pid).children() == []
    finally:
        silent.close()


def test_cpu_of_a_child_and_its_descendants_is_reported(tmp_path: Path) -> None:
    """A daemon's CPU comes back with its exit, its agents' in it (it reaped them), and
    adds to what tests/conftest.py counts for the file."""
    before = forkserver.reported_cpu()
    d = Daemon(tmp_path, hello("hello"))
    try:
        d.start()
        assert isinstance(d.proc, forkserver.Forked), "not forked (CORRAL_TEST_FORK=0?)"
        [agent] = [a["pid"] for a in d.status().values()]
        agent_cpu = sum(psutil.Process(agent).cpu_times()[:2])
        daemon_cpu = sum(psutil.Process(d.proc.pid).cpu_times()[:2])
        assert d.stop() == 0
    finally:
        d.close()
    assert d.proc.cpu is not None
    # its own and its agent's: at least what each had spent before the stop
    assert d.proc.cpu >= daemon_cpu + agent_cpu - 0.02, (d.proc.cpu, daemon_cpu, agent_cpu)
    assert forkserver.reported_cpu() - before >= d.proc.cpu


def test_the_server_ends_with_its_pytest_process(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [PY, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                   "from tests import forkserver; print(forkserver.server().pid,"
                   " flush=True); time.sleep(600)", str(ROOT)],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert parent.stdout is not None
        server = psutil.Process(int(parent.stdout.readline()))
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    server.wait(30)  # (not the parent's child: init reaps it)


def test_the_escape_hatch_and_an_interpreter_the_server_does_not_have(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TEST_FORK", "0")
    off = corral_popen(["completion", "bash"], stdout=subprocess.DEVNULL)
    assert isinstance(off, subprocess.Popen) and off.wait(30) == 0
    monkeypatch.setenv("CORRAL_TEST_FORK", "1")
    on = corral_popen(["completion", "bash"], stdout=subprocess.DEVNULL)
    assert isinstance(on, forkserver.Forked) and on.wait(30) == 0
    # the interpreter reads PYTHON* at its start: the server's is not this one's
    other = corral_popen(["completion", "bash"], env={**ENV, "PYTHONWARNINGS": "error"},
                         stdout=subprocess.DEVNULL)
    assert isinstance(other, subprocess.Popen) and other.wait(30) == 0


def test_the_server_is_not_this_processs_child() -> None:
    """An in-process Supervisor makes this process a subreaper and kills a child of it
    that it did not start (and that it was not told to spare): the server, a child, was
    killed so in a whole run by the first test with a Supervisor of its own."""
    forkserver.server()
    pid = forkserver.server_pid()
    assert pid is not None and psutil.Process(pid).ppid() != os.getpid()
