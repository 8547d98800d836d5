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
and so its parent's (the test's) once the server is reaped. The server ends with the
process that started it, killed outright too (its stdout's reader gone).

The model gateway's agents (tests/model_agent.py) are forks of a server too, one a
preload (`agent_command`), started bare: their official OpenAI and Anthropic clients are
seconds of CPU a start, and their tests each make a daemon of their own, so that a zygote
of corral's own (an agent's `preload`) would import them again in every test.
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
    except (FileNotFoundError, ConnectionRefusedError, PermissionError):
        # no server (or none of this user's): a cold start, as the program would be
        # started without one
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
    import gc
    import importlib
    import random
    import resource
    import runpy
    import select
    import threading
    import traceback

    from tests.forkserver import _generators

    gc.disable()
    for module in preload:
        importlib.import_module(module)
    gc.freeze()  # the preload's heap, out of every later pass of the collector's
    gc.enable()
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
    # The server lives as long as the process that started it (`spawn`: a pytest
    # worker), which alone reads its stdout: a worker killed outright (a backstop, or
    # xdist's at load) runs no atexit, and the server lived on, an orphan holding its
    # imports' memory. Its stdout's reading end closed, a poll of the writing end says
    # POLLERR, and the server goes, its socket with it.
    polled = select.poll()
    polled.register(listener, select.POLLIN)
    polled.register(sys.stdout, 0)  # (errors and hang-ups are always said)
    while True:
        if any(fd != listener.fileno() for fd, _ in polled.poll()):
            for made in (path, path + ".cpu"):
                with contextlib.suppress(OSError):
                    os.unlink(made)
            os._exit(0)
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


# what of this process's environment a server started bare keeps: its forks are given
# their launchers' (the memory /proc/PID/environ reads is still the server's)
BARE = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE")


# How long an async test waits for a server to import its preload (the agents' server's
# openai and anthropic are seconds of CPU): just within its own deadline (conftest's
# ASYNC_TEST_TIMEOUT), which cannot fail it meanwhile, as the wait holds its event loop. A
# server that a host loaded far past its cores slowed beyond the backstop took the worker
# down with it (a fresh clone at load 40: "[gw0] node down"); past this, the test fails
# saying so, and the server goes on starting for the next test. A sync test waits as long
# as it takes: its own timeout (SIGALRM) interrupts the wait
READY_WAIT = 80.0


def ready_wait() -> float | None:
    """READY_WAIT in an event loop (an async test's), else none."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return READY_WAIT


def spawn(path: str, preload: tuple[str, ...], cwd: Path | str, bare: bool = False
          ) -> subprocess.Popen[str]:
    """A server at `path` importing `preload`, not waited for (`wait_ready`); `bare`: with
    none of this process's environment but the interpreter's settings and BARE (not a
    variable a test set for its daemon, such as a provider's key that its agents must
    never see)."""
    import subprocess

    from .conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k in BARE or k.startswith("PYTHON")} \
        if bare else dict(os.environ)
    return subprocess.Popen([sys.executable, HERE, "serve", path, *preload],
                            stdout=subprocess.PIPE, text=True, cwd=cwd,
                            env={**env, "PYTHONPATH": str(ROOT)})


def wait_ready(proc: subprocess.Popen[str], preload: tuple[str, ...],
               seconds: float | None) -> None:
    """Until the server says it is ready; RuntimeError if it does not within `seconds`
    (it is left starting; None: no bound) or says anything else."""
    import select

    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], seconds)[0]:
        raise RuntimeError(f"the warm server of {list(preload)} (pid {proc.pid}) was not "
                           f"ready within {seconds:g} s: its imports, slowed by a loaded "
                           "host (it goes on starting for the next test)")
    said = proc.stdout.readline()
    if said != "ready\n":
        raise RuntimeError(f"the warm server of {list(preload)} (pid {proc.pid}) said "
                           f"{said!r}, not ready")


def start(path: str, preload: tuple[str, ...], cwd: Path | str, bare: bool = False
          ) -> subprocess.Popen[str]:
    """A server at `path` that has imported `preload`, ready (`spawn`); ended if it is
    not within `ready_wait`."""
    proc = spawn(path, preload, cwd, bare)
    try:
        wait_ready(proc, preload, ready_wait())
    except RuntimeError:
        stop(proc, path)
        raise
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
def served(tmp: Path, preload: tuple[str, ...], bare: bool = False
           ) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A server for one test (`start`), and the command that launches a program as its
    fork (the program's path and its args after it)."""
    import tempfile

    # a short path: a Unix socket's is at most 107 bytes
    where = tempfile.mkdtemp(prefix="corral-zygote-")
    path = os.path.join(where, "s")
    proc = start(path, preload, tmp, bare)
    try:
        yield proc, [sys.executable, "-I", "-S", HERE, "launch", path]
    finally:
        stop(proc, path)
        with contextlib.suppress(OSError):
            os.rmdir(where)


@contextlib.contextmanager
def zygote(tmp: Path, program: str, preload: tuple[str, ...]) -> Iterator[list[str]]:
    """A server for one test: the command that starts `program` as its fork (the args
    after it)."""
    with served(tmp, preload) as (_, launcher):
        yield [*launcher, program]


class _Server:
    """A server of this process (a pytest worker), started at its first use and kept to
    the process's end, started again where a test killed it; its path is this
    process's, so that a test module's config text may name it at import."""

    def __init__(self, name: str, preload: tuple[str, ...], bare: bool) -> None:
        self.path = f"/tmp/corral-warm-{name}-{os.getpid()}"
        self.preload = preload
        self.bare = bare  # (`spawn`)
        self.proc: subprocess.Popen[str] | None = None
        self.ready = False  # (its proc's "ready" read)
        self.spent_before = 0.0  # what the servers before this one said

    def server(self) -> int | None:
        """Its pid, started at the first call, and again where it was killed (by a test
        that ends what its cgroup holds, or an in-process supervisor not told to spare
        it); none with CORRAL_TEST_WARM=0: each program a cold start, to compare."""
        self.spawned()
        if self.proc is not None and not self.ready:
            wait_ready(self.proc, self.preload, ready_wait())
            self.ready = True
        return self.pid()

    def spawned(self) -> None:
        """Started where none runs (a killed one reaped), not waited for."""
        if self.proc is not None and self.proc.poll() is not None:
            self.spent_before = self.reported_cpu()
            stop(self.proc, self.path)
            self.proc = None
        if self.proc is None and os.environ.get("CORRAL_TEST_WARM") != "0":
            import atexit
            import tempfile

            self.proc = spawn(self.path, self.preload, tempfile.gettempdir(), self.bare)
            self.ready = False
            atexit.register(stop, self.proc, self.path)

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def reported_cpu(self) -> float:
        """The CPU of its children that ended so far."""
        if self.proc is None:
            return self.spent_before
        with contextlib.suppress(OSError, ValueError), open(self.path + ".cpu") as said:
            return self.spent_before + float(said.read() or 0)
        return self.spent_before


# the MCP SDK's server (tests/conftest.py's warm_mcp_sdk starts it), and the agents', one a
# preload (each started by the first `agent_command` that names it)
_SDK = _Server("mcp", MCP_SDK, bare=False)
_AGENTS: dict[tuple[str, ...], _Server] = {}
SDK_PATH = _SDK.path


def sdk_command(program: str) -> list[str]:
    """The command that starts an MCP server on the official SDK (`program`, its args
    after it) as a fork of this process's server (a cold start where none runs)."""
    return [sys.executable, "-I", "-S", HERE, "launch", SDK_PATH, program]


def sdk_toml(program: str, *args: str) -> str:
    """`sdk_command(program)` and `args` as a TOML array, for a config's `command`."""
    return json.dumps([*sdk_command(program), *args])


def sdk_server() -> int | None:
    """This process's MCP SDK server's pid (`_Server.server`)."""
    return _SDK.server()


def sdk_server_pid() -> int | None:
    return _SDK.pid()


def agent_command(program: str | Path, *preload: str) -> list[str]:
    """The command that starts the worker `program` as a fork of this process's agents'
    server that imported `preload`: started here where none runs (its imports made
    before the daemon starts the agent, whose start they would otherwise slow past its
    start_timeout on a loaded host), bare (`start`), and spared by the test's in-process
    daemons (tests/conftest.py's SPARED), as the fork server is."""
    server = _agents(preload)
    pid = server.server()
    if pid is not None:
        from .conftest import SPARED

        SPARED.add(pid)
    return [sys.executable, "-I", "-S", HERE, "launch", server.path, str(program)]


def _agents(preload: tuple[str, ...]) -> _Server:
    server = _AGENTS.get(preload)
    if server is None:
        server = _AGENTS[preload] = _Server(f"agents{len(_AGENTS)}", preload, bare=True)
    return server


def prestart(*preload: str) -> None:
    """The agents' server of `preload` started now and not waited for: its imports are
    made while the tests before its first use run, and that use (`agent_command`) waits
    only for what is left. At load 40-60 the model agents' server (openai and anthropic,
    seconds of CPU) started by an async test's first use took past READY_WAIT, which
    failed the test saying so."""
    _agents(preload).spawned()


def agent_toml(program: str | Path, *preload: str) -> str:
    """`agent_command(program, *preload)` as a TOML array, for an agent's `command`."""
    return json.dumps(agent_command(program, *preload))


def _servers() -> list[_Server]:
    return [_SDK, *_AGENTS.values()]


def servers() -> list[int]:
    """The pids of this process's servers that run (at each test's setup:
    tests/conftest.py). One a test killed is started again where it is next used
    (`agent_command`, the SDK's by each module of `warm_mcp_sdk`), not here: a file whose
    in-process supervisors kill what they did not start, test after test, had each
    killed server started again and its imports made anew, for tests that never used
    it (the agents' server's are seconds of CPU)."""
    return [server.proc.pid for server in _servers()
            if server.proc is not None and server.proc.poll() is None]


def server_pids() -> set[int]:
    """The pids of this process's servers, as they are now."""
    return {pid for server in _servers() if (pid := server.pid()) is not None}


def reported_cpu() -> float:
    """The CPU of this process's servers' children that ended so far."""
    return sum(server.reported_cpu() for server in _servers())


if __name__ == "__main__":
    if sys.argv[1] == "launch":
        sys.exit(launch(sys.argv[2], sys.argv[3:]))
    serve(sys.argv[2], sys.argv[3:])
