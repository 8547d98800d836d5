"""Issue 73: what a task's idempotency key (corral/taskkeys.py) costs its submission.

    .venv/bin/python -m bench.bench_idempotency [--quick]

The real daemon in this process, one agent (examples/hello.py); `tasks.submit` through
its dispatcher (the control socket's path without the socket), each answered once its
row is committed: submissions with no key and each with a key of its own, alternated one
by one (a load that comes and goes falls on both alike). Medians and 90th percentiles of
each, the first WARM left out. Then the journal's own look-ups on the loop, with 0, 1,000
and 10,000 keys held by the tenant: `key_of` (one row by its key) and `keys_held` (the
tenant's count, counted once after a prune and then kept).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from .harness import supervisor_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
QUICK = "--quick" in sys.argv
PAIRS = 1000 if QUICK else 3000
WARM = 200 if QUICK else 500


def config(state: Path) -> str:
    return supervisor_section(state) + textwrap.dedent(f"""
        idempotency_keys_per_tenant = 100000

        [agents.h]
        command = ["{PY}", "{ROOT}/examples/hello.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_queue = 100000
        max_concurrent_tasks = 8
    """)


def summary(xs: list[float]) -> dict[str, float]:
    xs = xs[WARM:]
    return {"median_us": round(statistics.median(xs) * 1e6, 1),
            "p90_us": round(statistics.quantiles(xs, n=10)[-1] * 1e6, 1)}


async def submissions() -> dict[str, Any]:
    import msgspec

    from corral.daemon.caller import Caller
    from corral.daemon.daemon import Daemon
    from corral.supervisor import State

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-idem-"))
    try:
        (tmp / "corral.toml").write_text(config(tmp))
        d = Daemon(tmp / "corral.toml")
        run = asyncio.ensure_future(d.run())
        await d.set_up.wait()
        await d.sup.wait_state("h", State.READY, timeout=30)
        caller, raw = Caller(via="socket"), msgspec.Raw(b'{"name": "x"}')
        times: dict[str, list[float]] = {"no_key": [], "keyed": []}
        for i in range(PAIRS):
            for kind, key in (("no_key", None), ("keyed", f"k{i}")):
                params: dict[str, Any] = {"agent": "h", "input": raw}
                if key is not None:
                    params["idempotency_key"] = key
                t = time.perf_counter()
                await d.dispatcher.call(caller, "tasks.submit", params)
                times[kind].append(time.perf_counter() - t)
        d.request_stop()
        assert await asyncio.wait_for(run, 60) == 0
        return {kind: summary(xs) for kind, xs in times.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def lookups() -> dict[str, Any]:
    from corral.daemon.storeschema import open_database
    from corral.daemon.taskjournal import TaskJournalDB

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-idem-"))
    try:
        db = tmp / "corral.db"
        open_database(db).close()
        out: dict[str, Any] = {}
        for held in (0, 1_000, 10_000):
            conn = sqlite3.connect(db, isolation_level=None)
            conn.execute("DELETE FROM idempotency_keys")
            conn.executemany("INSERT INTO idempotency_keys VALUES (?, ?, ?, ?, ?)", [
                ("default", f"k{i}", f"t{i}", "d" * 64, time.time()) for i in range(held)])
            conn.close()
            journal = TaskJournalDB(db)
            t = time.perf_counter()
            journal.keys_held("default")
            first_count = time.perf_counter() - t
            t = time.perf_counter()
            for i in range(2000):
                journal.key_of("default", f"k{i}")
            out[str(held)] = {"key_of_us": round((time.perf_counter() - t) / 2000 * 1e6, 1),
                              "first_count_us": round(first_count * 1e6, 1)}
            await journal.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def main() -> None:
    print(json.dumps({"submit": await submissions(), "keys_held": await lookups()},
                     indent=1))


if __name__ == "__main__":
    asyncio.run(main())
