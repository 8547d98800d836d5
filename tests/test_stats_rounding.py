"""`corral stats` rounds by one rule (issue 36, item 4): counts as integers, averages and
percentages to one decimal, latencies as `millis` says them; the history table's gauges
are counts at the raw resolution and averages in a roll-up."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from corral.cli.render import stamp
from corral.daemon.history import COLUMNS, MINUTE, RAW, bucket_of

from .daemon_harness import Daemon, hello


def _row(resolution: int, at: float, **values: float) -> tuple[float, ...]:
    row = dict.fromkeys(COLUMNS, 0.0)
    row.update(resolution=resolution, time=at, agent="", **values)
    return tuple(row.values())  # type: ignore[arg-type]


def test_stats_history_prints_counts_averages_and_percentages_alike(tmp_path: Path) -> None:
    d = Daemon(tmp_path, hello("hello"))
    try:
        d.start()
        assert d.stop() == 0
        minute = (int(time.time()) // 60 - 10) * 60.0
        raw = minute + 17.0
        # seven tasks of 0.1 s, one an error, in a minute that saw 1.5 agents on average
        times = {f"h{bucket_of(0.1)}": 7}
        db = sqlite3.connect(d.state / "corral.db")
        with db:
            db.executemany(f"INSERT INTO metrics_history ({', '.join(COLUMNS)}) VALUES "
                           f"({', '.join('?' * len(COLUMNS))})", [
                _row(MINUTE, minute, agents=1.5, replicas=2.4, serving=2.0,
                     cpu_percent=12.345, rss_bytes=3 * 1024 * 1024, queued=1 / 3,
                     seconds=60, finished=7, errors=1, exec_sum=0.7, exec_count=7, **times),
                _row(RAW, raw, agents=2, replicas=3, serving=3, cpu_percent=4.04,
                     rss_bytes=1024 * 1024, queued=5, seconds=10, finished=2, errors=0,
                     exec_sum=0.2, exec_count=2, **{f"h{bucket_of(0.1)}": 2})])
        db.close()
        d.start()
        out = d.cli("stats", "--since", "1h", "--resolution", "minute").stdout
        line = next(ln for ln in out.splitlines() if ln.startswith(stamp(minute)))
        # agents, serving/replicas, CPU%, RSS, queued, per minute, error %, latencies
        assert line.split() == [*stamp(minute).split(), "1.5", "2.0/2.4", "12.3", "3.0M",
                                "0.3", "7.0", "14.3", "100.0/75.0/97.5"]
        out = d.cli("stats", "--since", "1h", "--resolution", "raw").stdout
        line = next(ln for ln in out.splitlines() if ln.startswith(stamp(raw)))
        assert line.split() == [*stamp(raw).split(), "2", "3/3", "4.0", "1.0M", "5",
                                "12.0", "0.0", "100.0/75.0/97.5"]
        assert d.stop() == 0
    finally:
        d.close()
