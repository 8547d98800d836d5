"""corral task ID --stream and --wait reconnect to a daemon that cannot be reached for
--reconnect seconds through one loop, then give up with the reason and exit 3."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .daemon_harness import corral_run


@pytest.mark.parametrize(("flag", "first"), [
    ("--stream", ""),
    ("--wait", "corral: lost the daemon while waiting for task T1; reconnecting\n")])
def test_a_daemon_that_stays_away_is_tried_for_reconnect_seconds_then_named(
        tmp_path: Path, flag: str, first: str) -> None:
    sock = tmp_path / "none.sock"
    began = time.monotonic()
    r = corral_run(["--socket", str(sock), "task", "T1", flag, "--reconnect", "0.5"], timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert time.monotonic() - began >= 0.5  # tried again until the bound, not once
    assert (r.returncode, r.stdout) == (3, ""), r.stderr
    assert r.stderr == (
        f"{first}corral: cannot reach the corral daemon at {sock}: no socket there\n"
        "start it with `corral daemon --config PATH` (or `systemctl start corral`), or "
        "point at it with --socket / CORRAL_SOCKET\n")
