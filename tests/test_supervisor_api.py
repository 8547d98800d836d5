"""The Python API: add/remove/start/stop/restart/scale, status and statistics."""

from __future__ import annotations

import sys

import pytest

from corral import jsonrpc
from corral.supervisor import State, Supervisor, SupervisorError, Tick

from .conftest import agent


async def test_add_duplicate_is_refused_and_the_first_is_untouched(sup: Supervisor) -> None:
    sup.add(agent("dup"))
    r = await sup.wait_state("dup", State.READY)
    pid = r.pid
    with pytest.raises(SupervisorError) as err:
        sup.add(agent("dup"))
    assert (err.value.code, err.value.message) == (jsonrpc.CONFLICT, "agent dup already exists")
    assert r.state == State.READY and r.pid == pid and len(sup.agents) == 1


async def test_unknown_agent_operations_are_refused(sup: Supervisor) -> None:
    for call in (lambda: sup.start("nope"), lambda: sup.status("nope")):
        with pytest.raises(SupervisorError) as err:
            call()
        assert (err.value.code, err.value.message) == (
            jsonrpc.NOT_FOUND, "no such agent: nope (there are no agents)")
    for coro in (sup.stop("nope"), sup.remove("nope"), sup.restart("nope"),
                 sup.scale("nope", 2)):
        with pytest.raises(SupervisorError, match="no such agent: nope"):
            await coro


async def test_empty_command_is_refused(sup: Supervisor) -> None:
    with pytest.raises(SupervisorError) as err:
        sup.add(agent("empty", command=[]))
    assert err.value.message == "agent empty: command is empty"
    assert "empty" not in sup.agents


async def test_scale_up_and_down_and_status_fields(sup: Supervisor) -> None:
    sup.add(agent("many"))
    await sup.wait_state("many", State.READY)
    await sup.scale("many", 3)
    for i in range(3):
        await sup.wait_state("many", State.READY, replica=i)
    status = sup.status("many")
    assert [s.replica for s in status] == [0, 1, 2]
    assert len({s.pid for s in status}) == 3
    s0 = status[0]
    assert s0.state == "ready" and s0.restarts == 0 and s0.last_exit is None
    assert s0.uptime is not None and s0.uptime > 0
    removed = sup.agent("many").replicas[1:]
    await sup.scale("many", 1)
    assert [r.state for r in removed] == [State.TERMINATED, State.TERMINATED]
    assert [r.reason for r in removed] == ["scaled down", "scaled down"]
    assert len(sup.status("many")) == 1
    assert sup.runtime_stats().active == 1


async def test_heartbeat_samples_cpu_rss_fds(sup: Supervisor) -> None:
    sup.add(agent("sampled"))
    r = await sup.wait_state("sampled", State.READY)
    # the first sample has no CPU baseline yet, and fds are listed every 5th tick
    await _ticks(sup, 6)
    s = sup.status("sampled")[0]
    assert s.rss_bytes > 1_000_000
    assert s.open_fds >= 3
    assert s.cpu_percent >= 0.0 and r.sample.cpu_seconds >= 0.0  # an idle worker may use 0


async def _ticks(sup: Supervisor, n: int) -> None:
    import asyncio

    done = asyncio.Event()
    count = 0

    def on_tick() -> None:
        nonlocal count
        count += 1
        if count >= n:
            done.set()

    ticks = sup.stream.subscribe(lambda _: on_tick(), Tick)
    await asyncio.wait_for(done.wait(), 5)
    sup.stream.unsubscribe(ticks)


async def test_stop_start_restart_remove(sup: Supervisor) -> None:
    sup.add(agent("cycle"))
    r = await sup.wait_state("cycle", State.READY)
    pid = r.pid
    await sup.stop("cycle")
    assert (r.state, r.reason, r.last_exit) == (State.TERMINATED, "stopped", "stopped")
    sup.start("cycle")
    await sup.wait_state("cycle", State.READY)
    assert r.pid != pid
    pid = r.pid
    await sup.restart("cycle")
    await sup.wait_state("cycle", State.READY)
    assert r.pid != pid
    await sup.remove("cycle")
    assert "cycle" not in sup.agents and r.state == State.TERMINATED and r.reason == "removed"


async def test_autostart_false_waits_in_initial(sup: Supervisor) -> None:
    sup.add(agent("lazy", autostart=False))
    assert sup.status("lazy")[0].state == "initial"
    sup.start("lazy")
    await sup.wait_state("lazy", State.READY)


async def test_clean_exit_under_on_failure_is_not_restarted(sup: Supervisor) -> None:
    sup.add(agent("once", command=[sys.executable, "-c", "pass"], restart="on-failure"))
    r = await sup.wait_state("once", State.TERMINATED)
    assert r.last_exit == "exited with status 0"
    assert r.executor.timer is None and r.restarts == 0


async def test_clean_exit_under_always_is_restarted(sup: Supervisor) -> None:
    sup.add(agent("again", command=[sys.executable, "-c", "pass"], restart="always",
                  max_restarts=2))
    r = await sup.wait_state("again", State.FAILED, timeout=30)  # three starts
    assert r.restarts == 2
    assert r.reason == ("too many restarts (2 within 60 s); last exit: exited with status 0")


async def test_stop_during_backoff_stays_down(sup: Supervisor) -> None:
    sup.add(agent("waiting", "misbehave.py", env={"MISBEHAVE": "exit"}, backoff_initial=5.0,
                  backoff_max=5.0))
    r = await sup.wait_state("waiting", State.BACKOFF)
    await sup.stop("waiting")
    assert (r.state, r.reason) == (State.TERMINATED, "stopped")
    assert r.executor.timer is None


async def test_replicas_zero_runs_nothing(sup: Supervisor) -> None:
    sup.add(agent("none", replicas=0))
    assert sup.status("none") == []


async def test_close_stops_everything_gracefully() -> None:
    sup = Supervisor(heartbeat_interval=0.1)
    sup.open()
    sup.add(agent("a", replicas=2))
    sup.add(agent("b"))
    await sup.wait_all_serving(timeout=10)
    reps = list(sup.replicas())
    await sup.close()
    assert [(r.state, r.reason) for r in reps] == [(State.TERMINATED,
                                                    "supervisor shutting down")] * 3


async def test_wait_state_timeout_names_the_state_and_the_last_exit(sup: Supervisor) -> None:
    # the README's first-run trap: a python without corral, so the agent cannot import it
    sup.add(agent("noimp", command=[sys.executable, "-c", "import corral_not_installed_x"],
                  max_restarts=1))
    await sup.wait_state("noimp", State.FAILED, timeout=20)
    with pytest.raises(TimeoutError) as info:
        await sup.wait_state("noimp", State.READY, timeout=0.2)
    message = str(info.value)
    assert message.startswith(
        "noimp#0 did not reach ready within 0.2 s: it is failed: too many restarts (1 within "
        "60 s); last exit: exited with status 1: ")
    assert "ModuleNotFoundError: No module named 'corral_not_installed_x'" in message
