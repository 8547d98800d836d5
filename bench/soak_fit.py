"""The soak's gauges: what it samples of the daemon over time, and the slope of each.

A sample is the daemon's RSS, open fds and threads (psutil on its pid), and the bytes the
records of the state database and of the trace store weigh (their pages in use). The process's
gauges start afresh at each start of the daemon (a restart, or the re-execution of an
upgrade), so their slope is fitted within each life of it (one least-squares line with
an intercept per life, a common slope: growth while a daemon runs, never the drop of a
restart); the files outlive the process, so theirs is one line over every sample. Both
leave out each life's first `warmup` seconds, where a daemon that holds nothing yet fills
its caches and its bounded stores (`journal_max_tasks`, `keep_spans`) to their bound.

A sample also counts the daemon's processes below it (`agents`: its agents' replicas and
whatever they run), which no gauge is: each replica holds about six of the daemon's fds,
and `fit_beside` takes the fds' slope with the agents alive at each sample accounted
for (the suite's short soak, tests/test_soak.py, whose few seconds of a life an agent
more or less at a sample would otherwise sway).
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

MIB = 1 << 20
TABLES_EVERY = 30.0  # seconds between two looks at the state database's tables


@dataclass(frozen=True)
class Gauge:
    """One series: its key in a sample, how it is shown, and whether it belongs to one
    life of the process (fitted within each) or to the files that outlive it."""

    key: str
    title: str
    per_life: bool


GAUGES = (
    Gauge("rss_mib", "daemon RSS (MiB)", True),
    Gauge("fds", "daemon open fds", True),
    Gauge("threads", "daemon threads", True),
    Gauge("state_db_mib", "state database (MiB)", False),
    Gauge("trace_store_mib", "trace store (MiB)", False),
)


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the soak began
    life: int  # which start of the daemon (0: the first; a restart or an upgrade: +1)
    since_start: float  # seconds since that start
    values: dict[str, float]


@dataclass(frozen=True)
class Slope:
    """A least-squares slope per hour, its standard error, and the samples fitted."""

    per_hour: float
    stderr: float
    samples: int


def _sqlite_bytes(path: Path) -> int:
    """The bytes of a SQLite database's pages that hold data, as a reader sees it now
    (its WAL's commits included, its free pages not): what the records weigh. The file
    and its WAL on disk are a high-water mark the WAL's checkpoints and a daemon's exit
    move back and forth; a read-only connection of our own neither writes nor
    checkpoints."""
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)
    finally:
        db.close()


def tables(path: Path) -> dict[str, int]:
    """The bytes each table (and index) of a SQLite database holds (its dbstat)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {name: int(size) for name, size in db.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name")}
    finally:
        db.close()


def du(directory: Path) -> int:
    """The bytes of every file under a directory (its links not followed), as it is now:
    files come and go as it is walked, and one gone is not counted."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def measure(pid: int, state_dir: Path, seen: set[tuple[int, float]] | None = None
            ) -> dict[str, float]:
    """One reading of every gauge (psutil.Error if the process is gone, sqlite3.Error
    if a database could not be read now); each process below the daemon added to `seen`
    (its pid and when it began)."""
    p = psutil.Process(pid)
    with p.oneshot():
        rss = p.memory_info().rss
        threads = p.num_threads()
        fds = p.num_fds()
    children = p.children(recursive=True)
    agents = len(children)
    if seen is not None:
        for c in children:
            with contextlib.suppress(psutil.Error):
                seen.add((c.pid, c.create_time()))
    return {"rss_mib": rss / MIB, "fds": float(fds), "threads": float(threads),
            "agents": float(agents),
            "state_db_mib": _sqlite_bytes(state_dir / "corral.db") / MIB,
            "trace_store_mib": _sqlite_bytes(state_dir / "traces.db") / MIB}


class Sampler(threading.Thread):
    """Reads the gauges every `interval` s while `where()` names a running daemon (its
    pid, its life and when that life began); skips the moments it names none (a
    restart or an upgrade under way)."""

    def __init__(self, where: Callable[[], tuple[int, int, float] | None],
                 state_dir: Path, interval: float, log_dir: Path | None = None) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.where = where
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.interval = interval
        self.t0 = time.monotonic()
        self.samples: list[Sample] = []
        # what each table of the state database holds, now and then: (t, table -> bytes)
        self.tables: list[tuple[float, dict[str, int]]] = []
        # the bytes of the state and log directories on disk, now and then: (t, state, logs)
        self.dirs: list[tuple[float, int, int]] = []
        # every process seen below the daemon (pid, when it began): none outlives it
        self.below: set[tuple[int, float]] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            at = self.where()
            if at is None:
                continue
            pid, life, began = at
            try:
                values = measure(pid, self.state_dir, self.below)
            except (psutil.Error, sqlite3.Error):
                continue  # it went between where() and the reading, or held a lock
            now = time.monotonic()
            self.samples.append(Sample(now - self.t0, life, now - began, values))
            if not self.tables or now - self.t0 - self.tables[-1][0] >= TABLES_EVERY:
                with contextlib.suppress(sqlite3.Error):
                    self.tables.append((now - self.t0, tables(self.state_dir / "corral.db")))
                self.dirs.append((now - self.t0, du(self.state_dir),
                                  du(self.log_dir) if self.log_dir is not None else 0))


def orphans(below: set[tuple[int, float]], within: float = 10.0) -> list[str]:
    """The processes of `below` still alive (each as `pid name`), once they have had
    `within` s to go: what a stopped daemon left behind."""
    deadline = time.monotonic() + within
    while True:
        alive = []
        for pid, began in sorted(below):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == began and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def fit(samples: list[Sample], gauge: Gauge, warmup: float) -> Slope | None:
    """The gauge's slope over the samples past the warm-up: within each life of the
    daemon for a gauge of the process, over all of them for a file. None with fewer than
    three samples to fit."""
    kept = [s for s in samples if s.since_start >= warmup] if gauge.per_life else \
        [s for s in samples if s.t >= warmup]
    groups: dict[int, list[Sample]] = {}
    for s in kept:
        groups.setdefault(s.life if gauge.per_life else 0, []).append(s)
    sxx = sxy = 0.0
    resid: list[tuple[list[Sample], float, float]] = []
    for group in groups.values():
        if len(group) < 2:
            continue
        mt = sum(s.t for s in group) / len(group)
        my = sum(s.values[gauge.key] for s in group) / len(group)
        sxx += sum((s.t - mt) ** 2 for s in group)
        sxy += sum((s.t - mt) * (s.values[gauge.key] - my) for s in group)
        resid.append((group, mt, my))
    n = sum(len(g) for g, _, _ in resid)
    if n < 3 or sxx == 0:
        return None
    b = sxy / sxx
    ssr = sum((s.values[gauge.key] - my - b * (s.t - mt)) ** 2
              for group, mt, my in resid for s in group)
    dof = max(1, n - len(resid) - 1)
    se = math.sqrt(ssr / dof / sxx)
    return Slope(b * 3600, se * 3600, n)


def fit_beside(samples: list[Sample], gauge: Gauge, along: str, warmup: float
               ) -> Slope | None:
    """A gauge of the process's slope within each life, fitted beside another series
    that sways it (`along`, e.g. the agents alive at each sample for the fds): one
    least-squares plane, an intercept per life, a common slope in time and a common
    coefficient of `along`. None with too few samples; the slope alone when `along`
    never moved."""
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        if s.since_start >= warmup and along in s.values:
            groups.setdefault(s.life, []).append(s)
    rows: list[tuple[float, float, float]] = []  # (t, along, gauge), centred per life
    used = 0
    for group in groups.values():
        if len(group) < 3:
            continue
        used += 1
        mt = sum(s.t for s in group) / len(group)
        mx = sum(s.values[along] for s in group) / len(group)
        my = sum(s.values[gauge.key] for s in group) / len(group)
        rows += [(s.t - mt, s.values[along] - mx, s.values[gauge.key] - my) for s in group]
    stt = sum(t * t for t, _, _ in rows)
    if len(rows) < 4 or stt == 0:
        return None
    stx = sum(t * x for t, x, _ in rows)
    sxx = sum(x * x for _, x, _ in rows)
    sty = sum(t * y for t, _, y in rows)
    sxy = sum(x * y for _, x, y in rows)
    det = stt * sxx - stx * stx
    if sxx == 0 or det <= 1e-9 * stt * sxx:
        b, k, var_b = sty / stt, 0.0, 1.0 / stt
    else:
        b = (sty * sxx - sxy * stx) / det
        k = (sxy * stt - sty * stx) / det
        var_b = sxx / det
    ssr = sum((y - b * t - k * x) ** 2 for t, x, y in rows)
    dof = max(1, len(rows) - used - 2)
    return Slope(b * 3600, math.sqrt(ssr / dof * var_b) * 3600, len(rows))
