"""Autoscaling: the pure decider (a table of cases, and properties), the config's bounds,
and the loop against real workers: a burst of 500 tasks, an oscillating load."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import jsonrpc
from corral.supervisor import State, Supervisor, SupervisorError
from corral.supervisor.autoscale import Decider, ExtremumWindow, Policy, ScaleDecision
from corral.supervisor.config import Autoscale, ConfigError, TenantSpec
from corral.supervisor.configload import load_config
from corral.supervisor.elastic import Scaling
from corral.supervisor.lifecycle import SERVING

from .conftest import PY, agent

# -- the decider --------------------------------------------------------------------------
# how much longer one change of the count may take to apply than another, in seconds: a
# change's Scaling is stamped once it is applied
APPLIED = 0.25
# the oscillating load's stable window: longer than a burst's idle gap and a loaded host's
# late tick together
WINDOW = 2.5
P = Policy(min_replicas=1, max_replicas=6, target_load=2.0, upscale_delay=2.0,
           downscale_delay=10.0)


def run(policy: Policy, steps: list[tuple[float, int, int, float]]) -> list[ScaleDecision]:
    """Feed (now, load, current, idle_for) in order; the decisions."""
    d = Decider(policy)
    return [d.decide(*s) for s in steps]


def test_window_least_and_greatest_over_the_span() -> None:
    least = ExtremumWindow(2.0, greatest=False)
    assert [least.add(t, v) for t, v in [(0, 1), (1, 3), (2, 3), (3, 3), (4, 1)]] == [
        1, 1, 1, 3, 1]
    greatest = ExtremumWindow(3.0, greatest=True)
    # 5 holds from 1 until 2; at 5 the window (2..5] no longer holds it
    assert [greatest.add(t, v) for t, v in [(0, 1), (1, 5), (2, 2), (4, 2), (5, 2), (6, 1)]
            ] == [1, 5, 5, 5, 2, 2]


@pytest.mark.parametrize(("steps", "want"), [
    # steady: one replica for light load
    ([(0, 1, 1, 0.0)], (1, "steady")),
    # a rise held for upscale_delay scales up to what the window's least asks for
    ([(0, 8, 1, 0.0), (1, 8, 1, 0.0), (2, 8, 1, 0.0)],
     (4, "load 8 over 1 replica (target_load 2) for 2 s")),
    # a spike shorter than upscale_delay does not
    ([(0, 1, 1, 0.0), (1, 12, 1, 0.0), (2, 1, 1, 0.0)], (1, "steady")),
    # never past max_replicas
    ([(0, 100, 1, 0.0), (2, 100, 1, 0.0)],
     (6, "load 100 over 1 replica (target_load 2) for 2 s")),
    # down only once the whole stable window asked for fewer
    ([(0, 8, 4, 0.0), (1, 0, 4, 0.0), (10, 0, 4, 0.0)], (4, "steady")),
    ([(0, 8, 4, 0.0), (1, 0, 4, 0.0), (11, 0, 4, 0.0)],
     (1, "load at most 2 for 10 s (target_load 2)")),
    # a count below min_replicas (the operator's, or a failed start) is brought up
    ([(0, 0, 0 + 1, 0.0)], (1, "steady")),
])
def test_decider_table(steps: list[tuple[float, int, int, float]], want: tuple[int, str]
                       ) -> None:
    d = run(P, steps)[-1]
    assert (d.desired, d.reason) == want


def test_max_step_up_bounds_one_decision() -> None:
    p = P._replace(max_step_up=2)
    d = run(p, [(0, 12, 1, 0.0), (2, 12, 1, 0.0)])[-1]
    assert d.desired == 3
    d = run(p, [(0, 12, 3, 0.0), (2, 12, 3, 0.0)])[-1]
    assert d.desired == 5


def test_bounds_outside_the_count_are_applied_first() -> None:
    p = P._replace(min_replicas=2)
    assert run(p, [(0, 0, 1, 0.0)])[-1] == ScaleDecision(2, "below min_replicas 2")
    assert run(P, [(0, 0, 9, 0.0)])[-1] == ScaleDecision(6, "above max_replicas 6")


def test_scale_to_zero_after_idle_after_and_wake_at_once() -> None:
    p = P._replace(min_replicas=0, idle_after=30.0)
    d = Decider(p)
    assert d.decide(0, 0, 1, 29.0).desired == 1
    assert d.decide(1, 0, 1, 30.0) == ScaleDecision(0, "no work for idle_after (30 s): to zero")
    assert d.decide(2, 0, 0, 31.0) == ScaleDecision(0, "asleep")
    # a task wakes it at once, whatever upscale_delay says
    assert d.decide(3, 1, 0, 0.0) == ScaleDecision(1, "woken by 1 task")
    assert d.decide(3, 9, 0, 0.0) == ScaleDecision(5, "woken by 9 tasks")


def test_hibernate_after_goes_to_zero_with_a_checkpoint_asked() -> None:
    fixed = Policy(2, 2, upscale_delay=0.0, downscale_delay=0.0, hibernate_after=5.0)
    d = Decider(fixed)
    assert d.decide(0, 0, 2, 4.0).desired == 2
    assert d.decide(1, 0, 2, 5.0) == ScaleDecision(
        0, "no work for hibernate_after (5 s): to zero", hibernate=True)
    # it wakes to its count
    assert d.decide(2, 1, 0, 0.0) == ScaleDecision(2, "woken by 1 task")


def test_a_load_falling_in_steps_falls_once_per_stable_window() -> None:
    d = Decider(P._replace(upscale_delay=0.0))
    assert d.decide(0, 12, 1, 0.0).desired == 6
    wants = [(t, d.decide(float(t), load, 6, 0.0).desired)
             for t, load in [(1, 6), (2, 2), (11, 2), (12, 2), (13, 2)]]
    # the 6 of t=0 leaves the window at 11: down to what the rest asks (3); the wish of
    # t=1 (a 3) leaves it at 12, but the count moved at 11: it waits a whole window
    assert wants == [(1, 6), (2, 6), (11, 3), (12, 6), (13, 6)]
    assert d.decide(21.0, 2, 3, 0.0) == ScaleDecision(1, "load at most 2 for 10 s (target_load 2)")


def test_min_zero_without_idle_stays_at_one() -> None:
    p = P._replace(min_replicas=0, idle_after=0.0)
    assert run(p, [(0, 0, 1, 1e9), (20, 0, 1, 1e9)])[-1] == ScaleDecision(1, "steady")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=200),
       st.floats(min_value=0.0, max_value=5.0), st.floats(min_value=1.0, max_value=30.0))
def test_property_bounds_and_at_most_one_down_per_stable_window(
        loads: list[int], up: float, down: float) -> None:
    """Whatever the load, the count stays in [min, max], and after any change the count
    does not fall again before a whole stable window has passed."""
    p = Policy(1, 6, 2.0, up, down)
    d = Decider(p)
    current = 1
    last_change = float("-inf")
    for t, load in enumerate(loads):
        want = d.decide(float(t), load, current, 0.0).desired
        assert 1 <= want <= 6
        if want < current:
            assert t - last_change >= down - 1e-9 or last_change == float("-inf")
        if want != current:
            last_change = t
            current = want


def test_oscillating_load_changes_the_count_at_most_once_per_stable_window() -> None:
    d = Decider(P)
    current, changes = 1, []
    for t in range(0, 60):
        load = 10 if (t // 3) % 2 else 0  # 3 s high, 3 s low
        want = d.decide(float(t), load, current, 0.0).desired
        if want != current:
            changes.append((t, current, want))
            current = want
    # the highs never last upscale_delay... they do (3 s > 2 s): one rise, then held
    # by the stable window, which the oscillation never lets drain
    assert changes == [(5, 1, 5)]


# -- config -------------------------------------------------------------------------------
def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent(f"""
        [agents.a]
        command = ["{PY}", "x.py"]
    """) + textwrap.dedent(body))
    return path


@pytest.mark.parametrize(("body", "error"), [
    ("[agents.a.autoscale]\nmin_replicas = 3\nmax_replicas = 2\n",
     "agents.a.autoscale: min_replicas (3) is above max_replicas (2)"),
    ("replicas = 5\n[agents.a.autoscale]\nmin_replicas = 1\nmax_replicas = 4\n",
     "agents.a.replicas: 5 is outside autoscale's min_replicas..max_replicas (1..4)"),
    ("[agents.a.autoscale]\nmin_replicas = -1\n",
     "agents.a.autoscale.min_replicas: Expected `int` >= 0"),
    ("[agents.a.autoscale]\nmax_replicas = 0\n",
     "agents.a.autoscale.max_replicas: Expected `int` >= 1"),
    ("[agents.a.autoscale]\ndownscale_delay = -2.0\n",
     "agents.a.autoscale.downscale_delay: Expected `float` >= 0.0"),
    ("[agents.a.autoscale]\ntarget_load = 0\n",
     "agents.a.autoscale.target_load: Expected `float` > 0.0"),
    ("hibernate_after = -1\n", "agents.a.hibernate_after: Expected `float` >= 0.0"),
    ("[agents.a.autoscale]\nmax_replica = 3\n",
     "agents.a.autoscale: Object contains unknown field `max_replica` (did you mean "
     "`max_replicas`?)"),
])
def test_bad_autoscale_config_errors_exact(tmp_path: Path, body: str, error: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {error}"


def test_replicas_not_given_starts_within_bounds(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[agents.a.autoscale]\nmin_replicas = 3\n"
                                      "max_replicas = 5\n"))
    assert cfg.agents["a"].replicas == 3
    cfg = load_config(write(tmp_path, "[agents.a.autoscale]\nmin_replicas = 0\n"
                                      "max_replicas = 5\n"))
    assert cfg.agents["a"].replicas == 1


async def test_python_api_refuses_replicas_outside_bounds_and_scale_outside(
        sup: Supervisor) -> None:
    with pytest.raises(SupervisorError) as info:
        sup.add(agent("a", autoscale=Autoscale(min_replicas=2, max_replicas=3)))
    assert info.value.message == ("agent a: replicas: 1 is outside autoscale's "
                                  "min_replicas..max_replicas (2..3)")
    assert "a" not in sup.agents
    sup.add(agent("b", replicas=1, autoscale=Autoscale(min_replicas=1, max_replicas=2)),
            start=False)
    with pytest.raises(SupervisorError) as info:
        await sup.scale("b", 3)
    assert (info.value.code, info.value.message) == (
        jsonrpc.CONFLICT, "b autoscales between min_replicas 1 and max_replicas 2: 3 "
        "is outside them (change [agents.b.autoscale] to go further)")
    assert len(sup.agent("b").replicas) == 1


# -- the loop, with real workers -----------------------------------------------------------
class Decisions(list[Scaling]):
    """The autoscaler's decisions as they come (`until` waits for one that fits)."""

    def __init__(self, sup: Supervisor) -> None:
        super().__init__()
        self.changed = asyncio.Event()
        sup.stream.subscribe(self.on, Scaling)

    def on(self, s: Scaling) -> None:
        self.append(s)
        self.changed.set()

    async def until(self, pred: Any, timeout: float) -> Scaling:
        async with asyncio.timeout(timeout):
            while True:
                found = next((s for s in self if pred(s)), None)
                if found is not None:
                    return found
                self.changed.clear()
                await self.changed.wait()


def decisions(sup: Supervisor) -> Decisions:
    return Decisions(sup)


async def ticks_pass(sup: Supervisor, n: int, timeout: float = 10.0) -> None:
    """Wait until the autoscaler's loop has ticked `n` more times; TimeoutError if it has
    not within `timeout`. A tick that decides nothing emits nothing, so its count is
    what there is to watch: polled, bounded."""
    until = sup.elastic.ticks + n
    async with asyncio.timeout(timeout):
        while sup.elastic.ticks < until:
            await asyncio.sleep(sup.tuning.heartbeat_interval / 2)


async def test_burst_of_500_rises_within_upscale_delay_and_returns_to_one(
        sup: Supervisor) -> None:
    got = decisions(sup)
    sup.add(agent("burst", "misbehave.py", max_concurrent_tasks=4, autoscale=Autoscale(
        min_replicas=1, max_replicas=6, target_load=4.0, upscale_delay=0.3,
        downscale_delay=1.5)))
    await sup.wait_state("burst", State.READY)
    a = sup.agent("burst")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    runs = asyncio.gather(*(sup.tasks.run("burst", {"do": "sleep", "seconds": 0.02})
                            for _ in range(500)))
    # up within upscale_delay (and a tick of the loop), the new ones then start
    up = await got.until(lambda s: s.direction == "up", 10.0)
    assert loop.time() - t0 < 0.3 + 2 * sup.tuning.heartbeat_interval + 1.0
    assert up.replicas == 6
    await asyncio.gather(*(sup.wait_state("burst", SERVING, replica=i, timeout=30.0)
                           for i in range(6)))
    results = await asyncio.wait_for(runs, 60.0)
    assert {r.status for r in results} == {"succeeded"}
    assert max(r.attempts[0].replica for r in results) > 0  # the new replicas took some
    # back to one after the stable window; nothing killed on the way
    down = await got.until(lambda s: s.direction == "down" and s.replicas == 1, 15.0)
    assert len(a.replicas) == 1
    assert "for 1.5 s" in down.reason
    assert next(s.direction for s in got) == "up"
    assert sup.tasks.stats()["agents"]["burst"]["lost"] == 0
    assert sum(sup.stats.restarts_by_cause.values()) == 0


async def test_oscillating_load_with_real_workers_rises_once_and_holds(
        sup: Supervisor) -> None:
    """Bursts of work with idle gaps shorter than the stable window: the count rises and
    does not fall while it lasts; each fall comes a whole window after the change before it.
    Each burst's tasks outlast several ticks, and the window spans several bursts, so a
    loaded host's late ticks still see each burst's whole load within a window (with
    bursts of 0.3 s in a 1.5 s window, a fresh clone's loaded run saw none whole for a
    window and the count fell mid-load)."""
    got = decisions(sup)
    sup.add(agent("osc", "misbehave.py", autoscale=Autoscale(
        min_replicas=1, max_replicas=4, upscale_delay=0.2, downscale_delay=WINDOW)))
    await sup.wait_state("osc", State.READY)
    for _ in range(5):
        await asyncio.wait_for(asyncio.gather(*(
            sup.tasks.run("osc", {"do": "sleep", "seconds": 1.0}) for _ in range(4))), 30.0)
        await asyncio.sleep(0.4)  # the load's own shape: an idle gap, not a wait for a state
    # rises only (a later burst may find the count short of its wish), never a fall
    rises = len(got)
    assert rises >= 1 and {d.direction for d in got} == {"up"}
    down = await got.until(lambda d: d.direction == "down", 15.0 + WINDOW)
    # a whole window after the last change (a count above the last burst's peak may fall
    # to that peak a window after the wish for it was last seen, before the work ended);
    # a change is stamped once it is applied, and stopping two replicas takes longer than
    # stopping one, so two stamps are a window apart less what that difference may be
    # (APPLIED), where a fall inside the window would be a tick or more early
    assert down.time - got[rises - 1].time >= WINDOW - APPLIED
    if down.replicas > 1:  # the last burst's tasks ended over more than one tick
        await got.until(lambda d: d.direction == "down" and d.replicas == 1, 15.0 + WINDOW)
        assert got[-1].time - down.time >= WINDOW - APPLIED  # a whole window apart
    assert [d.direction for d in got[rises:]] in (["down"], ["down", "down"])


async def test_scale_down_never_takes_a_replica_with_a_running_task(
        sup: Supervisor, tmp_path: Path) -> None:
    """Two replicas, the last one busy: the stable window says one, yet the busy one
    stays until its task ends; then it goes."""
    got = decisions(sup)
    sup.add(agent("keep", "misbehave.py", replicas=2, autoscale=Autoscale(
        min_replicas=1, max_replicas=2, upscale_delay=0.0, downscale_delay=0.3)))
    a = sup.agent("keep")
    # two tasks from the start, so the load asks for both replicas while they start
    gates = [tmp_path / "gate0", tmp_path / "gate1"]
    runs = [asyncio.ensure_future(sup.tasks.run("keep", {"do": "await", "path": str(g)}))
            for g in gates]
    await sup.wait_for(lambda: len(a.replicas) == 2 and all(
        r.tasks_running == 1 for r in a.replicas), 30.0)
    # which task runs on the last replica: its gate stays shut, the other one opens
    on_last = next(i for i, t in enumerate(sup.tasks.active.values())
                   if t.replica is a.replicas[1])
    gates[1 - on_last].write_text("")
    await sup.wait_for(lambda: a.replicas[0].tasks_running == 0, 10.0)
    pid = a.replicas[1].pid
    # the stable window (0.3 s) passes several times: the busy replica is never stopped
    await ticks_pass(sup, 8)
    assert len(a.replicas) == 2 and a.replicas[1].pid == pid and not got
    gates[on_last].write_text("")
    results = await asyncio.wait_for(asyncio.gather(*runs), 10.0)
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    down = await got.until(lambda s: s.direction == "down", 10.0)
    assert (down.previous, down.replicas) == (2, 1)
    assert len(a.replicas) == 1


async def rises_to_two_then_held(s: Supervisor, tenant: str, by: str) -> None:
    """Agent cap (autoscaled 1..4, of `tenant`) given a load of 4: up to 2 only, held
    there by `by`, and each told once, not per tick."""
    got = decisions(s)
    s.add(agent("cap", "misbehave.py", tenant=tenant, autoscale=Autoscale(
        min_replicas=1, max_replicas=4, upscale_delay=0.0, downscale_delay=30.0)))
    await s.wait_state("cap", State.READY)
    for _ in range(4):
        s.tasks.submit("cap", {"do": "sleep", "seconds": 5})
    up = await got.until(lambda d: True, 10.0)
    assert (up.direction, up.previous, up.replicas, up.desired) == ("up", 1, 2, 4)
    assert up.reason == f"load 4 over 1 replica (target_load 1) for 0 s; held at 2 by {by}"
    held = await got.until(lambda d: d.direction == "held", 10.0)
    assert (held.previous, held.replicas, held.desired) == (2, 2, 4)
    assert held.reason == (f"load 4 over 2 replicas (target_load 1) for 0 s; held at 2 "
                           f"by {by}")
    await ticks_pass(s, 10)
    assert len(s.agent("cap").replicas) == 2
    assert [d.direction for d in got] == ["up", "held"]
    assert s.elastic.counts == {("cap", "up"): 1, ("cap", "held"): 1}


async def test_fleet_max_replicas_holds_the_autoscaler() -> None:
    """Up as far as the fleet's max_replicas allows, then held: told once, not per tick."""
    async with Supervisor(heartbeat_interval=0.05, max_replicas=3) as s:
        s.add(agent("other"), start=False)  # its place counts
        await rises_to_two_then_held(s, "default",
                                     "max_replicas = 3 (a [supervisor] setting)")


async def test_a_tenants_max_replicas_holds_the_autoscaler() -> None:
    """The tenant's quota bounds the rise as the fleet's does, and its hold is told once."""
    async with Supervisor(heartbeat_interval=0.05) as s:
        s.tenancy.put("acme", TenantSpec(max_replicas=2))
        await rises_to_two_then_held(s, "acme", "tenant acme's max_replicas = 2")
