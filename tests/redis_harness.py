"""A real redis-server for the cluster tests: each test starts its own on a free port,
its files in the test's directory, configured as docs/cluster.md asks of production
(AOF on, `appendfsync everysec`, `maxmemory-policy noeviction`; `always` for a test that
counts acknowledged writes across a kill), and kills it by pid.

`RedisServer.restart()` is the chaos tests' fault: kill -9, then a new server on the
same port and directory, which loads what the AOF held.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .conftest import SPARED
from .daemon_harness import free_port

REDIS_SERVER = shutil.which("redis-server")
START_TIMEOUT = 10.0


def _ping(port: int, timeout: float = 0.5) -> bool:
    """PING over a plain socket: the harness does not lean on the client under test."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None,
                 appendfsync: str = "everysec", args: tuple[str, ...] = ()) -> None:
        self.dir = directory
        # "always" where a test asserts that no acknowledged write is lost to a kill -9:
        # with everysec Redis holds its AOF writes back while a background fsync is slow
        # (up to 2 s), and answers meanwhile (docs/cluster.md)
        self.appendfsync = appendfsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = args  # more of redis-server's options (a replica's --replicaof)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--maxmemory-policy", "noeviction",
                # no RDB snapshots: the AOF is what a restart loads, and nothing is
                # written outside this directory
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
                *self.args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        # the test's, not an agent's: an in-process daemon beside it (its process the
        # server's parent) sweeps re-parented children after any agent's exit, and would
        # kill it as an orphan and reap its status (conftest's SPARED)
        SPARED.add(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                                   f"{err}{self._log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING within "
                                   f"{START_TIMEOUT:g} s{self._log_tail()}")
            time.sleep(0.02)
        return self

    def _log_tail(self) -> str:
        log = self.dir / "redis.log"
        return ("\n" + "\n".join(log.read_text().splitlines()[-5:])) if log.exists() else ""

    def kill(self) -> None:
        """kill -9 by pid: what the AOF has synced is what survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None:
            SPARED.discard(self.proc.pid)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def restart(self) -> RedisServer:
        """Killed, then started again from its AOF on the same port."""
        self.kill()
        return self.start()


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.kill()

