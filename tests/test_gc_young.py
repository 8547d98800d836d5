"""The daemon's cyclic collector after its start (decision 2135): what start-up made is
frozen, and the youngest generation's pass waits for YOUNG_OBJECTS, not Python's default,
which the requests in flight at once reached by themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from corral.daemon.startup import YOUNG_OBJECTS

ROOT = Path(__file__).resolve().parent.parent

# (a process of its own: the thresholds are the interpreter's, and pytest's must stay)
_FROZEN = """
import gc
from corral.daemon.startup import freeze_heap
before = gc.get_threshold()
freeze_heap(collect=False)
print(*before, *gc.get_threshold(), gc.get_freeze_count() > 0)
"""


def test_after_the_heap_is_frozen_the_young_generation_waits_for_young_objects() -> None:
    r = subprocess.run([sys.executable, "-c", _FROZEN], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    young, middle, old, young_after, middle_after, old_after, frozen = r.stdout.split()
    assert (young_after, middle_after, old_after, frozen) == (
        str(YOUNG_OBJECTS), middle, old, "True")
    assert int(young) < YOUNG_OBJECTS
