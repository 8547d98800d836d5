"""Issue 74 (stores bounded): what an agent's spec revisions hold in the state database
after 30 changes of a spec carrying 1 MiB of `config`, unbounded (keep_revisions = 0,
keep_revisions_mb = 0: as before the bound) and with the defaults (50 revisions, 8 MiB).

    .venv/bin/python -m bench.bench_revisions

A real daemon each (`corral daemon`), the changes over its control socket
(`agents.update`, the agent at 0 replicas: nothing restarts), the bytes read from its
state database once it stopped.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.cli.client import Client

from .harness import PY, ROOT, CorralDaemon, report

CHANGES = 30
BLOB = "x" * (1024 * 1024)


def one(extra: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        d = CorralDaemon(Path(tmp), "", extra)
        d.start()
        try:
            with Client(d.sock) as c:
                c.call("agents.add", {"agents": {"big": {
                    "command": [PY, str(ROOT / "examples" / "hello.py")],
                    "env": {"PYTHONPATH": str(ROOT)}, "replicas": 0,
                    "config": {"blob": BLOB}}}})
                t0 = time.perf_counter()
                for n in range(CHANGES):
                    c.call("agents.update", {"name": "big", "set": {
                        "config": {"blob": BLOB, "n": n}}})
                took = time.perf_counter() - t0
        finally:
            d.stop()
        db = sqlite3.connect(Path(tmp) / "state" / "corral.db")
        count, size = db.execute(
            "SELECT count(*), sum(length(spec)) FROM revisions").fetchone()
        db.close()
        return {"revisions": count, "spec_mib": round(size / 2**20, 1),
                "ms_per_change": round(took * 1000 / CHANGES, 1)}


def main() -> None:
    report("bench_revisions", {
        "changes": CHANGES, "spec_mib_each": 1,
        "unbounded": one("keep_revisions = 0\nkeep_revisions_mb = 0"),
        "defaults": one(""),
    })


if __name__ == "__main__":
    main()
