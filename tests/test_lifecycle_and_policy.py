"""The transition table and the restart policy, as pure data and arithmetic."""

from __future__ import annotations

import random

import pytest

from corral.supervisor import lifecycle
from corral.supervisor.lifecycle import LIVE, RUNNING, SERVING, STOPPED, State
from corral.supervisor.restart import RestartPolicy


def leads(a: State, b: State) -> bool:
    """Whether a row of the table takes `a` to `b` (a resume: back to the state it was
    paused in, a serving one)."""
    return any(step.target == b or (step.back and b in SERVING)
               for (s, _), step in lifecycle.TABLE.items() if s == a)


def test_every_state_has_a_row_and_names_are_fixed() -> None:
    assert {s for s, _ in lifecycle.TABLE} == set(State)
    assert [s.value for s in State] == [
        "initial", "starting", "ready", "busy", "idle", "paused", "shutting_down",
        "terminated", "backoff", "failed"]


@pytest.mark.parametrize(("a", "b"), [
    (State.INITIAL, State.STARTING), (State.STARTING, State.READY), (State.READY, State.BUSY),
    (State.BUSY, State.IDLE), (State.IDLE, State.BUSY), (State.BUSY, State.SHUTTING_DOWN),
    (State.SHUTTING_DOWN, State.TERMINATED), (State.IDLE, State.TERMINATED),
    (State.TERMINATED, State.BACKOFF), (State.BACKOFF, State.STARTING),
    (State.TERMINATED, State.FAILED), (State.FAILED, State.STARTING),
])
def test_documented_edges_are_allowed(a: State, b: State) -> None:
    assert leads(a, b)


@pytest.mark.parametrize(("a", "b"), [
    (State.INITIAL, State.READY), (State.STARTING, State.BUSY), (State.FAILED, State.BACKOFF),
    (State.TERMINATED, State.READY), (State.SHUTTING_DOWN, State.READY),
    (State.BACKOFF, State.READY), (State.READY, State.IDLE),
])
def test_other_edges_are_in_no_row(a: State, b: State) -> None:
    assert not leads(a, b)


def test_groups() -> None:
    assert SERVING < RUNNING < LIVE
    assert not (LIVE & STOPPED)
    assert State.BACKOFF not in LIVE | STOPPED  # waiting: neither running nor stopped


def policy(**kw: object) -> RestartPolicy:
    args: dict[str, object] = dict(max_restarts=3, window=10.0, backoff_initial=1.0,
                                   backoff_max=8.0, stable_after=30.0, rng=random.Random(7))
    args.update(kw)
    mode = args.pop("mode", "on-failure")
    return RestartPolicy(mode, **args)  # type: ignore[arg-type]


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    p = policy(max_restarts=100, window=1000.0)
    delays = [p.on_exit(clean_exit=False, uptime=0.1, now=float(i)).delay for i in range(6)]
    for i, d in enumerate(delays):
        ceiling = min(8.0, 2.0**i)
        assert ceiling / 2 <= d <= ceiling
    assert delays[-1] >= 4.0


def test_intensity_limit_gives_up_within_window_only() -> None:
    p = policy()
    assert all(p.on_exit(clean_exit=False, uptime=0, now=t).restart for t in (0, 1, 2))
    d = p.on_exit(clean_exit=False, uptime=0, now=3)
    assert (d.restart, d.give_up) == (False, True)
    p2 = policy()
    for t in (0, 1, 2):
        p2.on_exit(clean_exit=False, uptime=0, now=t)
    assert p2.on_exit(clean_exit=False, uptime=0, now=10.5).restart  # the first aged out


def test_stable_uptime_resets_backoff() -> None:
    p = policy(max_restarts=100)
    for t in range(4):
        p.on_exit(clean_exit=False, uptime=0, now=t)
    d = p.on_exit(clean_exit=False, uptime=31.0, now=100)
    assert d.delay <= 1.0


@pytest.mark.parametrize(("mode", "clean", "restart"), [
    ("always", True, True), ("always", False, True), ("on-failure", True, False),
    ("on-failure", False, True), ("never", False, False), ("never", True, False),
])
def test_modes(mode: str, clean: bool, restart: bool) -> None:
    d = policy(mode=mode).on_exit(clean_exit=clean, uptime=0, now=0)
    assert d.restart is restart and not d.give_up
