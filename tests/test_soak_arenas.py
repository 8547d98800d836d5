"""The soak's arena reader (bench/soak_arenas.py) reads a running process's pymalloc from
outside it: every live block counted to its arena, as the process's own account has them,
and each object's type named, so that what keeps the arenas made past a soak's warm-up is
named by type."""

from __future__ import annotations

import json
import subprocess
import sys

from bench import soak_arenas

from .conftest import ROOT
from .test_daemon_cli import wait_until

KEPT = 30_000
# a fresh interpreter: its arenas counted, then KEPT objects of a class of its own made
# (most of them in arenas made for them), then its own account of its blocks, and it waits
PROBE = f"""
import json, sys
sys.path.insert(0, sys.argv[1])
from corral.daemon.heapdump import _pymalloc

class Kept:
    __slots__ = ("n",)
    def __init__(self, n):
        self.n = n

before = _pymalloc()["arenas allocated current"]
kept = [Kept(n) for n in range({KEPT})]
_pymalloc()  # (its own blocks settled: the second account is the one the reader sees)
now = _pymalloc()
print(json.dumps({{"young": before, "arenas": now["arenas allocated current"],
                  "bytes": now["bytes in allocated blocks"]}}), flush=True)
sys.stdin.readline()
"""


def test_the_reader_counts_every_live_block_and_names_the_kept_objects() -> None:
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(ROOT)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert probe.stdout is not None and probe.stdin is not None
        told = json.loads(probe.stdout.readline() or "null")
        assert told is not None, probe.stderr.read() if probe.stderr else ""
        # read once it sleeps in its stdin's read, its one wait left: until then its
        # readline's own allocations may change a pool under the reader (a fresh clone's
        # run at load ~10: 2 pools unread)
        wait_until(lambda: _state(probe.pid) == "S", timeout=30, what="the probe asleep")
        seen = soak_arenas.census(probe.pid, told["young"], top=5)
    finally:
        probe.kill()
        probe.wait(timeout=30)
    assert seen["unreadable"] == 0
    assert len(seen["arenas"]) == told["arenas"]
    live = sum(b for _pools, b in seen["arenas"].values())
    # (the account's own dict, made after it was counted, and the print's line)
    assert 0 <= live - told["bytes"] < 16 << 10, (live, told["bytes"])
    kinds = {name: blocks for name, blocks, _bytes in seen["all"]}
    assert kinds.get("Kept") == KEPT, seen["all"]
    assert seen["young"][0][0] == "Kept", seen["young"]  # what the new arenas hold most


def _state(pid: int) -> str:
    """The process's state letter in /proc/PID/stat (after its name's closing paren)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]
