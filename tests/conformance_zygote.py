"""The conformance suite's clients as forks of one process that imported them already.

The suite (its client mode) starts tests/conformance_client.py once per scenario, ~90
times in the two files that run it: each start was an interpreter and corral's client
with aiohttp imported anew, ~0.3 s of CPU of a client's ~0.35. Here one process (`serve`)
imports them once and, for each start, forks a child that runs the client's main() with
the start's argv, environment, cwd and stdio: a real process running the real client,
only its imports skipped. What the suite starts is `launch`, stdlib only and without
site (-I -S: ~10 ms): it hands its argv, environment, cwd and stdio to the server over
a Unix socket (SOCK_SEQPACKET: a request is one message, whole), and exits with the
child's status.

    python conformance_zygote.py serve SOCKET          (says "ready" on stdout)
    python -I -S conformance_zygote.py launch SOCKET ARGS...

The server reaps each child itself, so that the children's CPU is the server's
children's, and so its parent's (the test's) once the server is reaped.
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
    from collections.abc import Iterator
    from pathlib import Path

MAX_MESSAGE = 1 << 20
STDIO = 3


def launch(path: str, argv: list[str]) -> int:
    """Run the client as a fork of the server at `path`: its exit status."""
    # a kill before the fork's pid is known waits for it (blocked, then passed on)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(path)
    req = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}
    conn.sendmsg([json.dumps(req).encode()],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", range(STDIO)))])
    # "pid N\n" at the fork, "exit N\n" at the child's end (nothing: it was killed): the
    # suite's kill of this process (its per-scenario timeout) is passed on to the child
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
    while chunk := conn.recv(4096):
        said += chunk
    words = said.split()
    return int(words[words.index(b"exit") + 1]) if b"exit" in words else 1


def serve(path: str) -> None:
    """Fork a client for each connection to `path`, until killed."""
    import random
    import threading
    import traceback

    from tests import conformance_client
    from tests.forkserver import _generators

    if threading.active_count() > 1:  # a fork copies the calling thread only
        raise SystemExit("the client's imports started a thread: cannot fork it")
    generators = _generators()

    def reap(signum: int, frame: object) -> None:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass

    def end(signum: int, frame: object) -> None:
        # every child waited for, so that each one's CPU is counted in this process's
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        with contextlib.suppress(ChildProcessError):
            while True:
                os.wait()
        os._exit(0)

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, end)
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
        pid = os.fork()
        if pid == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            req = json.loads(data)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            sys.argv = [conformance_client.__file__, *req["argv"]]
            random.seed()
            for generator in generators:
                generator.seed(os.urandom(16))
            conn.sendall(f"pid {os.getpid()}\n".encode())
            status = 1
            try:
                status = conformance_client.main()
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                with contextlib.suppress(OSError):
                    conn.sendall(f"exit {status}\n".encode())
                os._exit(status)
        for fd in fds:
            os.close(fd)
        conn.close()


@contextlib.contextmanager
def zygote(tmp: Path) -> Iterator[list[str]]:
    """A server for one test: the command that starts a client as its fork (the suite's
    --command, with the server's URL after it). Ended, and reaped, after: once its
    children have ended (or killed, past a minute)."""
    import subprocess
    import tempfile

    from .conftest import ROOT

    here = os.path.abspath(__file__)
    # a short path: a Unix socket's is at most 107 bytes
    path = os.path.join(tempfile.mkdtemp(prefix="corral-zygote-"), "s")
    proc = subprocess.Popen([sys.executable, here, "serve", path], stdout=subprocess.PIPE,
                            text=True, cwd=tmp,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield [sys.executable, "-I", "-S", here, "launch", path]
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(os.path.dirname(path))


if __name__ == "__main__":
    if sys.argv[1] == "launch":
        sys.exit(launch(sys.argv[2], sys.argv[3:]))
    serve(sys.argv[2])
