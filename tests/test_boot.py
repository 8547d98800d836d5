"""`corral daemon`'s start as the console script runs it (bench/bench_boot.py measures its
CPU): what its imports made is out of the collector's passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the daemon refused its config (its start ends before it freezes its own heap): what the
# collector still tracks at its exit, and what was frozen
_COLLECTOR = """
import atexit, gc, sys
atexit.register(lambda: print(gc.isenabled(), len(gc.get_objects()), gc.get_freeze_count(),
                              file=sys.__stdout__))
sys.argv = ["corral", *sys.argv[1:]]
from corral.cli.entry import main
main()
"""


def test_the_daemons_imports_are_frozen_as_the_clis(tmp_path: Path) -> None:
    """The daemon's modules are imported with the collector off and frozen, as the CLI's
    are (entry.long_lived_imports): its passes while importing found nothing to free, and
    were a share of a cold boot's CPU. What the collector still tracks is what was made
    after, a small part of what was frozen."""
    config = tmp_path / "corral.toml"
    config.write_text("bad = 1\n")
    r = subprocess.run([sys.executable, "-c", _COLLECTOR, "daemon", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (r.returncode, r.stderr) == (
        1, f"corral: invalid config: {config}: bad: unknown top-level key\n")
    enabled, tracked, frozen = r.stdout.split()
    assert enabled == "True"
    assert int(tracked) * 10 < int(frozen), r.stdout
