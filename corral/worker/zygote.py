"""The zygote: a Python process that imports an agent's modules once and forks agents.

corral runs this file's text as `PYTHON - MODULE...` (a script on stdin: it needs no
more of corral on the agent's sys.path than the agent does, and its user need not read
corral's installation), one per (interpreter, preload set, user), with a SOCK_SEQPACKET
socket on the fd named by CORRAL_ZYGOTE_FD: one JSON object per datagram, a `spawn`'s
stdio pipe ends as SCM_RIGHTS. It refuses to serve if an import started a thread (a fork
copies only the calling thread: one started at import would be missing in every agent,
with whatever lock it held locked forever). The forked child is set up as a cold start
before any agent code runs. Stdlib only, like the rest of corral.worker."""

from __future__ import annotations

import array
import contextlib
import gc
import importlib
import json
import os
import signal
import socket
import sys
import threading
import traceback

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_MESSAGE = 1 << 20


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    try:
        sock.send(json.dumps(msg).encode())
    except OSError:
        os._exit(0)  # corral is gone: so are we


def _threads() -> list[str]:
    """Threads besides this one, by Python name, or by count from /proc for threads that
    Python does not know (started by a C extension)."""
    names = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = 1
    if tasks - 1 > len(names):
        names.append(f"{tasks - 1 - len(names)} thread(s) not started by Python")
    return names


def _child(req: dict[str, Any], fds: list[int], sock: socket.socket) -> None:
    """In the forked child: become the agent. Never returns."""
    status = 1
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        sock.close()
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0 else 65536)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import resource

        for which, soft, hard in req["rlimits"]:
            resource.setrlimit(which, (soft, hard))
        if req.get("nice"):
            os.nice(req["nice"])
            # and the new session's autogroup, where the kernel weighs sessions, not
            # processes (corral.supervisor.caps.AUTOGROUP)
            with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
                f.write(str(req["nice"]))
        os.chdir(req["cwd"])
        # the title first: setproctitle finds the memory it may write over (argv, environ)
        # once per process, and must see environ before it is rewritten below; the
        # zygote's own environ stays readable (corral's containment reads its token)
        title = req["env"].get("CORRAL_PROCTITLE")
        sdk = sys.modules.get("corral.worker")
        if title and sdk is not None:
            sdk._set_title(title)
        os.environ.clear()
        os.environ.update(req["env"])
        if req.get("gate"):
            # corral places us in the agent's cgroup, then writes a line: nothing of the
            # agent runs outside it
            while os.read(0, 1) not in (b"\n", b""):
                pass
        argv = req["argv"]
        import runpy

        if argv[1] == "-m":
            sys.argv = [argv[2], *argv[3:]]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        else:
            script = argv[1]
            sys.argv = argv[1:]
            sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
            runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code & 0xFF
        else:
            print(code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        # what interpreter shutdown would do: join non-daemon threads, run atexit
        try:
            threading._shutdown()  # type: ignore[attr-defined]
            import atexit

            atexit._run_exitfuncs()
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def main() -> None:
    sock = socket.socket(fileno=int(os.environ.pop("CORRAL_ZYGOTE_FD")))
    del sys.path[0]  # '' (a script read from stdin): not the agent's
    preload = sys.argv[1:]
    try:
        # the SDK itself is part of every warm start, where the agent can import it
        with contextlib.suppress(ImportError):
            import corral.worker  # noqa: F401
        for name in preload:
            importlib.import_module(name)
    except BaseException as exc:
        _send(sock, {"error": f"preload failed: {type(exc).__name__}: {exc}"})
        return
    threads = _threads()
    if threads:
        _send(sock, {"error": "preload started threads, which a fork would not copy: "
                              + ", ".join(threads)})
        return

    def reap(signum: int, frame: Any) -> None:
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            _send(sock, {"exit": pid, "status": os.waitstatus_to_exitcode(wstatus)})

    # What every child does before the agent's code runs, done once here instead: the
    # modules _child imports (runpy.run_path imports pkgutil, and with it typing), and
    # setproctitle's extension (a dlopen per child).
    import pkgutil  # noqa: F401
    import resource  # noqa: F401
    import runpy  # noqa: F401

    osio = sys.modules.get("corral.worker.osio")
    if osio is not None:
        osio._load_title_setter()
    # The heap as it is now moves out of the collector's sight: a child's collections
    # would walk (and so copy, page by page, since walking writes) every object the
    # zygote made, in every child; the shared pages stay shared.
    gc.freeze()
    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for corral, which stops us
    _send(sock, {"ready": os.getpid()})
    while True:
        fds = array.array("i")
        try:
            data, ancdata, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(3 * fds.itemsize))
        except OSError:
            return
        if not data:
            return  # corral closed its end
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        req = json.loads(data)
        try:
            if len(fds) != 3:
                raise ValueError(f"expected 3 fds, got {len(fds)}")
            pid = os.fork()
        except Exception as exc:
            _send(sock, {"failed": req.get("id"), "error": f"{type(exc).__name__}: {exc}"})
        else:
            if pid == 0:
                _child(req, list(fds), sock)
            _send(sock, {"spawned": req["id"], "pid": pid})
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    main()
