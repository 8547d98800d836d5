"""Success exit codes, the start window and the stop signal (issue 57): the policy and the
machine without processes, then real processes under a supervisor."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from corral.supervisor import State, Supervisor
from corral.supervisor.lifecycle import Cause, Machine
from corral.supervisor.restart import RestartPolicy, StartWindow

from .conftest import agent
from .test_gateway_stdio import wait_until_async
from .test_plain import events_of, plain, script


def policy(mode: str = "on-failure", secs: float = 0.0, retries: int = 3) -> RestartPolicy:
    return RestartPolicy(mode, max_restarts=2, window=60.0,  # type: ignore[arg-type]
                         backoff_initial=1.0, backoff_max=4.0, stable_after=30.0,
                         start=StartWindow(secs, retries), rng=random.Random(1))


def ended(m: Machine, *, clean: bool, uptime: float, now: float = 0.0) -> Cause | None:
    """A life of `uptime` s ended: the machine's decision (None: it stays down), fired."""
    m.fire(Cause.SPAWN, "started")
    m.fire(m.exit_cause, "exit")
    d = m.decide(clean=clean, uptime=uptime, now=now, closing=False, reason="exited")
    if d is None:
        return None
    m.fire(d.cause, d.reason)
    return d.cause


# -- the policy and the machine --------------------------------------------------------------

@pytest.mark.parametrize("uptime,secs,retries,outcomes", [
    # no window: a quick exit is a restart like any, counted against max_restarts (2)
    (0.1, 0.0, 3, [True, True, False]),
    # within the window: failed starts, retried start_retries (3) times, then given up,
    # not bounded by max_restarts
    (0.1, 5.0, 3, [True, True, True, False]),
    (0.1, 5.0, 0, [False]),
    # past the window: restarts again
    (6.0, 5.0, 0, [True, True, False]),
])
def test_failed_starts_are_bounded_by_start_retries(
        uptime: float, secs: float, retries: int, outcomes: list[bool]) -> None:
    p = policy("always", secs, retries)
    got = [p.on_exit(clean_exit=False, uptime=uptime, now=float(i)).restart
           for i in range(len(outcomes))]
    assert got == outcomes


def test_a_start_that_reaches_the_window_clears_the_failed_starts() -> None:
    p = policy("always", secs=5.0, retries=1)
    assert p.on_exit(clean_exit=False, uptime=0.1, now=0).failed_start == 1
    d = p.on_exit(clean_exit=False, uptime=9.0, now=1)  # it came up, then crashed
    assert (d.restart, d.failed_start) == (True, 0)
    assert p.on_exit(clean_exit=False, uptime=0.1, now=2).failed_start == 1  # 1 again
    d = p.on_exit(clean_exit=False, uptime=0.1, now=3)
    assert (d.restart, d.give_up, d.failed_start) == (False, True, 2)
    p.reset()  # a start by hand forgives
    assert p.on_exit(clean_exit=False, uptime=0.1, now=4).restart


def test_a_clean_exit_within_the_window_is_a_failed_start_whatever_the_mode() -> None:
    for mode in ("on-failure", "never"):
        m = Machine(policy(mode, secs=5.0, retries=1))
        assert ended(m, clean=True, uptime=0.2) is Cause.POLICY_RESTART
        assert m.reason.startswith("restarting in ")
        assert m.reason.endswith(" s after: failed start 1 of 2 (up 0.20 s, under "
                                 "start_secs = 5): exited")
        m.fire(Cause.BACKOFF_OVER, "restart #1")
        m.fire(Cause.CRASH, "exited")
        d = m.decide(clean=True, uptime=0.3, now=1.0, closing=False, reason="exited")
        assert d is not None and d.cause is Cause.GIVE_UP
        m.fire(d.cause, d.reason)
        assert (m.state, m.reason) == (State.FAILED, (
            "failed to start: exited within start_secs (5 s) 2 times in a row "
            "(start_retries = 1); last exit: exited"))


def test_a_clean_exit_past_the_window_follows_the_mode() -> None:
    m = Machine(policy("on-failure", secs=5.0))
    assert ended(m, clean=True, uptime=6.0) is None
    assert m.state is State.TERMINATED and not m.failed


# -- real processes --------------------------------------------------------------------------

@pytest.mark.deadline(60)
async def test_an_exit_code_of_exit_codes_is_not_restarted_nor_failed(
        sup: Supervisor, tmp_path: Path) -> None:
    # exits 2 on purpose (a queue drained), 3 by mistake: which is which is in the file
    code = tmp_path / "code"
    code.write_text("2")
    sh = script(tmp_path, "exit.sh", f"read -r c < {code}\nexit $c\n")
    sup.add(plain("drain", ["sh", sh], exit_codes=(0, 2), max_restarts=1))
    await sup.wait_state("drain", State.TERMINATED, timeout=10)
    r = sup.agent("drain").replicas[0]
    st = r.status()
    assert (st.state, st.restarts, st.last_exit) == (
        State.TERMINATED, 0, "exited with status 2")
    code.write_text("3")
    sup.start("drain")
    await sup.wait_state("drain", State.FAILED, timeout=10)
    assert r.reason == "too many restarts (1 within 60 s); last exit: exited with status 3"


@pytest.mark.deadline(60)
async def test_without_exit_codes_status_2_is_a_failure(sup: Supervisor, tmp_path: Path) -> None:
    sup.add(plain("drain", ["sh", "-c", "exit 2"], max_restarts=1))
    await sup.wait_state("drain", State.FAILED, timeout=10)


@pytest.mark.deadline(60)
async def test_start_secs_holds_back_readiness_and_early_exits_fail_the_start(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = events_of(sup, "slow")
    loop = asyncio.get_running_loop()
    began = loop.time()
    sup.add(plain("slow", ["sleep", "1000"], start_secs=1.0))
    r = await sup.wait_state("slow", State.READY, timeout=10)
    assert loop.time() - began >= 1.0
    assert [(e.state, e.reason) for e in seen] == [
        (State.STARTING, "started"), (State.READY, "started, up 1 s (start_secs)")]
    await r.stop()
    # a program that dies at once: each death a failed start, three retries, then failed
    seen.clear()
    sup.add(plain("dies", ["sh", "-c", "exit 0"], start_secs=5.0, start_retries=2,
                  restart="never", backoff_initial=0.05))
    await sup.wait_state("dies", State.FAILED, timeout=20)
    died = sup.agent("dies").replicas[0]
    assert died.reason == ("failed to start: exited within start_secs (5 s) 3 times in a "
                           "row (start_retries = 2); last exit: exited with status 0")
    st = died.status()
    assert (st.restarts, st.ready) == (2, False)


@pytest.mark.deadline(60)
async def test_stop_signal_is_sent_in_place_of_sigterm(sup: Supervisor, tmp_path: Path) -> None:
    said, armed = tmp_path / "said", tmp_path / "armed"
    sh = script(tmp_path, "int.sh", f"trap 'echo int > {said}; exit 0' INT\n"
                                    f"trap '' TERM\ntouch {armed}\n"
                                    "while :; do sleep 0.05; done\n")
    sup.add(plain("plain", ["sh", sh], stop_signal="INT"))
    r = await sup.wait_state("plain", State.READY, timeout=10)
    await wait_until_async(armed.exists)  # its traps are set
    await r.stop()
    assert said.read_text() == "int\n"
    assert (r.state, r.last_exit) == (State.TERMINATED, "stopped")
    assert signal.Signals.SIGINT is sup.agent("plain").spec.stop_signum


@pytest.mark.deadline(60)
@pytest.mark.parametrize("stop_signal,said", [
    # a worker that ignores its stdin's EOF, the shutdown request and SIGTERM: the stop
    # signal comes where SIGTERM would, and the escalation names it
    ("INT", "stopped (SIGINT after 0.3 s)"),
    ("KILL", "stopped (SIGKILL after 0.3 s)"),
])
async def test_a_workers_stop_sends_its_stop_signal_and_says_so(
        sup: Supervisor, stop_signal: str, said: str) -> None:
    sup.add(agent("stubborn", "misbehave.py", env={"MISBEHAVE": "stubborn"},
                  stop_timeout=0.3, stop_signal=stop_signal))
    r = await sup.wait_state("stubborn", State.READY)
    await sup.stop("stubborn")
    assert (r.state, r.reason) == (State.TERMINATED, said)
