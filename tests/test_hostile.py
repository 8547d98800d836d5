"""Hostile and careless peers, and exhausted resources, against a real daemon process:
the daemon stays responsive and bounded, and never blames agents for its own stalls
(DESIGN section 9)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from .daemon_harness import Daemon, hello, shared_tmpdir


def wait_until(fn: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(tmp: Path) -> Iterator[Daemon]:
    d = Daemon(tmp, hello("hello") + hello("other"))
    d.start()
    yield d
    try:
        if d.proc and d.proc.poll() is None:
            assert d.stop() == 0
    finally:
        d.close()


def log_lines(d: Daemon, source: str = "corral", n: int = 200) -> list[str]:
    r = d.cli("logs", source, "-n", str(n), "--json")
    assert r.returncode == 0, r.stderr
    return [msgspec.json.decode(x)["text"] for x in r.stdout.splitlines()]


def healthy(d: Daemon) -> dict[str, dict[str, Any]]:
    """Every agent ready and never restarted; `corral status` answers within 2 s."""
    t0 = time.monotonic()
    status = d.status()
    assert time.monotonic() - t0 < 2.0
    assert {k: (a["state"], a["restarts"]) for k, a in status.items()} == \
        {k: ("ready", 0) for k in status}
    return status


# -- the daemon's own stalls --------------------------------------------------------------
def test_a_stalled_daemon_does_not_blame_its_agents_and_logs_the_stall(daemon: Daemon) -> None:
    before = healthy(daemon)
    assert daemon.proc is not None
    # stopped for longer than heartbeat_timeout (2 s): no pipe is read meanwhile
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    time.sleep(3.5)  # the stall itself is what is tested: it has to last
    os.kill(daemon.proc.pid, signal.SIGCONT)
    # well past another heartbeat_timeout after the stall: nobody was taken for hung
    time.sleep(2.5)
    after = healthy(daemon)
    assert [a["pid"] for a in after.values()] == [a["pid"] for a in before.values()]
    lines = [ln for ln in log_lines(daemon) if "loop stalled" in ln]
    assert len(lines) == 1
    assert lines[0].startswith("event loop stalled for 3.")
    assert lines[0].endswith(" s (not counted against any worker's heartbeat)")
    stats = daemon.json("stats")["supervisor"]
    assert stats["loop_stalls"] == 1 and 3.0 < stats["longest_stall"] < 10
