"""The metrics history: fleet and per-agent figures sampled every `[http] history_interval`
seconds into the state database, rolled up per minute and per hour (docs/http.md).

Rows, roll-ups and pruning are one transaction on the store's writer thread. Roll-ups are
SQL over what is stored, bounded by the sample's own time: a restart or a gap loses
nothing, and a test drives it with the times it chooses (`History.tick(now)`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import itertools
import operator
import sqlite3
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..methods import MetricsHistoryResult, MetricsSample

if TYPE_CHECKING:
    from ..supervisor.agents import Agents
    from ..supervisor.config import HttpSettings
    from ..supervisor.tasks import TaskManager
    from ..supervisor.tasks.model import Task


class Store(Protocol):
    """What the history needs of the StateStore."""

    path: Path
    writer: Any


# upper bounds (seconds) of the task time buckets, shared by /metrics' histograms and the
# stored rows, so a roll-up merges them exactly; the last bucket is +Inf
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           120.0, 300.0, 600.0)
NBUCKETS = len(BUCKETS) + 1

RAW, MINUTE, HOUR = 0, 60, 3600
RESOLUTIONS = {"raw": RAW, "minute": MINUTE, "hour": HOUR}
# per-agent rows kept per resolution, whatever the fleet: past it the oldest go first (the
# fleet's own rows are one per period and only follow the retention)
MAX_AGENT_ROWS = 200_000
MAX_POINTS = 20_000  # samples one stats.history answer carries (the newest)
POLL_EVERY = 1.0  # seconds between two looks at the tasks finished (TaskTimes)
FLEET = ""  # the agent column of the fleet's rows

_H = [f"h{i}" for i in range(NBUCKETS)]
_GAUGES = ("agents", "replicas", "serving", "cpu_percent", "rss_bytes", "queued", "running")
_SUMS = ("seconds", "finished", "errors", "exec_sum", "exec_count", *_H)
COLUMNS = ("resolution", "time", "agent", *_GAUGES, *_SUMS)
# and whose an agent's row is: its tenant's when sampled ('' the fleet's, and a roll-up's
# of a period in which the name changed hands: the operator's alone); schema 21
WRITTEN = (*COLUMNS, "tenant")


# a time's bucket, its index (Prometheus' `le`: at most the bound; a negative time's is 0)
bucket_of = functools.partial(bisect.bisect_left, BUCKETS)


def quantile(counts: list[int], q: float) -> float | None:
    """The q-quantile (seconds) of bucketed times, as Prometheus' histogram_quantile."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(BUCKETS):  # +Inf: the last finite bound is all that is known
                return BUCKETS[-1]
            low = BUCKETS[i - 1] if i else 0.0
            return low + (BUCKETS[i] - low) * (rank - seen) / n
        seen += n
    return BUCKETS[-1]  # pragma: no cover - rank <= total


class Times(msgspec.Struct):
    """Bucketed times: counts per bucket, their sum and number."""

    buckets: list[int] = msgspec.field(default_factory=lambda: [0] * NBUCKETS)
    sum: float = 0.0
    count: int = 0


def add_each(seconds: list[float], *times: Times) -> None:
    """Times counted in each of `times`, a negative one as 0 (their buckets found once,
    in C: a call a time was most of what a finished task cost the loop)."""
    counts = Counter(map(bucket_of, seconds))
    total, n = sum(filter(_POSITIVE, seconds)), len(seconds)
    for t in times:
        buckets = t.buckets
        for i, k in counts.items():
            buckets[i] += k
        t.sum += total
        t.count += n


_POSITIVE = (0.0).__lt__  # (what a sum of times clamped at 0 adds)


class AgentTimes(msgspec.Struct):
    """An agent's task times: since first seen (/metrics), and since the last sample."""

    duration: Times = msgspec.field(default_factory=Times)
    wait: Times = msgspec.field(default_factory=Times)
    interval: Times = msgspec.field(default_factory=Times)


class TaskTimes:
    """Execution and queue-wait times of finished tasks, read from the task manager's
    finished tasks back to the last one seen: O(1) per task, nothing added to the engine.
    More finishing between two looks than the manager keeps are counted, not timed."""

    def __init__(self, finished: OrderedDict[str, Task]) -> None:
        self.finished = finished
        self.last: str | None = None
        self.agents: defaultdict[str, AgentTimes] = defaultdict(AgentTimes)
        # the agents forgotten: /metrics' histograms, every agent's, never go back
        self.gone = AgentTimes()

    @property
    def duration(self) -> Times:
        """Every agent's execution times, agents gone included (summed when read, not
        counted a second time at each task's end)."""
        return _summed([self.gone.duration, *(t.duration for t in self.agents.values())])

    @property
    def wait(self) -> Times:
        """Every agent's queue waits, agents gone included."""
        return _summed([self.gone.wait, *(t.wait for t in self.agents.values())])

    def poll(self) -> None:
        finished = self.finished
        if not finished:
            return
        newest = next(reversed(finished))
        if newest == self.last:
            return
        # (the ids back to the last one seen compared in C, each agent's times counted at
        # once after: a lambda's and two calls a task were most of its look)
        since = list(itertools.takewhile(functools.partial(operator.ne, self.last),
                                         reversed(finished)))
        self.last = newest
        waits: defaultdict[str, list[float]] = defaultdict(list)
        runs: defaultdict[str, list[float]] = defaultdict(list)
        for task_id in reversed(since):
            task = finished[task_id]
            end = task.finished or 0.0
            started = task.started
            # one that never ran (cancelled or lost while queued) waited until its end
            if started is None:
                waits[task.agent].append(end - task.created)
            else:
                waits[task.agent].append(started - task.created)
                runs[task.agent].append(end - started)
        agents = self.agents
        for name, seconds in waits.items():
            add_each(seconds, agents[name].wait)
        for name, seconds in runs.items():
            times = agents[name]
            add_each(seconds, times.duration, times.interval)

    def forget(self, keep: Iterable[str]) -> None:
        kept = set(keep)
        gone = self.gone
        for name in [n for n in self.agents if n not in kept]:
            times = self.agents.pop(name)
            gone.duration = _summed([gone.duration, times.duration])
            gone.wait = _summed([gone.wait, times.wait])


def _summed(times: list[Times]) -> Times:
    total = Times()
    buckets = total.buckets
    for t in times:
        for i, n in enumerate(t.buckets):
            buckets[i] += n
        total.sum += t.sum
        total.count += t.count
    return total


def _row(resolution: int, when: float, agent: str, gauges: tuple[float, ...],
         seconds: float, finished: int, errors: int, times: Times) -> tuple[Any, ...]:
    return (resolution, when, agent, *gauges, seconds, finished, errors, times.sum,
            times.count, *times.buckets)


_INSERT = (f"INSERT OR REPLACE INTO metrics_history ({', '.join(WRITTEN)}) VALUES "
           f"({', '.join('?' * len(WRITTEN))})")


def roll_up(db: sqlite3.Connection, source: int, target: int, now: float) -> None:
    """Roll the complete `target` periods of `source` rows after the newest `target` row
    (and before `now`'s period) into `target` rows: gauges averaged, counts summed."""
    end = int(now // target) * target
    (last,) = db.execute("SELECT MAX(time) FROM metrics_history WHERE resolution = ?",
                         (target,)).fetchone()
    start = 0.0 if last is None else last + target
    if start >= end:
        return
    db.execute(
        f"INSERT OR REPLACE INTO metrics_history ({', '.join(WRITTEN)}) "
        f"SELECT ?, CAST(time / ? AS INTEGER) * ?, agent, "
        f"{', '.join(f'AVG({g})' for g in _GAUGES)}, "
        f"{', '.join(f'SUM({s})' for s in _SUMS)}, "
        f"CASE WHEN MIN(tenant) = MAX(tenant) THEN MIN(tenant) ELSE '' END "
        f"FROM metrics_history WHERE resolution = ? AND time >= ? AND time < ? "
        f"GROUP BY agent, CAST(time / ? AS INTEGER)",
        (target, target, target, source, start, end, target))


def prune(db: sqlite3.Connection, resolution: int, period: float, now: float,
          keep: float, agents: int) -> None:
    """Rows older than `keep` seconds go; per-agent rows also past MAX_AGENT_ROWS (at
    least two periods of the next resolution are kept, for its roll-up)."""
    db.execute("DELETE FROM metrics_history WHERE resolution = ? AND time < ?",
               (resolution, now - keep))
    if agents:
        periods = max(MAX_AGENT_ROWS // agents, 1)
        floor = {RAW: 2 * MINUTE, MINUTE: 2 * HOUR}.get(resolution, 0)
        window = max(periods * period, floor)
        if window < keep:
            db.execute("DELETE FROM metrics_history WHERE resolution = ? AND time < ? "
                       "AND agent != ''", (resolution, now - window))


class History:
    """The sampler (a loop timer) and the reader of the metrics history."""

    def __init__(self, agents: Agents, tasks: TaskManager, store: Store, settings: HttpSettings
                 ) -> None:
        self.agents = agents
        self.tasks = tasks
        self.store = store
        self.path = store.path
        self.interval = settings.history_interval
        self.keep = {RAW: settings.history_raw_hours * 3600,
                     MINUTE: settings.history_minute_days * 86400,
                     HOUR: settings.history_hour_days * 86400}
        self.times = TaskTimes(tasks.finished)
        self.counted: dict[str, tuple[int, int]] = {}  # each agent's (finished, errors)
        self.last_time: float | None = None
        self.samples = 0
        self.skipped = 0  # ticks not written: the database could not be written then
        self._timer: asyncio.TimerHandle | None = None
        self._poller: asyncio.TimerHandle | None = None

    # -- the sampler --------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.interval, self._tick)
        self._poller = loop.call_later(POLL_EVERY, self._poll)

    async def close(self) -> None:
        for handle in (self._timer, self._poller):
            if handle is not None:
                handle.cancel()
        self._timer = self._poller = None

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
        self.tick(time.time())

    def _poll(self) -> None:
        self._poller = asyncio.get_running_loop().call_later(POLL_EVERY, self._poll)
        self.times.poll()

    def tick(self, now: float) -> None:
        writer = self.store.writer
        rows = self.sample(now)
        if writer is None or writer.outage.failing:
            # a gap rather than memory that grows with the outage
            self.skipped += 1
            return
        self.samples += 1
        writer.submit(self._write(rows, now, len(rows) - 1), "metrics sample")

    def sample(self, now: float) -> list[tuple[Any, ...]]:
        """One pass over the agents: the fleet's row first, then one per agent."""
        agents = self.agents
        tasks = self.tasks
        self.times.poll()
        seconds = self.interval if self.last_time is None else max(
            now - self.last_time, 0.0)
        self.last_time = now
        rows: list[tuple[Any, ...]] = []
        total = [0.0] * len(_GAUGES)
        fin_total = err_total = 0
        intervals: list[Times] = []
        by_agent = tasks.by_agent
        counted = self.counted
        timed = self.times.agents
        for name, agent in agents.items():
            cpu = 0.0
            rss = serving = 0
            for r in agent.replicas:
                s = r.sample
                cpu += s.cpu_percent
                rss += s.rss_bytes
                serving += r.serving
            q = by_agent.get(name)
            running = fin = err = 0
            if q is not None:
                c = q.counts
                err = c["failed"] + c["timed_out"] + c["lost"]
                running, fin = q.running, err + c["succeeded"] + c["cancelled"]
            # counted from zero when the agent was added; a counter below its last value:
            # the agent was removed and added again
            was_fin, was_err = counted.get(name, (0, 0))
            d_fin = fin - was_fin if fin >= was_fin else fin
            d_err = err - was_err if err >= was_err else err
            counted[name] = (fin, err)
            gauges = (1.0 if serving else 0.0, float(len(agent.replicas)), float(serving),
                      cpu, float(rss), float(tasks.queue.depth(name)), float(running))
            for i, g in enumerate(gauges):
                total[i] += g
            t = timed.get(name)
            interval = Times()
            if t is not None:
                interval, t.interval = t.interval, Times()
                intervals.append(interval)
            fin_total += d_fin
            err_total += d_err
            rows.append((*_row(RAW, now, name, gauges, seconds, d_fin, d_err, interval),
                         agent.spec.tenant))
        if len(counted) > len(agents):
            for name in [n for n in counted if n not in agents]:
                del counted[name]
            self.times.forget(agents)
        rows.insert(0, (*_row(RAW, now, FLEET, tuple(total), seconds, fin_total,
                              err_total, _summed(intervals)), ""))
        return rows

    def _write(self, rows: list[tuple[Any, ...]], now: float, agents: int
               ) -> Callable[[sqlite3.Connection], None]:
        keep, interval = self.keep, self.interval

        def write(db: sqlite3.Connection) -> None:
            db.executemany(_INSERT, rows)
            roll_up(db, RAW, MINUTE, now)
            roll_up(db, MINUTE, HOUR, now)
            prune(db, RAW, interval, now, keep[RAW], agents)
            prune(db, MINUTE, MINUTE, now, keep[MINUTE], agents)
            prune(db, HOUR, HOUR, now, keep[HOUR], agents)

        return write

    # -- the reader -------------------------------------------------------------------------
    async def read(self, since: float, agent: str | None, resolution: str | None,
                   now: float | None = None, *, tenant: str | None = None
                   ) -> MetricsHistoryResult:
        """The samples of the last `since` seconds, oldest first, read in a thread."""
        # (none given: the finest whose retention covers the last `since` seconds)
        res = resolution or next((n for n, r in RESOLUTIONS.items() if since <= self.keep[r]),
                                 "hour")
        now = time.time() if now is None else now
        rows, truncated = await asyncio.to_thread(
            read_rows, self.path, RESOLUTIONS[res], agent or FLEET, now - since, tenant)
        return MetricsHistoryResult(
            agent=agent, resolution=res,
            interval=self.interval if res == "raw" else float(RESOLUTIONS[res]),
            since=round(now - since, 3), samples=[figures(r) for r in rows],
            truncated=truncated)


def read_rows(path: Path, resolution: int, agent: str, since: float,
              tenant: str | None = None) -> tuple[list[tuple[Any, ...]], bool]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            f"SELECT {', '.join(COLUMNS[1:])} FROM metrics_history WHERE resolution = ? "
            f"AND agent = ? AND time >= ? AND (? IS NULL OR tenant = ?) "
            f"ORDER BY time DESC LIMIT ?",
            (resolution, agent, since, tenant, tenant, MAX_POINTS + 1)).fetchall()
    truncated = len(rows) > MAX_POINTS
    rows = rows[:MAX_POINTS]
    rows.reverse()
    return rows, truncated


def has_rows(path: Path, agent: str) -> bool:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT 1 FROM metrics_history WHERE agent = ? LIMIT 1",
                          (agent,)).fetchone() is not None


def figures(row: tuple[Any, ...]) -> MetricsSample:
    """A stored row (without its resolution) as the figures a reader wants."""
    when, _agent, agents, replicas, serving, cpu, rss, queued, running = row[:9]
    seconds, finished, errors, exec_sum, exec_count = row[9:14]
    counts = list(row[14:])
    p50, p95 = quantile(counts, 0.50), quantile(counts, 0.95)
    return MetricsSample(
        time=when, seconds=round(seconds, 3), agents=round(agents, 2),
        replicas=round(replicas, 2), serving=round(serving, 2),
        cpu_percent=round(cpu, 1), rss_bytes=int(rss), queued=round(queued, 2),
        running=round(running, 2), executions=finished,
        per_minute=round(finished * 60 / seconds, 2) if seconds else 0.0,
        errors=errors, error_rate=round(errors / finished, 4) if finished else None,
        avg_ms=round(exec_sum / exec_count * 1000, 2) if exec_count else None,
        p50_ms=None if p50 is None else round(p50 * 1000, 2),
        p95_ms=None if p95 is None else round(p95 * 1000, 2))
