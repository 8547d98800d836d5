"""Scale to zero and wake, hibernate and wake with the state back: against real workers,
then through the daemon (status, history, a task's queue wait, /metrics' families)."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest

from corral import jsonrpc
from corral import methods as m
from corral.cli.history import print_history
from corral.cli.status import print_status
from corral.daemon.caller import Caller
from corral.daemon.http.metrics import autoscale_families, take
from corral.jsonrpc import RpcError
from corral.supervisor import LogBatch, State, Supervisor
from corral.supervisor.config import Autoscale
from corral.supervisor.elastic import ASLEEP, AWAKE, Scaling

from .conftest import EXAMPLES, PY, ROOT, agent
from .daemon_harness import in_process
from .test_autoscale import decisions, ticks_pass


def wire(result: Any, kind: type[Any]) -> Any:
    """A daemon's answer as a client decodes it."""
    return msgspec.json.decode(msgspec.json.encode(result), type=kind)


SLEEPY = Autoscale(min_replicas=0, max_replicas=2, upscale_delay=0.0, downscale_delay=0.2,
                   idle_after=0.3)


async def test_idle_agent_goes_to_zero_processes_and_a_task_wakes_it(
        sup: Supervisor) -> None:
    got = decisions(sup)
    sup.add(agent("zz", "misbehave.py", autoscale=SLEEPY))
    r = await sup.wait_state("zz", State.READY)
    pid = r.pid
    assert pid is not None
    sleep = await got.until(lambda s: s.direction == "sleep", 10.0)
    assert (sleep.previous, sleep.replicas) == (1, 0)
    assert sleep.reason == "no work for idle_after (0.3 s): to zero"
    a = sup.agent("zz")
    assert a.replicas == [] and sup.elastic.status("zz").state == ASLEEP  # type: ignore[union-attr]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # a task is accepted (not refused for "no replicas"), waits, wakes a replica and runs
    shown: list[str | None] = []
    sup.stream.subscribe(lambda s: shown.append(sup.elastic.shown_state("zz")), Scaling)
    task = sup.tasks.submit("zz", {"do": "echo", "x": 1})
    assert task.status == "queued"
    wake = await got.until(lambda s: s.direction == "wake", 1.0)
    assert shown == ["waking"]  # as the wake is decided: no replica serves yet
    assert (wake.previous, wake.replicas, wake.reason) == (0, 1, "woken by 1 task")
    info = await asyncio.wait_for(sup.tasks.info(task.id, wait=True), 30.0)
    assert (info.status, msgspec.json.decode(info.output)) == (
        "succeeded", {"do": "echo", "x": 1})
    assert info.queue_wait is not None and info.queue_wait > 0
    assert info.queue_wait == round(info.started - info.created, 6)  # type: ignore[operator]
    assert sup.elastic.status("zz").state == AWAKE  # type: ignore[union-attr]


async def test_tasks_while_asleep_all_run_and_none_is_refused(sup: Supervisor) -> None:
    got = decisions(sup)
    sup.add(agent("many", "misbehave.py", autoscale=SLEEPY))
    await got.until(lambda s: s.direction == "sleep", 15.0)
    results = await asyncio.wait_for(asyncio.gather(*(
        sup.tasks.run("many", {"do": "echo", "i": i}) for i in range(20))), 30.0)
    assert [r.output["i"] for r in results] == list(range(20))
    assert sup.tasks.stats()["agents"]["many"]["refused"] == 0


async def test_an_agent_without_autoscale_and_no_replicas_is_still_refused(
        sup: Supervisor) -> None:
    sup.add(agent("none", replicas=0))
    with pytest.raises(RpcError) as err:
        sup.tasks.submit("none", {})
    assert err.value.message == "agent none has no replicas"


async def test_hibernate_checkpoints_stops_and_the_wake_gives_the_state_back(
        sup: Supervisor) -> None:
    got = decisions(sup)
    sup.add(agent("hib", "misbehave.py", hibernate_after=0.3))
    # (the task is the agent's work until it ran: a wait for READY first raced the zero,
    # which came before the start on a loaded host)
    res = await sup.tasks.run("hib", {"do": "checkpoint", "state": {"n": 7}})
    assert res.status == "succeeded"
    hib = await got.until(lambda s: s.direction == "hibernate", 15.0)
    assert (hib.previous, hib.replicas) == (1, 0)
    assert hib.reason == "no work for hibernate_after (0.3 s): to zero"
    assert sup.agent("hib").replicas == []
    # the hook's own state was checkpointed on top of the task's
    assert sup.checkpoints[("hib", 0)][1] == {"hibernated": True, "before": {"n": 7}}
    res = await asyncio.wait_for(sup.tasks.run("hib", {"do": "state"}), 30.0)
    assert res.output == {"state": {"hibernated": True, "before": {"n": 7}}}


async def test_a_worker_that_does_not_answer_hibernate_is_stopped_anyway(
        sup: Supervisor) -> None:
    got = decisions(sup)
    sup.add(agent("mute", "misbehave.py", hibernate_after=0.2, stop_timeout=1.0,
                  env={"MISBEHAVE": "no-hibernate"}))
    lines: list[bytes] = []
    sup.stream.subscribe(lambda e: lines.extend(e.lines), LogBatch)
    # a task, the agent's work until it ran, not a wait for READY: at load 40 the zero of
    # hibernate_after came before the start (CI g1), and no hibernate was asked of it
    assert (await sup.tasks.run("mute", {"do": "echo"})).status == "succeeded"
    r = sup.agent("mute").replicas[0]
    hib = await got.until(lambda s: s.direction == "hibernate", 20.0)
    assert hib.replicas == 0 and r.state == State.TERMINATED
    assert (b"did not answer hibernate within 1 s: stopped anyway, its state as last "
            b"checkpointed") in lines


async def test_a_worker_whose_hibernate_fails_is_stopped_anyway_and_says_why(
        sup: Supervisor, tmp_path: Path) -> None:
    """The hook raises: the worker answers with an error, not a checkpoint; it is stopped
    all the same (to zero, as hibernate_after asks), and its log says why."""
    script = tmp_path / "bad_hibernate.py"
    script.write_text(textwrap.dedent("""
        from corral.worker import run

        def on_hibernate(state):
            raise RuntimeError("disk full")

        run(lambda task_input, ctx: {}, on_hibernate=on_hibernate)
    """))
    got = decisions(sup)
    sup.add(agent("bad", command=[PY, str(script)], hibernate_after=0.2))
    lines: list[bytes] = []
    sup.stream.subscribe(lambda e: lines.extend(e.lines), LogBatch)
    assert (await sup.tasks.run("bad", {})).status == "succeeded"  # (as the mute one's)
    r = sup.agent("bad").replicas[0]
    hib = await got.until(lambda s: s.direction == "hibernate", 20.0)
    assert (hib.previous, hib.replicas) == (1, 0) and r.state == State.TERMINATED
    assert sup.agent("bad").replicas == [] and ("bad", 0) not in sup.checkpoints
    assert (b"hibernate failed (RuntimeError: disk full): stopped anyway, its state as "
            b"last checkpointed") in lines


async def test_an_agent_held_by_a_budget_sleeps_and_stays_asleep_until_the_budget_lets_go(
        ) -> None:
    """Its queued task held by a budget is no work for the autoscaler: it goes to zero,
    and is not woken by that task (nor again and again) until the budget's timer lets
    the task go; then one wake, and the task runs."""
    async with Supervisor(heartbeat_interval=0.05) as s:
        got = decisions(s)
        s.add(agent("thrifty", "misbehave.py", tokens_per_minute=25_000, autoscale=SLEEPY))
        await s.wait_state("thrifty", State.READY)
        # over the minute's budget until that usage leaves it, 3 s from now: past the
        # sleep (idle_after 0.3 s, downscale_delay 0.2 s) and the 10 ticks below, loaded
        s.tasks.budgets.restore("thrifty", 30_000, 0.0, time.time() - 57.0)
        task = s.tasks.submit("thrifty", {"do": "echo"})
        assert task.status == "queued" and "thrifty" in s.tasks.budgets.holding
        await got.until(lambda d: d.direction == "sleep", 15.0)
        await ticks_pass(s, 10)
        assert "thrifty" in s.tasks.budgets.holding  # (still held: the test's premise)
        assert [d.direction for d in got] == ["sleep"] and task.status == "queued"
        assert s.agent("thrifty").replicas == []
        info = await asyncio.wait_for(s.tasks.info(task.id, wait=True), 30.0)
        assert info.status == "succeeded"
        assert [d.direction for d in got] == ["sleep", "wake"]


# -- through the daemon -----------------------------------------------------------------
def sleepy_toml(name: str) -> str:
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0
        [agents.{name}.autoscale]
        min_replicas = 0
        max_replicas = 3
        upscale_delay = 0.0
        downscale_delay = 0.2
        idle_after = 0.4
    """)


async def test_daemon_shows_asleep_the_decisions_and_the_wake_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the daemon's methods; the CLI's printing of their answers is called on
    them (a CLI process of this test would be a stray child of the in-process daemon)."""
    async with in_process(tmp_path, sleepy_toml("nap")) as d:
        sup = d.sup
        got = decisions(sup)
        me = Caller(via="socket")
        await got.until(lambda s: s.direction == "sleep", 15.0)
        st = await d.dispatcher.call(me, "agents.status", {"names": ["nap"]})
        assert st.agents == []
        e = st.elastic["nap"]
        assert (e.state, e.replicas, e.desired, e.min_replicas, e.max_replicas) == (
            "asleep", 0, 0, 0, 3)
        assert e.last == "sleep 1 -> 0: no work for idle_after (0.4 s): to zero"
        capsys.readouterr()
        print_status(wire(st, m.AgentsStatusResult), with_mcp=False)
        out = capsys.readouterr().out
        assert ("nap: asleep, 0 replicas (autoscale 0..3, wants 0); a task wakes it; last: "
                "sleep 1 -> 0: no work for idle_after (0.4 s): to zero") in out
        # `start` does not claim to have started it
        started = await d.dispatcher.call(me, "agents.start", {"all": True})
        assert (started.started, started.asleep) == ([], ["nap"])
        assert sup.agent("nap").replicas == []
        ran = await asyncio.wait_for(sup.tasks.run("nap", {"do": "echo"}), 30.0)
        assert ran.status == "succeeded"
        shown = await d.dispatcher.call(me, "tasks.get", {"task_id": ran.task_id})
        assert shown.queue_wait > 0
        assert shown.queue_wait == round(shown.started - shown.created, 6)
        # history: the decisions, beside the revisions (none made by them)
        h = await d.dispatcher.call(me, "agents.history", {"name": "nap"})
        assert [r.revision for r in h.revisions] == [1]
        assert [(s.direction, s.previous, s.replicas) for s in h.scaling][:2] == [
            ("sleep", 1, 0), ("wake", 0, 1)]
        capsys.readouterr()
        print_history(wire(h, m.HistoryResult))
        out = capsys.readouterr().out
        assert "AUTOSCALE" in out and "wake       0 -> 1    woken by 1 task" in out
        # the agent's log has them as events
        logs = await d.dispatcher.call(me, "logs.tail", {"names": ["nap"], "lines": 100})
        texts = [(ln.stream, ln.text) for ln in logs.lines]
        assert ("event", "autoscale wake 0 -> 1: woken by 1 task") in texts
        # /metrics' families
        snap = take(d.services, {})
        fams = {f.name: f for f in autoscale_families(snap)}
        counts = {tuple(s.labels.values()): s.value for s in fams[
            "corral_autoscale_decisions"].samples if s.name.endswith("_total")}
        assert counts[("nap", "sleep")] >= 1 and counts[("nap", "wake")] == 1
        kinds = {s.labels["kind"] for s in fams["corral_autoscale_replicas"].samples}
        assert kinds == {"desired", "current"}


def bounded_toml(name: str, most: int) -> str:
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0
        [agents.{name}.autoscale]
        min_replicas = 1
        max_replicas = {most}
        upscale_delay = 0.0
        # long enough that the harness sees every replica it started Ready first
        downscale_delay = 2.0
    """)


async def test_a_kept_scale_is_where_a_restarted_daemon_starts_within_bounds(
        tmp_path: Path) -> None:
    me = Caller(via="socket")
    async with in_process(tmp_path, bounded_toml("ks", 4)) as d:
        with pytest.raises(RpcError) as err:
            await d.dispatcher.call(me, "agents.scale", {"name": "ks", "replicas": 5})
        assert (err.value.code, err.value.message) == (
            jsonrpc.CONFLICT, "ks autoscales between min_replicas 1 and max_replicas "
            "4: 5 is outside them (change [agents.ks.autoscale] to go further)")
        assert len(d.sup.agent("ks").replicas) == 1
        got = decisions(d.sup)
        await d.dispatcher.call(me, "agents.scale", {"name": "ks", "replicas": 4})
        scaled = time.time()
        assert len(d.sup.agent("ks").replicas) == 4
        # idle: the autoscaler takes it back down, a whole stable window after the
        # operator's change (no revision, no kept scale written)
        down = await got.until(lambda s: s.replicas == 1, 15.0)
        assert down.direction == "down" and down.previous == 4
        assert down.time - scaled >= 2.0 - 0.2  # (the tick's granularity)
        assert d.services.revisions.scaled()["ks"][0] == 4
    # the file now allows at most 2: the kept 4 starts as 2, and the autoscaler goes on
    async with in_process(tmp_path, bounded_toml("ks", 2)) as d:
        assert len(d.sup.agent("ks").replicas) == 2
        got = decisions(d.sup)
        await got.until(lambda s: s.replicas == 1, 15.0)


async def test_a_reload_leaves_an_asleep_agent_asleep(tmp_path: Path) -> None:
    """A reload that changes the agent (its bounds, its env: a rolling change) does not
    wake it, nor scale it to the file's count: the count is the autoscaler's."""
    async with in_process(tmp_path, sleepy_toml("rl")) as d:
        sup = d.sup
        got = decisions(sup)
        await got.until(lambda s: s.direction == "sleep", 15.0)
        config = tmp_path / "corral.toml"
        config.write_text(config.read_text().replace("max_replicas = 3", "max_replicas = 2")
                          .replace('PYTHONPATH = "', 'V = "1", PYTHONPATH = "'))
        res = await d.dispatcher.call(Caller(via="socket"), "config.reload", {})
        assert (res.changed, res.failed) == (["rl"], {})
        assert sup.agent("rl").replicas == [] and sup.agent("rl").spec.env["V"] == "1"
        st = await d.dispatcher.call(Caller(via="socket"), "agents.status", {})
        assert (st.elastic["rl"].state, st.elastic["rl"].max_replicas) == ("asleep", 2)
        ran = await asyncio.wait_for(sup.tasks.run("rl", {"do": "env"}), 30.0)
        assert ran.output["V"] == "1"  # woken with the new spec
        # without its autoscale table, the agent is the file's count again, and stays
        text = config.read_text()
        config.write_text(text[:text.index("[agents.rl.autoscale]")])
        res = await d.dispatcher.call(Caller(via="socket"), "config.reload", {})
        assert (res.changed, res.failed) == (["rl"], {})
        assert len(sup.agent("rl").replicas) == 1 and sup.elastic.status("rl") is None
        st = await d.dispatcher.call(Caller(via="socket"), "agents.status", {})
        assert st.elastic == {}


async def test_a_wake_the_fleet_has_no_room_for_waits_and_is_told_once() -> None:
    async with Supervisor(heartbeat_interval=0.05, max_replicas=1) as s:
        got = decisions(s)
        s.add(agent("nap", "misbehave.py", autoscale=SLEEPY))
        await got.until(lambda d: d.direction == "sleep", 15.0)
        s.add(agent("hog"), start=False)  # takes the fleet's one place
        task = s.tasks.submit("nap", {"do": "echo"})
        held = await got.until(lambda d: d.direction == "held", 10.0)
        assert (held.previous, held.replicas, held.desired) == (0, 0, 1)
        assert held.reason == ("woken by 1 task; held at 0 by max_replicas = 1 (a "
                               "[supervisor] setting)")
        await ticks_pass(s, 10)
        assert [d.direction for d in got].count("held") == 1 and task.status == "queued"
        # room again: the next tick wakes it, and the task runs
        await s.remove("hog")
        info = await asyncio.wait_for(s.tasks.info(task.id, wait=True), 30.0)
        assert info.status == "succeeded"
        assert got[-1].direction == "wake"
