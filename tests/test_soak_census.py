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

import pytest

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


# a census in its thread, every 50 ms, in a process whose `sys.modules` holds a name of
# corral's that is no module (a census walks each such module's top level): the censuses
# fail and say so, and once the name is gone the next one is whole
FAILING = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from bench import soak_census
out = sys.argv[2]

def lines():
    with open(out) as f:
        return [json.loads(line) for line in f]

def wait_for(ok):
    deadline = time.monotonic() + 60
    while not ok(lines()):
        if time.monotonic() > deadline:
            raise SystemExit(f"not seen: {lines()}")
        time.sleep(0.01)

open(out, "w").close()
sys.modules["corral_no_module"] = 5
soak_census.start(out, 0.05)
wait_for(lambda rows: rows)
del sys.modules["corral_no_module"]
wait_for(lambda rows: "sizes" in rows[-1])
"""


def test_a_census_that_fails_says_why_and_the_next_one_is_taken(tmp_path: Path) -> None:
    out = tmp_path / "census.jsonl"
    done = subprocess.run([sys.executable, "-c", FAILING, str(ROOT), str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["error"] == "TypeError: vars() argument must have __dict__ attribute"
    assert set(rows[0]) == {"error", "seconds", "gc_objects"}
    assert "error" not in rows[-1] and rows[-1]["classes"] is not None


def test_the_reader_names_a_failed_census_and_reads_the_others(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import soak_census

    whole = {"classes": {"corral.X": 1}, "sizes": {"corral.X.items": 8},
             "largest": {"corral.X.items": 8}}
    rows = [{**whole, "seconds": 600}, {"error": "TypeError: no", "seconds": 660},
            {**whole, "seconds": 720, "sizes": {"corral.X.items": 20},
             "largest": {"corral.X.items": 20}},
            {**whole, "seconds": 780, "sizes": {"corral.X.items": 26},
             "largest": {"corral.X.items": 26}}]
    census = tmp_path / "census.jsonl"
    census.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert soak_census.main([str(census), "--warmup", "600"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == "the census at 660 s failed: TypeError: no"
    assert said[1] == "3 censuses, 600 s to 780 s"
    assert said[3].split() == ["corral.X.items", "8", "->", "26", "+360"]
