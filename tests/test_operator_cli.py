"""Operator experience, end to end through the CLI against a real daemon (issue 10)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


MISBEHAVE = f"""
[agents.misbehave]
command = ["{PY}", "{EXAMPLES}/misbehave.py"]
env = {{ PYTHONPATH = "{ROOT}" }}
restart = "always"
backoff_initial = 0.05
stop_timeout = 2.0
[agents.misbehave.limits]
memory_mb = 256
"""


def test_an_exit_reason_is_about_its_own_process_not_an_earlier_one(tmp: Path) -> None:
    with running_daemon(tmp, MISBEHAVE) as d:
        leak = d.cli("run", "misbehave", "--input", '{"do": "leak"}')
        assert leak.returncode == 1
        # the SDK answers the MemoryError and exits, or the worker dies first
        assert "MemoryError" in leak.stderr or "memory limit" in leak.stderr, leak.stderr
        wait_until(lambda: (s := d.status()["misbehave#0"])["state"] == "ready"
                   and s["last_exit"] == "memory limit (RLIMIT_AS 256 MiB)", what="restart")
        assert d.cli("restart", "misbehave").returncode == 0
        crash = d.cli("run", "misbehave", "--input", '{"do": "crash"}')
        assert crash.returncode == 1
        # a plain exit 3: no cap named, the process's own last stderr line carried
        assert crash.stderr.endswith(
            " lost: worker exited: exited with status 3: crashing on request\n"), crash.stderr
        wait_until(lambda: d.status()["misbehave#0"]["last_exit"]
                   == "exited with status 3: crashing on request", what="status")


def test_an_agent_that_cannot_import_shows_why_it_failed_in_status(tmp: Path) -> None:
    broken = f"""
[agents.broken]
command = ["{PY}", "-c", "import corral_no_such_module"]
max_restarts = 1
backoff_initial = 0.05
"""
    with running_daemon(tmp, broken) as d:
        st = wait_until(lambda: (s := d.status()["broken#0"])["state"] == "failed" and s,
                        what="failed")
        assert st["last_exit"] == ("exited with status 1: ModuleNotFoundError: No module "
                                   "named 'corral_no_such_module'")
        assert st["reason"] == "too many restarts (1 within 60 s); last exit: " + st["last_exit"]
        table = d.cli("status", "broken")
        assert "ModuleNotFoundError: No module named 'corral_no_such_module'" in table.stdout
