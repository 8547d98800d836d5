"""A real `corral daemon` process for end-to-end tests, and a CLI runner.

Readiness is awaited on our own NOTIFY_SOCKET (the sd_notify protocol), never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from corral.cli.client import Client, result_type
from corral.results import LogLine

from . import forkserver
from .conftest import EXAMPLES, ROOT, SPARED, spare_the_fork_server

PY = sys.executable
# a `corral` process of a test: a Popen, or a child of the fork server with its surface
Proc = subprocess.Popen[Any] | forkserver.Forked


def corral_popen(args: list[str], env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, stdin: Any = None,
                 stdout: Any = None, stderr: Any = None, text: bool = False) -> Proc:
    """`python -m corral ARGS` (env: os.environ's by default, PYTHONPATH this checkout's),
    forked from this process's fork server (tests/forkserver.py: no interpreter start, no
    imports), or started by subprocess with CORRAL_TEST_FORK=0 or with an environment
    whose interpreter settings (PYTHON*, the locale) are not the server's."""
    env = {**(os.environ if env is None else env)}
    env.setdefault("PYTHONPATH", str(ROOT))
    if forkserver.enabled():
        server = forkserver.server()
        spare_the_fork_server()  # (started now, maybe, beside an in-process daemon)
        if server.serves(env):
            return server.popen(args, env=env, cwd=None if cwd is None else os.fspath(cwd),
                                stdin=stdin, stdout=stdout, stderr=stderr, text=text)
    return subprocess.Popen([PY, "-m", "corral", *args], env=env, cwd=cwd, stdin=stdin,
                            stdout=stdout, stderr=stderr, text=text)


# how long a test's CLI call may take before it is taken for hung: an upgrade execs a new
# daemon that starts again what it keeps, and at a loaded host's pace that outlasted the
# half minute this was (a fresh clone's upgrades); a hang is still caught, by the tests'
# deadlines
CLI_PATIENCE = 90.0


def corral_run(args: list[str], input: str | None = None, timeout: float | None = None,
               env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
               text: bool = True) -> subprocess.CompletedProcess[Any]:
    """What subprocess.run([PY, "-m", "corral", *args], capture_output=True, text=text,
    input=input, timeout=timeout, env=env, cwd=cwd) does, by corral_popen (PYTHONPATH
    this checkout's, if env has none)."""
    proc = corral_popen(args, env=env, cwd=cwd,
                        stdin=subprocess.PIPE if input is not None else None,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert proc.returncode is not None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def config_text(agents: str, sock: Path, state: Path, extra: str = "") -> str:
    # no drain unless a test asks for one (tests/test_drain.py): a test's daemon stops
    # at once, with whatever its agents still run handed over, as its assertions expect
    drain = "" if "drain_timeout" in extra else "drain_timeout = 0"
    # the tests' agents run as the daemon's user unless a test asks for dynamic users
    # (tests/test_dynamic_users.py): their interpreter and files are under root's 0700
    # directories (pyenv in /root, pytest's tmp_path), which no dynamic uid may reach
    dynamic = "" if "dynamic_uids" in extra else "dynamic_uids = []"
    return textwrap.dedent(f"""
        [supervisor]
        socket = "{sock}"
        state_dir = "{state}"
        log_dir = "{state}/logs"
        heartbeat_interval = 0.2
        heartbeat_timeout = 2.0
        {drain}
        {dynamic}
        {extra}
    """) + textwrap.dedent(agents)


def hello(name: str, replicas: int = 1, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{EXAMPLES}/hello.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = {replicas}
        backoff_initial = 0.05
        stop_timeout = 10.0
    """) + textwrap.dedent(extra)


def counting_fleet(tmp: Path, name: str, script: str, agent_extra: str = "",
                   server_extra: str = "") -> str:
    """Agent `name` running tests/`script` with a retry, its tools the counting MCP
    server's, which counts each call it answers in tmp/server-count."""
    here = Path(__file__).parent
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{here}/{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 1
        backoff_initial = 0.05
        tools = ["counting__*"]
        {agent_extra}

        [mcp_servers.counting]
        command = ["{PY}", "{here}/servers/counting_mcp.py", "{tmp}/server-count"]
        {server_extra}
    """)


def sleeper(name: str) -> str:
    """An agent of examples/misbehave.py: it does what each task's input says (sleep,
    crash, ...)."""
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0
    """)


def problem(status: int, title: str, detail: str, code: int | None = None
            ) -> dict[str, Any]:
    """The RFC 9457 body of an HTTP error of the API."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail}
    if code is not None:
        body["code"] = code
    return body


class Notifications:
    """Our own datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.seen: list[dict[str, str]] = []

    # a limit, not a wait (it returns at the notification): a daemon with agents took
    # past 20 s to be ready at the start of a parallel run at load ~15 (test_teams)
    def wait_for(self, key: str, timeout: float = 60.0,
                 proc: Proc | None = None) -> dict[str, str]:
        for msg in self.seen:
            if key in msg:
                return msg
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {key} notification within {timeout} s: {self.seen}")
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"the daemon exited with {proc.returncode}: {err}")
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.seen.append(msg)
            if key in msg:
                return msg

    def drain(self) -> None:
        """Forget every notification received so far, read or not."""
        self.seen.clear()
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


class Daemon:
    def __init__(self, directory: Path, agents: str = "", extra: str = "",
                 watchdog_usec: int | None = None, cgroup: Path | None = None,
                 wrapper: list[str] | None = None) -> None:
        self.dir = directory
        self.sock = directory / "corral.sock"
        self.state = directory / "state"
        self.config = directory / "corral.toml"
        self.config.write_text(config_text(agents, self.sock, self.state, extra))
        self.notify = Notifications(directory)
        self.watchdog_usec = watchdog_usec
        self.cgroup = cgroup  # start the daemon in this cgroup (v2), as systemd would
        self.wrapper = wrapper or []  # what execs the daemon (setpriv, to drop capabilities)
        self.proc: Proc | None = None

    def start(self, wait_ready: bool = True) -> Daemon:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path),
               "PYTHONPATH": str(ROOT)}
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        self.notify.drain()  # a READY of an earlier daemon (a reload sends one) is stale
        args = ["daemon", "--config", str(self.config)]
        if self.wrapper or self.cgroup is not None:
            argv = [*self.wrapper, PY, "-m", "corral", *args]
            if self.cgroup is not None:  # in its cgroup before its first instruction
                argv = ["/bin/sh", "-c",
                        f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "in-cgroup",
                        *argv]
            self.proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        else:
            self.proc = corral_popen(args, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        if wait_ready:
            self.notify.wait_for("READY", proc=self.proc)
        return self

    def said(self) -> str:
        """What the daemon wrote on stderr, read to its end (once it has exited), its
        notices of a stalled event loop left out: a loaded machine's, they come whenever a
        stall ends, after the line a test expects the daemon to end with."""
        assert self.proc is not None and self.proc.stderr is not None
        return "".join(line for line in self.proc.stderr.read().decode().splitlines(True)
                       if "event loop stalled for" not in line)

    def cli(self, *args: str, input: str | None = None, user: str | None = None,
            timeout: float = CLI_PATIENCE) -> subprocess.CompletedProcess[str]:
        argv = ["--socket", str(self.sock), *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if user is not None:  # (the fork server runs as this process's user)
            return subprocess.run(
                [PY, "-m", "corral", *argv], capture_output=True, text=True, input=input,
                timeout=timeout, env=env, user=user)
        return corral_run(argv, input=input, timeout=timeout, env=env)

    def json(self, *args: str) -> Any:
        r = self.cli(*args, "--json")
        # `status` exits 3 when a replica is failed or not running; the JSON is printed
        assert r.returncode == 0 or (args[0] == "status" and r.returncode == 3), r.stderr
        return msgspec.json.decode(r.stdout)

    def ask(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """A control method's result as its command's `--json` prints it, asked on the
        control socket: what the tests poll (status, nodes) is asked thousands of times,
        and a CLI's start is ~0.1 s of CPU each (tests of a command itself run it)."""
        with Client(self.sock) as c:
            return msgspec.to_builtins(c.call(method, params, result=result_type(method)))

    def task(self, task_id: str) -> dict[str, Any]:
        """A task's record as `corral task ID --json` prints it, asked on the socket (what
        a test waits on: a CLI started at every look of a poll costs ~0.1 s of CPU)."""
        return dict(self.ask("tasks.get", {"task_id": task_id}))

    def logs(self, *names: str, lines: int = 50) -> str:
        """What `corral logs [NAMES] -n LINES` prints, asked on the socket (a wait for a
        line looks at the logs many times)."""
        got = self.ask("logs.tail", {"names": list(names), "lines": lines})["lines"]
        return "".join(f"{LogLine(*line).render()}\n" for line in got)

    def status_json(self, *names: str) -> dict[str, Any]:
        """`corral status [NAMES] --json` as it prints it, asked on the socket."""
        return dict(self.ask("agents.status", {"names": list(names)}))

    def status(self) -> dict[str, dict[str, Any]]:
        """Every replica by "name#replica", as `corral status --json` lists them."""
        return {f"{a['name']}#{a['replica']}": a
                for a in self.ask("agents.status", {"names": []})["agents"]}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # how far its shutdown got, in the failing test's report
            log = self.state / "logs" / "corral.log"
            tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
            print(f"the daemon did not stop within {timeout} s; the end of its log:",
                  *tail, sep="\n")
            raise
        if rc != 0 and self.proc.stderr is not None:
            # why, in the failing test's report (a traceback the daemon died with)
            print(f"the daemon exited {rc}; its stderr:\n{self.proc.stderr.read().decode()}")
        return rc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGTERM first: the daemon stops its agents (their own sessions would outlive
            # a SIGKILLed daemon); SIGKILL if it does not go
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()


@contextlib.contextmanager
def running_daemon(tmp: Path, agents: str, extra: str = "") -> Iterator[Daemon]:
    """A started daemon that must stop cleanly (exit 0) when the test is done."""
    d = Daemon(tmp, agents, extra=extra)
    try:
        d.start()  # inside: a daemon that never gets ready is still stopped
        yield d
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def shared_tmpdir() -> Path:
    """A directory other users may enter (pytest's tmp_path is 0700 under root)."""
    d = Path(tempfile.mkdtemp(prefix="corral-test-"))
    d.chmod(0o755)
    return d


@contextlib.asynccontextmanager
async def in_process(tmp_path: Path, agents: str, toml: str = "", supervisor: str = ""
                     ) -> AsyncIterator[Any]:
    """The real daemon (corral.daemon.daemon.Daemon) in this test's event loop, with
    `agents` and more TOML (e.g. an [http] table) after them, and `supervisor` lines in
    its [supervisor] table; every agent serving before it is handed over, and the daemon
    stopped (and its exit status checked) after."""
    from corral.daemon.daemon import Daemon as InProcess
    from corral.supervisor import State

    config = tmp_path / "corral.toml"
    config.write_text(config_text(agents, tmp_path / "corral.sock", tmp_path / "state",
                                  supervisor) + toml)
    d = InProcess(config, spared=SPARED)
    run = asyncio.ensure_future(d.run())
    try:
        set_up = asyncio.ensure_future(d.set_up.wait())
        await asyncio.wait([run, set_up], return_when=asyncio.FIRST_COMPLETED)
        set_up.cancel()
        assert not run.done(), f"the daemon exited with {run.result()}"
        # serving, not Ready alone: a task the daemon resumed at its start (a call carried
        # over) may have taken a replica through Ready to Busy and Idle before this looks
        sup = d.sup
        serving = {State.READY, State.BUSY, State.IDLE}
        for name, agent in sup.agents.items():
            for i in range(len(agent.replicas)):
                await sup.wait_state(name, serving, replica=i, timeout=30)
        yield d
    finally:
        d.request_stop()
        assert await asyncio.wait_for(run, 30) == 0


def _port_band() -> range:
    """The ports `free_port` hands out in this process: below the kernel's ephemeral range
    (no connect's source port, no one's bind to port 0 lands there), and a band of its
    own per pytest-xdist worker, so no other worker of the run hands one out."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first = 10000
    if low - first < 1000:  # an ephemeral range that starts low: it then is the band
        first, low = low, 65536
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count <= 1:
        return range(first, low)
    size = (low - first) // count
    start = first + int(worker[2:]) % count * size
    return range(start, start + size)


_BAND = _port_band()


def free_port() -> int:
    """A loopback TCP port nobody holds now (for a server the test starts), from this
    process's band: between this check and the server's bind, nothing else in this run
    and nothing the kernel hands out takes it."""
    for _ in range(200):
        port = random.choice(_BAND)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {_BAND.start}..{_BAND.stop - 1} after 200 tries")

