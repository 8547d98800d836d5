"""The event stream: typed delivery, and subscribers that cannot break it."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from corral.supervisor import Stall, State, Stream, Supervisor, Tick, Transition
from corral.supervisor.stream import Subscription

from .conftest import agent


def test_delivery_by_type_in_order_and_unsubscribe() -> None:
    s = Stream()
    got: list[str] = []
    a = s.subscribe(lambda e: got.append(f"a{e.seconds}"), Stall)
    s.subscribe(lambda e: got.append(f"b{e.seconds}"), Stall, Tick)
    s.emit(Stall(1.0))
    s.emit(Tick())
    s.unsubscribe(a)
    s.emit(Stall(2.0))
    assert got == ["a1.0", "b1.0", "b2.0"]
    assert not s.wants(Transition) and s.wants(Stall)


def test_a_subscriber_not_listening_is_not_told_and_keeps_its_place_in_the_order() -> None:
    s = Stream()
    got: list[str] = []
    a = s.subscribe(lambda e: got.append("a"), Stall, listening=False)
    s.subscribe(lambda e: got.append("b"), Stall)
    s.emit(Stall(1.0))
    assert got == ["b"]
    s.listen(a)
    s.listen(a)  # (again: no change)
    s.emit(Stall(2.0))
    assert got == ["b", "a", "b"]
    s.listen(a, False)
    s.emit(Stall(3.0))
    assert got == ["b", "a", "b", "b"]


def test_an_event_type_with_no_subscriber_listening_is_not_wanted() -> None:
    s = Stream()
    a = s.subscribe(lambda e: None, Stall, Tick, listening=False)
    assert not s.wants(Stall) and Stall not in s.wanted and not s.wants(Tick)
    s.listen(a)
    assert s.wants(Stall) and Stall in s.wanted and s.wants(Tick)
    s.listen(a, False)
    assert not s.wants(Stall) and not s.wants(Tick)
    s.unsubscribe(a)
    assert not s.wants(Stall)


def test_a_subscriber_that_raises_is_counted_logged_once_and_the_others_are_told(
        caplog: pytest.LogCaptureFixture) -> None:
    s = Stream()
    got: list[float] = []

    def broken(e: Stall) -> None:
        raise RuntimeError("subscriber bug")

    s.subscribe(broken, Stall)
    s.subscribe(lambda e: got.append(e.seconds), Stall)
    with caplog.at_level(logging.ERROR, "corral.supervisor"):
        for i in range(3):
            s.emit(Stall(float(i)))
    assert got == [0.0, 1.0, 2.0]
    assert s.failures == 3 and s.stats()["subscriber_failures"] == 3
    assert len([r for r in caplog.records if "subscriber bug" in str(r.exc_info)]) == 1


def test_an_objects_own_subscribers_are_told_as_the_streams_are(
        caplog: pytest.LogCaptureFixture) -> None:
    """`tell`: subscriptions an object keeps (a task's watchers) get the same containment,
    counts and rate-limited log as the stream's own subscribers."""
    s = Stream()
    got: list[float] = []

    def broken(e: Stall) -> None:
        raise RuntimeError("watcher bug")

    own = (Subscription(broken, (Stall,)), Subscription(lambda e: got.append(e.seconds),
                                                        (Stall,)))
    with caplog.at_level(logging.ERROR, "corral.supervisor"):
        for i in range(3):
            s.tell(own, Stall(float(i)))
    assert got == [0.0, 1.0, 2.0]
    assert (s.failures, s.delivered, own[0].failures) == (3, 3, 3)
    assert len([r for r in caplog.records if "watcher bug" in str(r.exc_info)]) == 1
    assert not s.wants(Stall)  # told, never subscribed


def test_unsubscribing_during_delivery_disturbs_nothing() -> None:
    s = Stream()
    got: list[str] = []

    def once(e: Stall) -> None:
        got.append("once")
        s.unsubscribe(sub)

    sub = s.subscribe(once, Stall)
    s.subscribe(lambda e: got.append("other"), Stall)
    s.emit(Stall(0.0))
    s.emit(Stall(0.0))
    assert got == ["once", "other", "other"]


async def test_a_raising_transition_subscriber_during_a_reap_never_skips_the_restart(
        sup: Supervisor) -> None:
    # a subscriber that raises on `terminated`, as a reap emits it: the restart policy
    # decides all the same (Backoff), and the replica comes back
    sup.add(agent("again", restart="always", backoff_initial=0.01, backoff_max=0.01))
    r = await sup.wait_state("again", State.READY)
    proc = r.process
    assert proc is not None

    def broken(e: Transition) -> None:
        if e.state == State.TERMINATED:
            raise RuntimeError("subscriber bug")

    sup.stream.subscribe(broken, Transition)
    seen = sup.subscribe()
    proc.kill_group(signal.SIGKILL)
    await sup.wait_event(lambda e: e.name == "again" and e.state == State.READY
                         and e.previous == State.STARTING, 10)
    states = []
    while not seen.empty():
        states.append(seen.get_nowait().state.value)
    assert states[:4] == ["terminated", "backoff", "starting", "ready"]
    assert r.restarts == 1 and sup.runtime_stats().restarts_by_cause == {"crash": 1}
    assert sup.runtime_stats().subscriber_failures == 1
    await asyncio.wait_for(r.stop(), 10)
