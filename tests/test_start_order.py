"""Start order (`after`, issue 57): the order checked whole at load, then a chain of real
processes (Xvfb -> VNC -> app in an image) started in order, each once the one before is
ready, and stopped in reverse."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.supervisor import State, Supervisor
from corral.supervisor.config import AgentSpec
from corral.supervisor.process_replica import Transition
from corral.supervisor.startorder import order_problem, stop_layers

from .conftest import SPARED
from .daemon_harness import corral_run
from .test_plain import plain

ROOT = Path(__file__).resolve().parent.parent


def specs(**after: list[str]) -> dict[str, AgentSpec]:
    return {n: AgentSpec(name=n, command="true", after=a) for n, a in after.items()}


def test_an_order_that_cannot_hold_is_named() -> None:
    assert order_problem(specs(a=[], b=["a"], c=["b", "a"])) is None
    assert order_problem(specs(a=["a"])) == ("a", "after", "names the agent itself")
    assert order_problem(specs(a=["nope"])) == ("a", "after", "no agent nope is declared")
    assert order_problem(specs(a=["c"], b=["a"], c=["b"])) == (
        "a", "after", "a cycle: a -> c -> b -> a")


def test_a_stop_of_all_takes_the_start_in_reverse_layer_by_layer() -> None:
    assert stop_layers(specs(app=["vnc"], vnc=["xvfb"], xvfb=[], side=[])) == [
        ["app"], ["vnc"], ["xvfb", "side"]]
    assert stop_layers(specs(a=[], b=[])) == [["a", "b"]]
    assert stop_layers({}) == []


def test_check_config_refuses_a_cycle_and_an_unknown_agent(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[agents.a]\ncommand = 'true'\nafter = ['b']\n"
                 "[agents.b]\ncommand = 'true'\nafter = ['a']\n")
    r = corral_run(["check-config", "--no-check", str(p)],
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stderr) == (
        1, f"corral: invalid config: {p}: agents.a.after: a cycle: a -> b -> a\n")
    p.write_text("[agents.a]\ncommand = 'true'\nafter = ['vnc']\n")
    r = corral_run(["check-config", "--no-check", str(p)],
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stderr) == (
        1, f"corral: invalid config: {p}: agents.a.after: no agent vnc is declared\n")


@pytest.mark.deadline(90)
async def test_a_chain_starts_in_order_each_once_the_one_before_is_ready_and_stops_in_reverse(
        ) -> None:
    sup = Supervisor(heartbeat_interval=0.1, heartbeat_timeout=2.0, spared=SPARED)
    sup.open()
    seen: list[tuple[str, State]] = []
    sup.stream.subscribe(lambda e: seen.append((e.name, e.state)), Transition)
    try:
        # added app first: the order is the chain's, not the file's; each holds back its
        # readiness a little (start_secs), so a start that did not wait would show
        sup.add(plain("app", ["sleep", "1000"], after=["vnc"], start_secs=0.3))
        sup.add(plain("vnc", ["sleep", "1000"], after=["xvfb"], start_secs=0.3))
        sup.add(plain("xvfb", ["sleep", "1000"], start_secs=0.3))
        await sup.wait_state("app", State.READY, timeout=30)
        assert seen == [("xvfb", State.STARTING), ("xvfb", State.READY),
                        ("vnc", State.STARTING), ("vnc", State.READY),
                        ("app", State.STARTING), ("app", State.READY)]
        seen.clear()
    finally:
        await sup.close()
    downs = [(n, s) for n, s in seen if s in (State.SHUTTING_DOWN, State.TERMINATED)]
    assert downs == [("app", State.SHUTTING_DOWN), ("app", State.TERMINATED),
                     ("vnc", State.SHUTTING_DOWN), ("vnc", State.TERMINATED),
                     ("xvfb", State.SHUTTING_DOWN), ("xvfb", State.TERMINATED)]


@pytest.mark.deadline(90)
async def test_a_stop_while_waiting_for_its_order_starts_nothing(sup: Supervisor) -> None:
    sup.add(plain("first", ["sleep", "1000"], autostart=False))
    sup.add(plain("second", ["sleep", "1000"], after=["first"]))
    # first never started is as far up as it goes: second does not wait for it
    await sup.wait_state("second", State.READY, timeout=30)
    await sup.stop("second")
    sup.add(plain("slow", ["sleep", "1000"], start_secs=60))
    sup.add(plain("waits", ["sleep", "1000"], after=["slow"]))
    await sup.wait_state("slow", State.STARTING, timeout=30)
    await sup.stop("waits")  # while it waits for slow: it stays down
    await sup.stop("slow")
    r = sup.agent("waits").replicas[0]
    assert (r.state, r.pid) == (State.INITIAL, None)
