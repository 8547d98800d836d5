"""Shared pieces of the side-by-side benchmarks: peers' configs, timing, reporting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import msgspec
import psutil

ROOT = Path(__file__).resolve().parent.parent
# peers are pip-installed with their bytecode; corral (editable) gets the same
subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "corral")], check=True)
PY = sys.executable
BIN = Path(PY).parent
HELLO = ROOT / "examples" / "hello.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def workdir(name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"corral-bench-{name}-"))
    return d


def report(name: str, data: dict[str, Any]) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))


# -- corral daemon ---------------------------------------------------------------------
class CorralDaemon:
    def __init__(self, d: Path, agents: str, extra: str = "",
                 launcher: list[str] | None = None) -> None:
        """`launcher`: the command that runs the daemon, `--config PATH` appended
        (default `corral daemon`)."""
        self.dir = d
        self.launcher = launcher or [str(BIN / "corral"), "daemon"]
        self.sock = d / "corral.sock"
        self.config = d / "corral.toml"
        self.config.write_text(textwrap.dedent(f"""
            [supervisor]
            socket = "{self.sock}"
            state_dir = "{d}/state"
            log_dir = "{d}/logs"
            dynamic_uids = []
            {extra}
        """) + agents)
        self.notify_path = d / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Launch; returns seconds until READY=1 (every agent answered initialize)."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [*self.launcher, "--config", str(self.config)],
            env={**ENV, "NOTIFY_SOCKET": str(self.notify_path)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.notify.settimeout(120)
        while True:
            msg = self.notify.recv(4096).decode()
            if "READY=1" in msg:
                return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.notify.close()


def pipelined_tasks(sock: socket.socket, total: int, window: int = 256,
                    params: dict[str, Any] | None = None) -> float:
    """Run `total` echo tasks through a control socket with `window` of them in flight;
    tasks per second. Only replies are counted: each `tasks.run` also sends a
    `task.accepted` notification first (counting it as a reply would double the rate);
    each must have succeeded (a failure counted would flatter the rate). `params`: more
    of `tasks.run`'s params (`local`, ...)."""
    f = sock.makefile("rb")
    enc = msgspec.json.Encoder()
    sent = got = 0
    t0 = time.perf_counter()
    while got < total:
        batch = []
        while sent < total and sent - got < window:
            batch.append(enc.encode({"jsonrpc": "2.0", "id": sent, "method": "tasks.run",
                                     "params": {"agent": "echo", "input": {"n": sent}}
                                     | (params or {})}) + b"\n")
            sent += 1
        if batch:
            sock.sendall(b"".join(batch))
        line = f.readline()
        if b'"method"' in line[:40]:  # a notification (task.accepted), not a reply
            continue
        assert b'"succeeded"' in line, line[:300]
        got += 1
    return total / (time.perf_counter() - t0)


def supervisor_section(state: Path) -> str:
    """A daemon's [supervisor] table, its socket, state and logs under `state`, stopping
    at once (the benches start and stop a daemon per sitting), its agents run as the
    bench's user (a dynamic uid could not reach the bench's interpreter under /root)."""
    return textwrap.dedent(f"""
        [supervisor]
        socket = "{state}/corral.sock"
        state_dir = "{state}/state"
        log_dir = "{state}/logs"
        drain_timeout = 0
        dynamic_uids = []
    """)


def corral_agents(n: int, command: list[str], name: str = "w", extra: str = "") -> str:
    cmd = json.dumps(command)
    return textwrap.dedent(f"""
        [agents.{name}]
        command = {cmd}
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = {n}
        start_timeout = 120
        {extra}
    """)


def hello_agents(n: int) -> str:
    """N agents (not replicas) `w0`..: SDK hello workers from the zygote, as the HTTP and
    metrics benches list and scrape them."""
    return "".join(f"""
[agents.w{i}]
command = ["{sys.executable}", "{HELLO}"]
env = {{ PYTHONPATH = "{ROOT}" }}
warm = true
start_timeout = 120
""" for i in range(n))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- supervisord -------------------------------------------------------------------------
class Supervisord:
    def __init__(self, d: Path, n: int, command: str, extra: str = "") -> None:
        self.dir = d
        self.sock = d / "supervisor.sock"
        self.conf = d / "supervisord.conf"
        (d / "logs").mkdir(exist_ok=True)
        self.conf.write_text(textwrap.dedent(f"""
            [unix_http_server]
            file = {self.sock}

            [supervisord]
            logfile = {d}/supervisord.log
            pidfile = {d}/supervisord.pid
            nodaemon = true
            minfds = 1024

            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

            [supervisorctl]
            serverurl = unix://{self.sock}

            [program:w]
            command = {command}
            process_name = %(program_name)s_%(process_num)03d
            numprocs = {n}
            startsecs = 0
            autorestart = true
            environment = PYTHONPATH="{ROOT}"
            stdout_logfile = {d}/logs/%(program_name)s_%(process_num)03d.out
            stderr_logfile = {d}/logs/%(program_name)s_%(process_num)03d.err
            {extra}
        """))
        self.proc: subprocess.Popen[bytes] | None = None

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        t = SupervisorTransport(None, None, serverurl=f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=t)

    def start(self, n: int) -> float:
        """Launch; returns seconds until all n programs are RUNNING (polled every 5 ms:
        supervisord offers no push notification of that)."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([str(BIN / "supervisord"), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                infos = self.rpc().supervisor.getAllProcessInfo()
                if len(infos) == n and all(i["statename"] == "RUNNING" for i in infos):
                    return time.perf_counter() - t0
            except (OSError, xmlrpc.client.Fault):
                pass
            time.sleep(0.005)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


# -- circus --------------------------------------------------------------------------------
class Circusd:
    def __init__(self, d: Path, n: int, command: str) -> None:
        self.dir = d
        self.ini = d / "circus.ini"
        self.ini.write_text(textwrap.dedent(f"""
            [circus]
            endpoint = ipc://{d}/endpoint
            pubsub_endpoint = ipc://{d}/pubsub
            statsd = false
            check_delay = 5

            [watcher:w]
            cmd = {command}
            numprocesses = {n}
            copy_env = true

            [env:w]
            PYTHONPATH = {ROOT}
        """))
        self.proc: subprocess.Popen[bytes] | None = None
        self.n = n

    def start(self) -> float:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([str(BIN / "circusd"), str(self.ini)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p = psutil.Process(self.proc.pid)
        while len(p.children()) < self.n:
            time.sleep(0.005)
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for c in psutil.Process().children(recursive=True):
            c.kill()


def idle_cost(pid: int, seconds: float) -> tuple[float, int]:
    """(CPU % of one core over `seconds`, RSS bytes) of one process."""
    p = psutil.Process(pid)
    t0 = p.cpu_times()
    w0 = time.perf_counter()
    time.sleep(seconds)
    t1 = p.cpu_times()
    wall = time.perf_counter() - w0
    cpu = (t1.user + t1.system - t0.user - t0.system) / wall * 100
    return cpu, p.memory_info().rss


def cleanup(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
