"""stop()'s contract: it returns within its bounds whatever the process does."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from corral.supervisor import LogBatch, State, Supervisor, executor
from corral.supervisor.process import ChildProcess

from .conftest import agent


async def test_a_process_that_outlives_sigkill_does_not_hang_stop(
        sup: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    # a process in uninterruptible sleep is not reaped after SIGKILL until its system call
    # returns; here the SIGKILL is not sent at all, which stop() cannot tell apart
    monkeypatch.setattr(executor, "KILL_GRACE", 0.3)
    sup.add(agent("stuck", restart="always"))
    r = await sup.wait_state("stuck", State.READY)
    proc = r.process
    assert proc is not None
    logs: list[str] = []
    reaped = asyncio.get_running_loop().create_future()

    def on_log(e: LogBatch) -> None:
        logs.extend(x.decode() for x in e.lines)
        if any("after SIGKILL, is reaped" in x for x in logs) and not reaped.done():
            reaped.set_result(None)

    sup.stream.subscribe(on_log, LogBatch)
    monkeypatch.setattr(ChildProcess, "kill_group", lambda self, sig: None)
    try:
        await asyncio.wait_for(r.stop("stopped", graceful=False), 5)
        assert r.state == State.TERMINATED and r.process is None
        await asyncio.wait_for(r.stopped(), 1.0)  # its life is over, given up
        assert r.reason == r.last_exit == "stopped (not reaped 0.3 s after SIGKILL: given up)"
        assert sup.runtime_stats().stuck_after_kill == 1
        assert any(f"pid {proc.pid} was not reaped 0.3 s after SIGKILL: given up" in x
                   for x in logs)
        assert not proc.exited.done()  # it still runs, and stays watched
    finally:
        monkeypatch.undo()
        os.killpg(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(reaped, 5)  # when it dies at last, it is reaped
    assert proc.pidfd == -1 and proc.token not in sup.containment.live
    assert r.state == State.TERMINATED  # and nothing restarted it: it was stopped
