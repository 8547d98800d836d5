"""DBOS's side of bench/bench_durable_peers.py: a workflow of `n` sequential `@DBOS.step`
no-ops, each timed in the workflow (µs), its system database SQLite."""

from __future__ import annotations

import time
from pathlib import Path

from dbos import DBOS


@DBOS.step()
def noop(i: int) -> int:
    return i


@DBOS.workflow()
def steps(n: int) -> list[float]:
    took = []
    for i in range(n):
        t0 = time.perf_counter()
        noop(i)
        took.append((time.perf_counter() - t0) * 1e6)
    return took


@DBOS.workflow()
def stamps(n: int) -> list[float]:
    """A chain of `n` steps, each the wall clock when it ran (bench_workflow_peers)."""
    return [stamp() for _ in range(n)]


@DBOS.step()
def stamp() -> float:
    return time.time()


def launch(d: Path, url: str | None = None) -> None:
    """DBOS on SQLite under `d`, or on the Postgres database at `url`."""
    DBOS(config={"name": "corral-bench",
                 "system_database_url": url or f"sqlite:///{d}/dbos.sqlite",
                 "run_admin_server": False, "log_level": "WARNING"})
    DBOS.launch()


def stop() -> None:
    DBOS.destroy()
