"""The tests' Python programs of heavy imports as forks of one process that imported them.

A program the tests start many times pays its interpreter and its imports at each start:
the conformance suite's client (tests/conformance_client.py, ~90 starts in the two files
that run it, ~0.3 s of CPU of a client's ~0.35) and the MCP servers written on the
official SDK (examples/notes_server.py, tests/servers/conformance_fixtures.py, ...), whose
`import mcp.server` alone is ~1.4 s of CPU at every start, the daemon's MCP servers
started again in every test that configures one. Here one process (`serve`) imports them
once and, for each start, forks a child that runs the program's file as `__main__` with
the start's argv, environment, cwd and stdio: a real process running the real program,
only its imports skipped. What is started is `launch`, stdlib only and without site (-I
-S: ~10 ms): it hands its argv (the program's path first), environment, cwd and stdio to
the server over a Unix socket (SOCK_SEQPACKET: a request is one message, whole), and ends
as the child ended: its status, or killed by its signal.

    python warmforks.py serve SOCKET MODULE...      (says "ready" on stdout)
    python -I -S warmforks.py launch SOCKET PROGRAM ARGS...

The launcher passes SIGTERM and SIGINT on to the child; a launcher killed outright (a
daemon's SIGKILL of its server's process group) ends the child too (its end of the
request's socket hung up: SIGIO, whose default ends a process). Where no server listens
at SOCKET the launcher becomes `python PROGRAM ARGS...` itself (a cold start). The
server reaps each child itself, so that the children's CPU is the server's children's,
and so its parent's (the test's) once the server is reaped.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator
    from pathlib import Path

MAX_MESSAGE = 1 << 20
STDIO = 3
HERE = os.path.abspath(__file__)
# the conformance suite's client, and what it imports
CLIENT = os.path.join(os.path.dirname(HERE), "conformance_client.py")
CLIENT_IMPORTS = ("tests.conformance_client",)
# what the MCP servers on the official SDK import, and what their stdio run imports after
MCP_SDK = ("mcp.server", "mcp.server.stdio", "anyio._backends._asyncio", "rich.logging")


def launch(path: str, argv: list[str]) -> int:
    """Run the program as a fork of the server at `path`: its exit status."""
    # a kill before the fork's pid is known waits for it (blocked, then passed on)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        # no server: a cold start, as the program would be started without one
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        os.execv(sys.executable, [sys.executable, *argv])
    req = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
    conn.sendmsg([json.dumps(req).encode()],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", range(STDIO)))])
    # "pid N\n" at the fork, "exit N\n" or "signal N\n" once the server reaped it
    said = b""
    while b"\n" not in said and (chunk := conn.recv(4096)):
        said += chunk
    if said.startswith(b"pid "):
        pid = int(said.split()[1])

        def pass_on(signum: int, frame: object) -> None:
            os.kill(pid, signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, pass_on)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    # until the status line is whole (the socket's end may come later)
    while not said.endswith(b"\n") or not (b"exit " in said or b"signal " in said):
        if not (chunk := conn.recv(4096)):
            break
        said += chunk
    words = said.split()
    if b"signal" in words:  # ended as the child was: by its signal
        sig = int(words[words.index(b"signal") + 1])
        with contextlib.suppress(OSError):  # (SIGKILL's cannot be set, nor need be)
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig  # a signal whose default does not end a process
    return int(words[words.index(b"exit") + 1]) if b"exit" in words else 1


def serve(path: str, preload: list[str]) -> None:
    """Fork a program for each connection to `path`, until killed."""
    import fcntl
    import importlib
    import random
    import resource
    import runpy
    import threading
    import traceback

    from tests.forkserver import _generators

    for module in preload:
        importlib.import_module(module)
    if threading.active_count() > 1:  # a fork copies the calling thread only
        raise SystemExit("the programs' imports started a thread: cannot fork them")
    generators = _generators()
    # each child's request, its status said there once it is reaped
    requests: dict[int, socket.socket] = {}
    # the CPU of the children reaped so far, kept beside the socket for the test process
    # to count in its tests' as they end (`reported_cpu`): this server is reaped only at
    # that process's end
    spent = os.open(path + ".cpu", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def reap(signum: int, frame: object) -> None:
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                # (counted before its launcher learns it ended)
                usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                os.pwrite(spent, f"{usage.ru_utime + usage.ru_stime:<31.6f}\n".encode(), 0)
                conn = requests.pop(pid, None)
                if conn is not None:
                    said = (f"signal {os.WTERMSIG(status)}\n" if os.WIFSIGNALED(status)
                            else f"exit {os.waitstatus_to_exitcode(status)}\n")
                    with contextlib.suppress(OSError):
                        conn.sendall(said.encode())
                    conn.close()

    def end(signum: int, frame: object) -> None:
        # every child waited for, so that each one's CPU is counted in this process's
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        with contextlib.suppress(ChildProcessError):
            while True:
                os.wait()
        os._exit(0)

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, end)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a socket a dead process of this pid left
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        fds = array.array("i")
        data, ancdata, _, _ = conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(STDIO * fds.itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        # (SIGCHLD held until the child's request is known: a child that ends at once
        # is reaped with its status said)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:
            listener.close()
            # the other children's requests are theirs: a copy held here would keep
            # their launchers from seeing their ends
            for other in requests.values():
                other.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            req = json.loads(data)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            program = req["argv"][0]
            sys.argv = list(req["argv"])
            sys.path[0] = os.path.dirname(os.path.abspath(program))
            random.seed()
            for generator in generators:
                generator.seed(os.urandom(16))
            # the launcher gone (killed outright), this child goes too: the socket's
            # hang-up is a SIGIO to its owner
            fcntl.fcntl(conn, fcntl.F_SETOWN, os.getpid())
            fcntl.fcntl(conn, fcntl.F_SETFL, fcntl.fcntl(conn, fcntl.F_GETFL) | os.O_ASYNC)
            conn.sendall(f"pid {os.getpid()}\n".encode())
            status = 1
            try:
                runpy.run_path(program, run_name="__main__")
                status = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    status = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(status)
        requests[pid] = conn
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for fd in fds:
            os.close(fd)


def start(path: str, preload: tuple[str, ...], cwd: Path | str) -> subprocess.Popen[str]:
    """A server at `path` that has imported `preload`, ready."""
    import subprocess

    from .conftest import ROOT

    proc = subprocess.Popen([sys.executable, HERE, "serve", path, *preload],
                            stdout=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def stop(proc: subprocess.Popen[str], path: str) -> None:
    """Ended, and reaped: once its children have ended (or killed, past a minute)."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for made in (path, path + ".cpu"):
        with contextlib.suppress(OSError):
            os.unlink(made)


@contextlib.contextmanager
def zygote(tmp: Path, program: str, preload: tuple[str, ...]) -> Iterator[list[str]]:
    """A server for one test: the command that starts `program` as its fork (the args
    after it)."""
    import tempfile

    # a short path: a Unix socket's is at most 107 bytes
    where = tempfile.mkdtemp(prefix="corral-zygote-")
    path = os.path.join(where, "s")
    proc = start(path, preload, tmp)
    try:
        yield [sys.executable, "-I", "-S", HERE, "launch", path, program]
    finally:
        stop(proc, path)
        with contextlib.suppress(OSError):
            os.rmdir(where)


# the MCP SDK's server of this process (a pytest worker), started by the first test that
# asks for it (tests/conftest.py, warm_mcp_sdk) and kept to the process's end: its path
# is this process's, so that a test module's config text may name it at import
SDK_PATH = f"/tmp/corral-warm-mcp-{os.getpid()}"
_sdk: list[subprocess.Popen[str]] = []
# the CPU the servers before this one said (one killed is started again)
_spent_before = [0.0]


def sdk_command(program: str) -> list[str]:
    """The command that starts an MCP server on the official SDK (`program`, its args
    after it) as a fork of this process's server (a cold start where none runs)."""
    return [sys.executable, "-I", "-S", HERE, "launch", SDK_PATH, program]


def sdk_toml(program: str, *args: str) -> str:
    """`sdk_command(program)` and `args` as a TOML array, for a config's `command`."""
    return json.dumps([*sdk_command(program), *args])


def sdk_server() -> int | None:
    """This process's MCP SDK server's pid, started at the first call, and again where it
    was killed (by a test that ends what its cgroup holds); none with CORRAL_TEST_WARM=0:
    each server a cold start, to compare."""
    if _sdk and _sdk[0].poll() is not None:
        _spent_before[0] = reported_cpu()
        stop(_sdk.pop(), SDK_PATH)
    if not _sdk and os.environ.get("CORRAL_TEST_WARM") != "0":
        import atexit
        import tempfile

        _sdk.append(start(SDK_PATH, MCP_SDK, tempfile.gettempdir()))
        atexit.register(stop, _sdk[0], SDK_PATH)
    return sdk_server_pid()


def sdk_server_pid() -> int | None:
    return _sdk[0].pid if _sdk else None


def reported_cpu() -> float:
    """The CPU of this process's MCP SDK server's children that ended so far."""
    if not _sdk:
        return _spent_before[0]
    with contextlib.suppress(OSError, ValueError), open(SDK_PATH + ".cpu") as said:
        return _spent_before[0] + float(said.read() or 0)
    return _spent_before[0]


if __name__ == "__main__":
    if sys.argv[1] == "launch":
        sys.exit(launch(sys.argv[2], sys.argv[3:]))
    serve(sys.argv[2], sys.argv[3:])
