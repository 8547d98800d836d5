"""Schedules (issue 40 item 6; docs/workflows.md#schedules): a task of an agent (or a
run of a workflow) on a clock, fired on time, paused and resumed, its missed fires after
a downtime skipped, run once or caught up, its last fire kept across restarts; bad
schedules refused at load with exact messages.

Real processes: the daemon in this loop, or as a process (restarted, its state database
edited between two runs to stand for a long downtime), SDK workers that count their runs
in a file (tests/orchestrator_agent.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import jsonrpc
from corral.daemon.schedules import ScheduleFired
from corral.jsonrpc import RpcError
from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config

from .chaos.procs import wait_until
from .conftest import ROOT
from .daemon_harness import PY, Daemon, in_process, shared_tmpdir

HERE = Path(__file__).parent
LEAF = textwrap.dedent(f"""
    [agents.leaf]
    command = ["{PY}", "{HERE}/orchestrator_agent.py"]
    env = {{ PYTHONPATH = "{ROOT}" }}
    max_concurrent_tasks = 4
""")


def schedule(name: str, count: Path, n: int, extra: str) -> str:
    return textwrap.dedent(f"""
        [schedules.{name}]
        agent = "leaf"
        input = {{ leaf = true, n = {n}, count = "{count}" }}
    """) + textwrap.dedent(extra)


def counted(path: Path) -> list[int]:
    return sorted(int(x) for x in path.read_text().split()) if path.exists() else []


class Fires:
    """The ScheduleFired events heard, and a wait for the n-th."""

    def __init__(self) -> None:
        self.seen: list[ScheduleFired] = []
        self.late: list[float] = []  # how long after its time each fire was told
        self._want: tuple[int, asyncio.Event | None] = (0, None)

    def __call__(self, e: ScheduleFired) -> None:
        self.seen.append(e)
        self.late.append(time.time() - e.at)
        n, event = self._want
        if event is not None and len(self.seen) >= n:
            event.set()

    async def until(self, n: int) -> None:
        if len(self.seen) < n:
            event = asyncio.Event()
            self._want = (n, event)
            await asyncio.wait_for(event.wait(), 10)


async def test_a_schedule_fires_on_time_and_pauses(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, LEAF, schedule("tick", count, 7, 'every = "1s"\n')) as d:
        fires = Fires()
        fired = fires.seen
        d.sup.stream.subscribe(fires, ScheduleFired)
        service = d.up.services.schedules
        await fires.until(2)
        first, second = fired[:2]
        assert second.at - first.at == 1.0  # one clock: each fire its time, one apart
        # on time: after its time, by no more than a loaded machine's loop lag
        assert all(0 <= late < 1.0 for late in fires.late[:2]), fires.late
        assert first.error is None and first.started is not None
        (entry,) = service.entries()
        assert entry.name == "tick" and entry.agents == ["leaf"] and not entry.paused
        assert entry.fires >= 2 and entry.next_fire == entry.last_fire + 1
        # paused: no timer, and nothing fires; resumed: from now
        service_entry = service.entry(await service.pause("tick", True))
        assert service_entry.paused and service_entry.next_fire is None
        before = len(fired)
        with pytest.raises(RpcError) as err:
            await service.pause("tick", True)
        assert (err.value.code, err.value.message) == (
            jsonrpc.CONFLICT, "schedule tick is already paused")
        resumed = service.entry(await service.pause("tick", False))
        assert resumed.next_fire is not None and resumed.next_fire > time.time()
        assert len(fired) == before
        await fires.until(before + 1)
        # each fire's task ran: its agent counted it
        for e in fired[:2]:
            assert e.started is not None
            info = await d.sup.tasks.info(e.started, wait=True)
            assert info.status == "succeeded"


async def test_a_reload_adds_changes_and_removes_schedules(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with in_process(tmp_path, LEAF) as d:
        service = d.up.services.schedules
        assert service.entries() == []
        config = tmp_path / "corral.toml"
        base = config.read_text()
        config.write_text(base + schedule("tick", count, 1, 'every = "1s"\n'))
        fires = Fires()
        d.sup.stream.subscribe(fires, ScheduleFired)
        await d.up.services.reload("test")
        await fires.until(1)
        (entry,) = service.entries()
        assert (entry.name, entry.every) == ("tick", "1s")
        # changed: the same schedule, its last fire kept
        config.write_text(base + schedule("tick", count, 1, 'every = "1h"\n'))
        await d.up.services.reload("test")
        await service.settled()
        (changed,) = service.entries()
        assert changed.last_fire >= entry.last_fire and changed.fires >= 1
        assert changed.next_fire == changed.last_fire + 3600
        config.write_text(base)
        await d.up.services.reload("test")
        await service.settled()
        assert service.entries() == []


async def test_a_schedule_starts_a_workflows_run(tmp_path: Path) -> None:
    count = tmp_path / "count"
    flow = textwrap.dedent(f"""
        [workflows.twice]
        [[workflows.twice.steps]]
        name = "one"
        agent = "leaf"
        [[workflows.twice.steps]]
        name = "two"
        agent = "leaf"
        input = {{ leaf = true, n = "$steps.one.output", count = "{count}" }}

        [schedules.nightly]
        workflow = "twice"
        every = "1s"
        input = {{ leaf = true, n = 5, count = "{count}" }}
    """)
    async with in_process(tmp_path, LEAF, flow) as d:
        fires = Fires()
        d.sup.stream.subscribe(fires, ScheduleFired)
        await fires.until(1)
        run_id = fires.seen[0].started
        assert run_id is not None
        workflows = d.up.services.workflows
        await workflows.wait(run_id, 10)
        run = workflows.get(run_id)
        assert (run.workflow, run.status, workflows.rows.outputs(run)["two"]) == (
            "twice", "succeeded", 20)
        (entry,) = d.up.services.schedules.entries()
        assert (entry.workflow, entry.agents) == ("twice", ["leaf"])


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short directory (a daemon's socket lives in it)."""
    d = shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(120)
def test_missed_fires_after_a_downtime_follow_each_policy(tmp: Path) -> None:
    count = tmp / "count"
    every = 'every = "60s"\n'
    extra = (schedule("skipper", count, 1, every) + schedule(
        "oncer", count, 2, every + 'missed = "once"\n') + schedule(
        "catcher", count, 3, every + 'missed = "catch_up"\nmax_catch_up = 3\n') + schedule(
        "held", count, 4, every + 'missed = "catch_up"\n'))
    d = Daemon(tmp, LEAF, extra)
    try:
        d.start()
        r = d.cli("schedules", "pause", "held")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "schedule held: paused"
        r = d.cli("schedules", "--json")
        first = {s["name"]: s for s in json.loads(r.stdout)["schedules"]}
        assert {n: s["fires"] for n, s in first.items()} == {
            "skipper": 0, "oncer": 0, "catcher": 0, "held": 0}
        d.stop()
        # the daemon was down 5.5 minutes: five fires of each were missed
        db = sqlite3.connect(d.state / "corral.db")
        with db:
            db.execute("UPDATE schedules SET last_fire = last_fire - 330")
        db.close()
        then = {n: s["last_fire"] - 330 for n, s in first.items()}
        d.start()
        wait_until(lambda: len(counted(count)) >= 4, 30, "the missed fires run")
        r = d.cli("schedules", "--json")
        after = {s["name"]: s for s in json.loads(r.stdout)["schedules"]}
        assert {n: s["fires"] for n, s in after.items()} == {
            "skipper": 0, "oncer": 1, "catcher": 3, "held": 0}
        assert counted(count) == [2, 3, 3, 3]
        for name in ("skipper", "oncer", "catcher"):  # the last missed time, accounted for
            assert after[name]["last_fire"] == pytest.approx(then[name] + 300, abs=1e-3)
            assert after[name]["next_fire"] == pytest.approx(then[name] + 360, abs=1e-3)
        # a pause is kept across the restart, and nothing was caught up for it
        assert after["held"]["paused"] is True and after["held"]["next_fire"] is None
        assert after["held"]["last_fire"] == pytest.approx(then["held"], abs=1e-3)
        log = d.cli("logs", "corral", "--lines", "200").stdout
        assert "schedule skipper: 5 fires missed while the daemon was down (skip: 0 run " \
               "now)" in log
        assert "schedule catcher: 5 fires missed while the daemon was down (catch_up: 3 " \
               "run now)" in log
        # and the API shows the same
        shown = d.cli("schedules").stdout
        assert "skipper" in shown and "every 60s" in shown and "paused" in shown
    finally:
        d.close()


def _config(tmp: Path, text: str) -> str:
    path = tmp / "corral.toml"
    path.write_text(textwrap.dedent(LEAF) + textwrap.dedent(text))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value).replace(f"{path}: ", "")


def test_bad_schedules_are_refused_at_load_with_exact_messages(tmp_path: Path) -> None:
    assert _config(tmp_path, """
        [schedules.bad]
        agent = "leaf"
        cron = "*/5 * * *"
    """) == ('schedules.bad: cron "*/5 * * *": expected 5 fields (minute hour day month '
             "weekday), got 4")
    assert _config(tmp_path, """
        [schedules.bad]
        agent = "leaf"
        cron = "0 25 * * *"
    """) == 'schedules.bad: cron "0 25 * * *": hour 25 is out of range 0-23'
    assert _config(tmp_path, """
        [schedules.bad]
        agent = "ghost"
        every = "1m"
    """) == "schedules.bad: no agent named ghost"
    assert _config(tmp_path, """
        [schedules.bad]
        workflow = "ghost"
        every = "1m"
    """) == "schedules.bad: no workflow named ghost"
    assert _config(tmp_path, """
        [schedules.bad]
        agent = "leaf"
        every = "1m"
        missed = "twice"
    """).startswith("schedules.bad.missed: Invalid enum value 'twice'")
    assert _config(tmp_path, """
        [schedules.bad]
        agent = "leaf"
        every = "soon"
    """) == 'schedules.bad: every "soon" is not a duration (examples: 30s, 5m, 1h, 1d)'


@pytest.mark.deadline(120)
async def test_schedules_over_http_a_limited_caller_sees_its_own(tmp_path: Path) -> None:
    from .daemon_harness import hello
    from .test_http_api import serving

    both = textwrap.dedent("""
        [schedules.web-daily]
        agent = "web-1"
        cron = "0 6 * * *"

        [schedules.db-hourly]
        agent = "db"
        every = "1h"
        missed = "once"
    """)
    async with serving(tmp_path, hello("web-1") + hello("db") + both) as api:
        await api.token("web", "tasks:run", "tasks:read", agents="web-*")
        await api.token("all", "tasks:run", "tasks:read")
        status, body, _ = await api.ask("GET", "/schedules", "all")
        assert (status, [s["name"] for s in body["schedules"]]) == (
            200, ["db-hourly", "web-daily"])
        hourly = body["schedules"][0]
        assert (hourly["agent"], hourly["every"], hourly["missed"], hourly["paused"],
                hourly["fires"]) == ("db", "1h", "once", False, 0)
        assert hourly["next_fire"] == hourly["last_fire"] + 3600
        status, body, _ = await api.ask("GET", "/schedules", "web")
        assert (status, [s["name"] for s in body["schedules"]]) == (200, ["web-daily"])
        status, body, _ = await api.ask("POST", "/schedules/db-hourly/pause", "web")
        assert (status, body["detail"]) == (404, "no such schedule: db-hourly")
        status, body, _ = await api.ask("POST", "/schedules/web-daily/pause", "web")
        assert (status, body["paused"], body["next_fire"]) == (200, True, None)
        status, body, _ = await api.ask("POST", "/schedules/web-daily/pause", "web")
        assert (status, body["detail"]) == (409, "schedule web-daily is already paused")
        status, body, _ = await api.ask("POST", "/schedules/web-daily/resume", "all")
        assert (status, body["paused"]) == (200, False)
