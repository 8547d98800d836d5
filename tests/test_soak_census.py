"""The soak's census (bench/soak_census.py) runs inside the daemon it measures, so it must
leave what it measures as it found it: a take interns no string. CPython 3.11 makes a C
type's `__module__` anew at each read and interns it, and a census that read it of every
object it walked took hundreds of slots of the interpreter's table of interned strings a
take, let go at once, until the table doubled (a 1.83 MiB block in the daemon's thread
arena, read as the daemon's own growth by the soak's fit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a fresh interpreter with the daemon's modules (C types among the objects walked, and
# objects of corral's): its table read through its memory (bench/soak_interned.py) before
# and after a take
PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import corral.daemon.daemon
from bench import soak_census
from bench.soak_interned import Table
table = Table(os.getpid())
soak_census.take()  # (the first take's own imports settled)
before = table.read()
census = soak_census.take()
print(json.dumps({"before": before, "after": table.read(),
                  "classes": sum(census["classes"].values())}))
"""


def test_a_census_takes_no_slot_of_the_interned_strings_table() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["classes"] > 0  # it walked to corral's objects
    # (live strings, free slots before a rebuild, slots): the same after a take
    assert seen["after"] == seen["before"]
