"""A fork server for the tests: `python -m corral ARGS` without the interpreter's start.

A `corral` CLI or daemon started for a test costs its interpreter's start and corral's
imports (~40 ms of a CLI's ~50 ms of CPU, ~0.2 s of a daemon's ~0.5 s), and the suite starts
thousands (issue 53). One server per pytest process, started at its first use, imports
the CLI's and the daemon's modules once; for each request it forks a child that becomes
`python -m corral ARGS` (corral.cli.entry.main, for `daemon` too) with the request's argv,
environment, cwd, umask and stdio (the three fds passed as SCM_RIGHTS). The child is a real
process running the real code: only the start and the imports are skipped.

The server is this file run as a script (stdlib only until its preload), its control
socket (SOCK_SEQPACKET, one JSON request per datagram) on the fd CORRAL_FORKSERVER_FD
names. It is single-threaded and never makes an event loop; it refuses to serve if its
imports started a thread (a fork copies the calling thread only). It is each child's
parent: it reaps it (a pidfd says when) and reports its exit status and its CPU (wait4's
rusage: the child's and its reaped descendants') on the request's own reply socket. It
ends when the control socket's other end is gone (its pytest process died or closed it).

In the child, before corral's code runs: every fd besides the three closed (the control
socket, other requests' sockets, pidfds); signal dispositions as the server had them at
its start (a fresh interpreter's, since the server is one) and an empty signal mask;
cwd, umask, environment, sys.argv, sys.orig_argv and sys.path[0] as `python -m corral`
would have them; fresh sys.std* objects on the new fds (line-buffered on a tty, as an
interpreter decides at its start); every random.Random of a module reseeded (the random
module reseeds its own; corral's module-level generators would repeat the server's
sequence in every child). It exits as the interpreter would (threads joined, atexit run,
stdio flushed; an uncaught exception's traceback and status 1; an uncaught
KeyboardInterrupt by SIGINT) but without its teardown of every module (half a CLI's CPU
here, the server's modules being many): a child's open files are closed by the kernel,
not flushed by their finalizers, as after an os._exit.

CORRAL_TEST_FORK=0 turns it off: the harness then starts every process by subprocess.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

MAX_MESSAGE = 1 << 20
FD_VARIABLE = "CORRAL_FORKSERVER_FD"
# what the CLI and the daemon import, and the modules a child's setup needs; and what a
# daemon imports as its config asks (its HTTP API, its cluster, the handlers of the
# control methods it is asked): a test's daemon paid those imports again in each child,
# most of its boot's CPU where it serves HTTP or joins a cluster (bench/RESULTS.md)
PRELOAD = ("corral.cli.entry", "corral.cli.main", "corral.daemon.daemon", "io", "random",
           "tempfile", "resource", "uvloop", "difflib", "corral.cli.daemon",
           "corral.cli.durations", "corral.cli.render", "corral.daemon.accesshandlers",
           "corral.daemon.approvalhandlers", "corral.daemon.eventhandlers",
           "corral.daemon.loghandlers", "corral.daemon.nodehandlers",
           "corral.daemon.stathandlers", "corral.daemon.taskhandlers",
           "corral.daemon.http.mcp", "corral.daemon.http.ui", "corral.daemon.http.context",
           "corral.daemon.http.server", "corral.daemon.http.metrics",
           "corral.daemon.http.rest", "corral.daemon.http.index",
           "corral.daemon.http.openapi", "corral.cluster.node", "corral.cluster.queue",
           "corral.cluster.schedules", "corral.daemon.tasks.clustered",
           # what a daemon of an [http], [gateway] or [cluster] table imported after the
           # fork (boot's diff of a forked daemon's modules against the server's): the A2A
           # door's routes, the codec of the loop's getaddrinfo of a str host, the pins
           "corral.daemon.a2a.routes", "encodings.idna", "stringprep",
           "corral.cluster.toolpins",
           # and the commands the tests run most: a child imported its command's module
           "corral.cli.status", "corral.cli.tasks", "corral.cli.logs", "corral.cli.fleet")


# -- the server ---------------------------------------------------------------------------

def _send(fd: int, msg: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the client is gone: nobody to tell
        os.write(fd, json.dumps(msg).encode())


def _cpu(usage: Any) -> float:
    return float(usage.ru_utime + usage.ru_stime)


class _Child(Exception):
    """Raised in a forked child, out of the server's loop: the request to become."""

    def __init__(self, req: dict[str, Any], fds: list[int]) -> None:
        self.req = req
        self.fds = fds


def serve(control: socket.socket, initial: dict[int, Any]) -> None:
    """Fork a child per request until the control socket's peer is gone. Returns only by
    raising _Child in a forked child."""
    import resource

    children: dict[int, tuple[int, int]] = {}  # pidfd: (pid, reply fd)
    poller = select.poll()
    poller.register(control.fileno(), select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == control.fileno():
                fds = array.array("i")
                data, ancdata, _, _ = control.recvmsg(
                    MAX_MESSAGE, socket.CMSG_SPACE(4 * fds.itemsize))
                if not data:
                    return
                for level, kind, payload in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                if len(fds) != 4:
                    for f in fds:
                        os.close(f)
                    continue
                reply, stdio = fds[0], list(fds[1:])
                req = json.loads(data)
                try:
                    pid = os.fork()
                except OSError as exc:
                    _send(reply, {"error": f"fork: {exc}"})
                    os.close(reply)
                else:
                    if pid == 0:
                        control.detach()  # its fd is closed with the others
                        raise _Child(req, stdio)
                    pidfd = os.pidfd_open(pid)
                    children[pidfd] = (pid, reply)
                    poller.register(pidfd, select.POLLIN)
                    _send(reply, {"pid": pid})
                for f in stdio:
                    os.close(f)
            else:
                pid, reply = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, wstatus, usage = os.wait4(pid, 0)
                _send(reply, {"exit": os.waitstatus_to_exitcode(wstatus), "cpu": _cpu(usage),
                              "server_cpu": _cpu(resource.getrusage(resource.RUSAGE_SELF))})
                os.close(reply)


def _generators() -> list[Any]:
    """Every random.Random a module holds at its top level. Told by its type, not by
    isinstance: that reads a value's __class__, which the official OpenAI client's
    module-level proxies (openai.chat, openai.beta, ...) answer by importing what they
    stand for, ~1,600 modules and 3 s of CPU in the agents' server (tests/warmforks.py)."""
    import random

    found = []
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if issubclass(type(value), random.Random) and value is not random._inst:  # type: ignore[attr-defined]
                found.append(value)
    return found


def become(child: _Child, initial: dict[int, Any], base_path: list[str],
           generators: list[Any], main_path: str) -> None:
    """In the forked child: set up as a fresh `python -m corral ARGV` would be, and run it.
    Never returns."""
    import io
    import tempfile

    req = child.req
    for sig, handler in initial.items():
        with contextlib.suppress(OSError, ValueError, TypeError):
            signal.signal(sig, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for target, fd in enumerate(child.fds):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir(req["cwd"])
    os.umask(req["umask"])
    os.environ.clear()
    os.environ.update(req["env"])
    tempfile.tempdir = None  # found again from TMPDIR, at its first use
    argv = req["argv"]
    sys.argv = [main_path, *argv]
    sys.orig_argv = [sys.executable, "-m", "corral", *argv]
    extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.getcwd(), *extra, *base_path]
    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=encoding,
        errors=errors)
    tty = os.isatty(1)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding=encoding,
        errors=errors, line_buffering=tty, write_through=False)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding=encoding,
        errors="backslashreplace", line_buffering=True)
    for generator in generators:
        generator.seed(os.urandom(16))
    from corral.cli.entry import main as corral_main

    interrupted = False
    try:
        corral_main()
        status = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            status = (exc.code or 0) & 0xFF
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
        interrupted, status = True, 130
    except BaseException:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
        status = 1
    # The interpreter's exit but its teardown of every module (half of a CLI's CPU here:
    # the server's modules are many): threads joined, atexit run, stdio flushed.
    import atexit

    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if interrupted:  # as Python ends on an uncaught KeyboardInterrupt: by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(status)


def _warm() -> None:
    """What each child made again at its first use, made once here and shared by every
    fork: each control method's decoders (msgspec's reading of their types, a CLI's
    answer's) and a config's conversion (a daemon's first load_config)."""
    import tempfile

    import msgspec

    from corral.methods import REGISTRY
    from corral.supervisor.configload import load_config

    for declared in REGISTRY.values():
        for kind in (declared.params, declared.result):
            with contextlib.suppress(Exception):  # a type no decoder takes: nothing to warm
                msgspec.json.Decoder(kind)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "corral.toml")
        with open(path, "w") as f:
            # (a [supervisor] table too: msgspec's type info of its Struct, made at its
            # first conversion, was each daemon's own)
            f.write('[supervisor]\nheartbeat_interval = 1.0\n\n[agents.a]\ncommand = ["true"]\n')
        load_config(path)


def main() -> None:
    import gc
    import importlib
    import importlib.util

    control = socket.socket(fileno=int(os.environ.pop(FD_VARIABLE)))
    # a fresh interpreter's dispositions (this process is one), for every child
    initial = {sig: signal.getsignal(sig) for sig in signal.valid_signals()
               if sig not in (signal.SIGKILL, signal.SIGSTOP)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for pytest, which ends us
    own = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    # what a python -m puts after sys.path[0] and the PYTHONPATH entries
    base_path = [p for p in sys.path[1:] if p not in own]
    try:
        for name in PRELOAD:
            importlib.import_module(name)
        _warm()
    except BaseException as exc:
        _send(control.fileno(), {"error": f"preload failed: {type(exc).__name__}: {exc}"})
        return
    with contextlib.suppress(ImportError):
        import setproctitle

        # it finds the memory of argv (which a title is written over) from environ's, at
        # its first use: here, as a child's rewritten environ would hide it (the daemon
        # titles itself "corral: supervisor")
        setproctitle.getproctitle()
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others or len(os.listdir("/proc/self/task")) > 1:
        _send(control.fileno(), {"error": f"preload started threads: {others}"})
        return
    generators = _generators()
    spec = importlib.util.find_spec("corral.__main__")  # (not imported: that would run it)
    main_path = str(spec.origin if spec is not None else "")
    gc.freeze()  # the imports' objects: out of every child's collections, pages kept shared
    _send(control.fileno(), {"ready": os.getpid()})
    child: _Child | None = None
    try:
        serve(control, initial)
    except _Child as raised:
        child = raised  # run outside the except: not "during handling of" it
    if child is not None:
        become(child, initial, base_path, generators, main_path)


# -- the client ---------------------------------------------------------------------------

_LAUNCHER = """import os, sys
if os.fork() == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
os._exit(0)
"""
PIPE = -1
DEVNULL = -3
_ENVIRONMENT_OF_THE_INTERPRETER = ("LANG", "LC_ALL", "LC_CTYPE")


def interpreter_settings(env: Mapping[str, str]) -> dict[str, str]:
    """What of an environment an interpreter reads at its start (PYTHON*, the locale): a
    test's own environment given this process's is one the server serves (`serves`)."""
    return {k: v for k, v in env.items()
            if k.startswith("PYTHON") or k in _ENVIRONMENT_OF_THE_INTERPRETER}


def enabled() -> bool:
    return os.environ.get("CORRAL_TEST_FORK", "1") != "0"


def _umask() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise RuntimeError("no Umask in /proc/self/status")


class Forked:
    """A child of the fork server, with the surface of a subprocess.Popen the tests use."""

    def __init__(self, server: ForkServer, args: list[str], reply: socket.socket, pid: int,
                 stdin: Any, stdout: Any, stderr: Any, text: bool) -> None:
        self.server = server
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self.cpu: float | None = None  # its user+system seconds, its reaped descendants'
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.text_mode = text
        self._reply = reply
        self._lock = threading.Lock()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = None  # reaped already: its exit is on the reply socket

    def _take_exit(self, timeout: float | None) -> bool:
        """Whether the child's exit has come (within `timeout` seconds), read if so. The
        wait holds no lock: another thread may signal the child meanwhile."""
        if self.returncode is not None:
            return True
        waiting = select.poll()  # (not select: a pytest process may hold fds past 1023)
        waiting.register(self._reply.fileno(), select.POLLIN)
        if not waiting.poll(None if timeout is None else max(0, int(timeout * 1000))):
            return self.returncode is not None
        with self._lock:
            if self.returncode is not None:
                return True
            try:
                data = self._reply.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            if not data:
                raise RuntimeError(f"the fork server went away before child {self.pid} "
                                   "ended")
            msg = json.loads(data)
            self.cpu = float(msg["cpu"])
            self.server._exited(self, float(msg["cpu"]), float(msg["server_cpu"]))
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self.returncode = int(msg["exit"])
            return True

    def poll(self) -> int | None:
        self._take_exit(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._take_exit(timeout):
            import subprocess

            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        # by pidfd: a child that has ended (the server reaped it) cannot be confused with
        # a new process that got its pid
        with self._lock:
            if self.returncode is not None or self._pidfd is None:
                return
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None
                    ) -> tuple[Any, Any]:
        """What subprocess.Popen.communicate does: input written, stdout and stderr read to
        their ends, the child waited for; TimeoutExpired (the child left running) if that
        takes longer than `timeout`."""
        import selectors
        import subprocess
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        chunks: dict[int, list[bytes]] = {}
        data = b"" if input is None else (input.encode() if isinstance(input, str) else input)
        with selectors.DefaultSelector() as sel:
            if self.stdin is not None:
                if data:
                    sel.register(self.stdin, selectors.EVENT_WRITE)
                else:
                    self.stdin.close()
            for stream in (self.stdout, self.stderr):
                if stream is not None:
                    chunks[stream.fileno()] = []
                    sel.register(stream, selectors.EVENT_READ)
            while sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0,
                                                    self._joined(chunks, self.stdout),
                                                    self._joined(chunks, self.stderr))
                for key, _ in sel.select(left):
                    if key.fileobj is self.stdin:
                        try:
                            n = os.write(key.fd, data[:65536])
                        except BrokenPipeError:
                            n = len(data)
                        data = data[n:]
                        if not data:
                            sel.unregister(key.fileobj)
                            self.stdin.close()
                    else:
                        got = os.read(key.fd, 65536)
                        if got:
                            chunks[key.fd].append(got)
                        else:
                            sel.unregister(key.fileobj)
        out, err = self._joined(chunks, self.stdout), self._joined(chunks, self.stderr)
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        return out, err

    def _joined(self, chunks: dict[int, list[bytes]], stream: Any) -> Any:
        if stream is None or stream.closed:
            return None
        raw = b"".join(chunks.get(stream.fileno(), []))
        if not self.text_mode:
            return raw
        return raw.decode().replace("\r\n", "\n").replace("\r", "\n")

    def __del__(self) -> None:
        self._reply.close()
        if self._pidfd is not None:
            os.close(self._pidfd)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()


class ForkServer:
    """The client's side of one server: it starts the server, sends it requests, and
    counts the CPU of the children it has seen end (for tests/conftest.py's file CPU)."""

    def __init__(self) -> None:
        import subprocess
        from pathlib import Path

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = str(Path(__file__).resolve().parent.parent)
        # the harness's PYTHONPATH, which its requests carry (any other is not ours to
        # serve: the child's sys.path would differ from a fresh interpreter's)
        self.env = {**os.environ, "PYTHONPATH": root, FD_VARIABLE: str(theirs.fileno())}
        self.env.pop("CORRAL_TEST_FORK", None)
        import tempfile

        # its own stderr (not this process's, which pytest redirects test by test): what
        # it says if it fails
        self.log = Path(tempfile.mkstemp(prefix="corral-forkserver-", suffix=".log")[1])
        # Not our child: a launcher forks it and exits, and it is re-parented (to
        # init). An in-process Supervisor makes this process a subreaper and kills (and
        # reaps) any child of it that it did not start: the suite's supervisors are
        # many, not all of them told of this one (spared). (Not a shell's `&`: that
        # ignores SIGINT in what it starts, and so would every child.)
        with self.log.open("wb") as log:
            launcher = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, __file__],
                env=self.env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, cwd="/")
            launcher.wait()
        del self.env[FD_VARIABLE]
        theirs.close()
        self.control = mine
        self.pid = 0
        self.forks = 0
        self.children_cpu = 0.0
        self.server_cpu = 0.0
        self._running: set[Forked] = set()
        self._lock = threading.Lock()
        import atexit

        atexit.register(self._at_exit)
        data = self.control.recv(MAX_MESSAGE)
        msg = json.loads(data) if data else {"error": "it exited before it was ready"}
        if "ready" not in msg:
            self.close()
            raise RuntimeError(f"the fork server did not start: {msg['error']} (it said: "
                               f"{self.log.read_text(errors='replace')[-2000:]!r})")
        self.pid = int(msg["ready"])

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a child with this environment would start as a fresh interpreter would:
        what the interpreter reads at its start (PYTHON*, the locale) is the server's."""
        return interpreter_settings(env) == interpreter_settings(self.env)

    def popen(self, args: list[str], env: dict[str, str], cwd: str | None = None,
              stdin: Any = None, stdout: Any = None, stderr: Any = None,
              text: bool = False) -> Forked:
        """`python -m corral ARGS`, forked. stdin/stdout/stderr: PIPE, DEVNULL, None (this
        process's own), an fd or a file."""
        ends: list[int] = []  # the child's, closed here once sent
        ours: list[Any] = []
        try:
            for n, how in enumerate((stdin, stdout, stderr)):
                if how == PIPE:
                    r, w = os.pipe()
                    child_end, our_end = (r, w) if n == 0 else (w, r)
                    ends.append(child_end)
                    mode = ("w" if n == 0 else "r") + ("" if text else "b")
                    ours.append(open(our_end, mode))  # noqa: SIM115
                elif how == DEVNULL:
                    ends.append(os.open(os.devnull, os.O_RDWR))
                    ours.append(None)
                else:
                    fd = n if how is None else how if isinstance(how, int) else how.fileno()
                    ends.append(os.dup(fd))
                    ours.append(None)
            reply, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ends.insert(0, theirs.detach())
            req = {"argv": args, "env": env, "cwd": cwd or os.getcwd(), "umask": _umask()}
            try:
                self.control.sendmsg([json.dumps(req).encode()],
                                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", ends))])
            except OSError as exc:
                raise RuntimeError(f"the fork server ({self.pid}) is gone: "
                                   f"{exc} (it said: "
                                   f"{self.log.read_text(errors='replace')[-2000:]!r})"
                                   ) from None
        except BaseException:
            for stream in ours:
                if stream is not None:
                    stream.close()
            raise
        finally:
            for fd in ends:
                os.close(fd)
        answer = select.poll()
        answer.register(reply.fileno(), select.POLLIN)
        data = reply.recv(MAX_MESSAGE) if answer.poll(60_000) else b""
        msg = json.loads(data) if data else {"error": "no answer"}
        if "pid" not in msg:
            reply.close()
            for stream in ours:
                if stream is not None:
                    stream.close()
            raise OSError(f"the fork server did not start {args}: {msg['error']}")
        child = Forked(self, args, reply, int(msg["pid"]), *ours, text=text)
        with self._lock:
            self.forks += 1
            self._running.add(child)
        return child

    def _exited(self, child: Forked, cpu: float, server_cpu: float) -> None:
        with self._lock:
            self.children_cpu += cpu
            self.server_cpu = max(self.server_cpu, server_cpu)
            self._running.discard(child)

    def cpu(self) -> float:
        """The CPU of every child seen to end, their reaped descendants' included, and of
        the server itself: what RUSAGE_CHILDREN would count had they been our children."""
        with self._lock:
            running = list(self._running)
        for child in running:
            child.poll()
        return self.children_cpu + self.server_cpu

    def _at_exit(self) -> None:
        """The server's log goes if it said nothing; its count of forks is added to the
        file CORRAL_TEST_FORK_COUNT names, if any (bench/RESULTS.md's count)."""
        with contextlib.suppress(OSError):
            if self.log.stat().st_size == 0:
                self.log.unlink()
        count = os.environ.get("CORRAL_TEST_FORK_COUNT")
        if count:
            with open(count, "a") as f:
                f.write(f"{self.forks}\n")

    def close(self) -> None:
        """Stop the server, and wait until it has gone (its children run on, as a
        Popen's would)."""
        try:
            pidfd = os.pidfd_open(self.pid) if self.pid else None
        except ProcessLookupError:
            pidfd = None
        self.control.close()
        if pidfd is not None:
            gone = select.poll()
            gone.register(pidfd, select.POLLIN)
            gone.poll(30_000)
            os.close(pidfd)


_server: ForkServer | None = None
_server_pid = 0
_start_lock = threading.Lock()


def server() -> ForkServer:
    """This process's server, started at its first use (tests/conftest.py starts it
    before the first test), or again if it is gone (a test killed every process of
    the user, say)."""
    global _server, _server_pid
    with _start_lock:
        if _server is None or _server_pid != os.getpid() or not _alive(_server.pid):
            _server, _server_pid = ForkServer(), os.getpid()  # (a forked pytest: its own)
        return _server


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def server_pid() -> int | None:
    """The pid of this process's server, if it has started one."""
    return _server.pid if _server is not None and _server_pid == os.getpid() else None


def reported_cpu() -> float:
    """What this process's server and its children spent (0 with none started)."""
    return _server.cpu() if _server is not None and _server_pid == os.getpid() else 0.0


if __name__ == "__main__":
    main()
