"""The metrics history (daemon/history.py): samples of a real supervisor written through
the store's writer thread, roll-ups per minute and per hour, retention and the row budget
driven by sample times the test chooses, `stats.history` and `corral stats --since`."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.daemon import history as hist
from corral.daemon.caller import Caller
from corral.daemon.history import BUCKETS, History, TaskTimes, quantile
from corral.daemon.store import StateStore
from corral.jsonrpc import RpcError
from corral.methods import MetricsHistoryResult
from corral.supervisor import State, Supervisor
from corral.supervisor.config import HttpSettings

from .conftest import agent
from .daemon_harness import hello, in_process, running_daemon
from .test_daemon_cli import wait_until

# a wall time at the start of an hour, so the test knows where every boundary falls
T0 = 1_800_000_000.0 - 1_800_000_000.0 % 3600


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    s = StateStore(tmp_path / "state" / "corral.db")
    s.open_writer()
    try:
        yield s
    finally:
        await s.close_writer()
        s.close()


def rows(store: StateStore, resolution: int, agent: str = "") -> list[tuple[float, ...]]:
    db = sqlite3.connect(store.path)
    try:
        return db.execute(
            "SELECT time, seconds, finished, replicas FROM metrics_history "
            "WHERE resolution = ? AND agent = ? ORDER BY time", (resolution, agent)
        ).fetchall()
    finally:
        db.close()


def count(store: StateStore, resolution: int, agent: str | None = None) -> int:
    db = sqlite3.connect(store.path)
    try:
        if agent is None:
            sql, args = "resolution = ?", (resolution,)
        else:
            sql, args = "resolution = ? AND agent = ?", (resolution, agent)  # type: ignore
        (n,) = db.execute(f"SELECT COUNT(*) FROM metrics_history WHERE {sql}",
                          args).fetchone()
        return int(n)
    finally:
        db.close()


def test_quantile_interpolates_within_the_bucket_like_histogram_quantile() -> None:
    counts = [0] * (len(BUCKETS) + 1)
    assert quantile(counts, 0.5) is None
    counts[hist.bucket_of(0.2)] = 10  # (0.1, 0.25]
    assert quantile(counts, 0.5) == pytest.approx(0.175)
    assert hist.bucket_of(0.25) == hist.bucket_of(0.2)  # a bound belongs to its bucket
    counts = [0] * (len(BUCKETS) + 1)
    counts[-1] = 3  # past the last bound: only that bound is known
    assert quantile(counts, 0.95) == BUCKETS[-1]


async def test_samples_count_tasks_and_time_them(sup: Supervisor, store: StateStore
                                                 ) -> None:
    sup.add(agent("h", replicas=2))
    for i in range(2):
        await sup.wait_state("h", State.READY, replica=i)
    h = History(sup.agents, sup.tasks, store, HttpSettings(history_interval=10.0))
    h.tick(T0)  # the first sample: counters start here
    tasks = [sup.tasks.submit("h", {"name": str(i)}) for i in range(5)]
    for t in tasks:
        await t.done
    assert store.writer is not None
    h.tick(T0 + 10)
    await store.writer.committed()
    result = await h.read(60, "h", "raw", now=T0 + 11)
    assert isinstance(result, MetricsHistoryResult)
    first, second = result.samples
    assert (first.executions, second.executions) == (0, 5)
    assert second.per_minute == 30.0 and second.seconds == 10.0
    assert second.errors == 0 and second.error_rate == 0.0
    assert second.replicas == 2 and second.serving == 2 and second.agents == 1
    assert second.avg_ms is not None and second.p50_ms is not None
    assert second.p95_ms is not None and second.p50_ms <= second.p95_ms
    fleet = await h.read(60, None, "raw", now=T0 + 11)
    assert [s.executions for s in fleet.samples] == [0, 5]
    assert fleet.samples[1].agents == 1 and fleet.samples[1].replicas == 2
    # the same tasks are in /metrics' histograms, since the agent was first seen
    times = h.times.agents["h"]
    assert times.duration.count == 5 and times.wait.count == 5


async def test_roll_ups_per_minute_and_hour_from_the_samples_times(
        sup: Supervisor, store: StateStore) -> None:
    h = History(sup.agents, sup.tasks, store, HttpSettings(history_interval=10.0))
    assert store.writer is not None
    for i in range(6 * 65):  # 65 minutes of samples every 10 s
        h.tick(T0 + 10 * i)
    await store.writer.committed()
    minutes = rows(store, hist.MINUTE)
    # every complete minute, none for the one still being sampled
    assert [m[0] for m in minutes] == [T0 + 60 * k for k in range(64)]
    assert {m[1] for m in minutes} == {60.0}  # six samples of 10 s each
    assert rows(store, hist.HOUR) == [(T0, 3600.0, 0, 0.0)]
    # a restart loses nothing sampled: the next write rolls up what is complete
    again = History(sup.agents, sup.tasks, store, HttpSettings(history_interval=10.0))
    again.tick(T0 + 7200 + 5)
    await store.writer.committed()
    assert [m[0] for m in rows(store, hist.MINUTE)][-1] == T0 + 64 * 60
    assert [r[0] for r in rows(store, hist.HOUR)] == [T0, T0 + 3600]
    auto = await again.read(2 * 86400, None, None, now=T0 + 7205)
    assert auto.resolution == "minute" and auto.interval == 60.0


async def test_retention_per_resolution(sup: Supervisor, store: StateStore) -> None:
    # three minutes of samples, half an hour of minutes, three hours of hours
    settings = HttpSettings(history_interval=10.0, history_raw_hours=0.05,
                            history_minute_days=30 / 1440, history_hour_days=0.125)
    h = History(sup.agents, sup.tasks, store, settings)
    assert store.writer is not None
    for i in range(6 * 60 * 4):  # four hours
        h.tick(T0 + 10 * i)
    await store.writer.committed()
    end = T0 + 10 * (6 * 60 * 4 - 1)
    raw = rows(store, hist.RAW)
    assert raw[0][0] >= end - 180 and len(raw) == 19  # 3 minutes of samples, both ends
    minutes = [m[0] for m in rows(store, hist.MINUTE)]
    # half an hour back from the last sample, to the last complete minute
    assert minutes == [T0 + 4 * 3600 - 60 * k for k in range(30, 1, -1)]
    # the hour of T0 is past three hours; the fourth is not complete
    assert [r[0] for r in rows(store, hist.HOUR)] == [T0 + 3600, T0 + 7200]


async def test_per_agent_rows_stay_within_the_budget(
        sup: Supervisor, store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hist, "MAX_AGENT_ROWS", 30)
    for name in ("a", "b", "c"):
        sup.add(agent(name))
    h = History(sup.agents, sup.tasks, store, HttpSettings(history_interval=10.0))
    assert store.writer is not None
    for i in range(100):
        h.tick(T0 + 10 * i)
    await store.writer.committed()
    # ten periods of three agents, but never less than two minutes of samples
    assert count(store, hist.RAW, "a") == 13
    assert count(store, hist.RAW, "") == 100  # the fleet's rows follow the retention only


async def test_a_database_that_cannot_be_written_leaves_a_gap(
        sup: Supervisor, store: StateStore) -> None:
    h = History(sup.agents, sup.tasks, store, HttpSettings(history_interval=10.0))
    assert store.writer is not None
    store.writer.outage.since = T0  # as StoreWriter marks an outage
    h.tick(T0)
    assert (h.samples, h.skipped) == (0, 1)
    assert not store.writer.pending()
    store.writer.outage.since = None
    h.tick(T0 + 10)
    await store.writer.committed()
    assert (h.samples, h.skipped, count(store, hist.RAW)) == (1, 1, 1)


def test_task_times_walk_back_to_the_last_task_seen() -> None:
    from collections import OrderedDict
    from types import SimpleNamespace

    finished: OrderedDict[str, object] = OrderedDict()
    times = TaskTimes(finished)  # type: ignore[arg-type]

    def done(i: int, started: float | None) -> None:
        finished[str(i)] = SimpleNamespace(agent="x", created=0.0, started=started,
                                           finished=3.0)

    done(1, 1.0)
    done(2, None)  # never ran: waited, but did not execute
    times.poll()
    x = times.agents["x"]
    assert (x.duration.count, x.wait.count, x.duration.sum, x.wait.sum) == (1, 2, 2.0, 4.0)
    times.poll()  # nothing new: nothing counted twice
    assert x.duration.count == 1
    del finished["1"]  # the manager lets the oldest go
    done(3, 2.0)
    times.poll()
    assert (x.duration.count, x.duration.sum) == (2, 3.0)
    times.forget(["y"])
    assert not times.agents


def test_corral_stats_since(tmp_path: Path) -> None:
    with running_daemon(tmp_path, hello("h"),
                        extra="[http]\nhistory_interval = 0.2\n") as d:
        ran = d.cli("run", "h", "--input", '{"name": "x"}', "--json")
        assert ran.returncode == 0, ran.stderr

        def counted() -> Any:
            got = d.ask("stats.history", {"since": 3600.0, "agent": "h"})  # (--since 1h)
            return got if any(s["executions"] for s in got["samples"]) else None

        got = wait_until(counted, what="a sample that counted the task")
        assert (got["agent"], got["resolution"], got["interval"], got["truncated"]) == (
            "h", "raw", 0.2, False)
        msgspec.convert(got, MetricsHistoryResult)
        assert sum(s["executions"] for s in got["samples"]) == 1
        table = d.cli("stats", "--since", "5m")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].startswith("fleet: ") and "at the raw resolution (every 0.2 s)" in (
            lines[0])
        assert lines[1].split() == ["TIME", "AGENTS", "SERVING", "CPU%", "RSS", "QUEUED",
                                    "EXEC/MIN", "ERR%", "AVG/P50/P95", "MS"]
        assert len(lines) > 2

        bad = d.cli("stats", "--since", "1w")
        assert bad.returncode == 2
        assert "Error: Invalid value for --since: not a duration: 1w (examples: 90s, 15m, " \
            "1h, 2d)" in bad.stderr
        zero = d.cli("stats", "--since", "0s")
        assert zero.returncode == 2
        assert "Error: Invalid value for --since: the duration must be more than 0" in zero.stderr
        alone = d.cli("stats", "--agent", "h")
        assert alone.returncode == 2
        assert "Error: --agent and --resolution go with --since" in alone.stderr
        nobody = d.cli("stats", "--since", "1h", "--agent", "nobody")
        assert nobody.returncode == 1, nobody.stderr
        assert nobody.stderr.strip() == (
            "corral: no such agent: nobody (and no history of one; agents: h)")


async def test_stats_history_refuses_bad_params(tmp_path: Path) -> None:
    async with in_process(tmp_path, "") as d:
        me = Caller(via="socket")
        for params, message in (
                ({"since": 0}, "invalid params: Expected `float` > 0.0 - at `$.since`"),
                ({"resolution": "week"},
                 "invalid params: Invalid enum value 'week' - at `$.resolution`")):
            with pytest.raises(RpcError) as err:
                await d.dispatcher.call(me, "stats.history", params)
            assert (err.value.code, err.value.message) == (jsonrpc.INVALID_PARAMS, message)
        with pytest.raises(RpcError) as err:
            await d.dispatcher.call(Caller(via="http", scopes=frozenset({"agents:read"})),
                                    "stats.history", {})
        assert (err.value.code, err.value.message) == (
            jsonrpc.FORBIDDEN, "forbidden: stats.history needs the metrics:read scope, "
                               "which uid -1 pid -1 does not hold")
        empty = await d.dispatcher.call(me, "stats.history", {"since": 60})
        assert (empty.agent, empty.resolution, empty.truncated) == (None, "raw", False)
