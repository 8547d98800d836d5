"""The daemon's stop cannot hang (decision 516): each part's teardown runs within its
deadline, one past it is said by name and skipped, and the parts after it are still torn
down, in order; SIGUSR1 writes every task's and thread's stack to the daemon's log, for
an operator to see what a daemon that does not stop waits on."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from corral.daemon.teardown import Teardown

from .daemon_harness import Daemon, hello


@contextlib.asynccontextmanager
async def part(name: str, torn: list[str], stuck: asyncio.Event | None = None
               ) -> AsyncIterator[str]:
    """A part that notes its teardown; `stuck`: one that waits on it first, and takes
    a cancellation for no answer (as a lost cancellation in a library does)."""
    try:
        yield name
    finally:
        while stuck is not None and not stuck.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await stuck.wait()
        torn.append(name)


async def test_a_teardown_step_past_its_deadline_is_said_by_name_and_skipped() -> None:
    torn: list[str] = []
    said: list[str] = []
    never = asyncio.Event()
    began = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        teardown = Teardown(stack, said.append)
        assert await teardown.enter("the first", part("first", torn)) == "first"
        await teardown.enter("the stuck one", part("stuck", torn, never), lambda: 0.3)
        await teardown.enter("the last", part("last", torn))
    assert torn == ["last", "first"]
    assert said == ["stopping: the stuck one did not finish within 0.3 s "
                    "(TEARDOWN_STEP): skipped"]
    assert teardown.skipped == ["the stuck one"]
    assert time.monotonic() - began < 10
    never.set()  # the step left behind ends here, and is torn down after all
    for _ in range(100):
        if "stuck" in torn:
            break
        await asyncio.sleep(0.01)
    assert torn == ["last", "first", "stuck"]


async def test_a_step_within_its_deadline_is_waited_for_and_its_error_raised() -> None:
    torn: list[str] = []
    said: list[str] = []

    @contextlib.asynccontextmanager
    async def failing() -> AsyncIterator[None]:
        yield
        await asyncio.sleep(0.05)
        raise OSError("the disk is gone")

    try:
        async with contextlib.AsyncExitStack() as stack:
            teardown = Teardown(stack, said.append)
            await teardown.enter("the first", part("first", torn))
            await teardown.enter("the failing one", failing())
    except OSError as exc:
        assert str(exc) == "the disk is gone"
    else:
        raise AssertionError("the teardown's error was lost")
    assert torn == ["first"] and said == []


def test_sigusr1_writes_every_tasks_stack_to_the_log_and_the_daemon_goes_on(
        tmp_path: Path) -> None:
    """Without its handler, SIGUSR1's default ends the daemon."""
    d = Daemon(tmp_path, hello("h"))
    try:
        d.start()
        assert d.proc is not None
        d.proc.send_signal(signal.SIGUSR1)
        log = d.state / "logs" / "corral.log"
        deadline = time.monotonic() + 30
        while True:
            text = log.read_text(errors="replace")
            lines = text.splitlines()
            heads = [ln for ln in lines if "stack dump (SIGUSR1):" in ln]
            if heads and any("thread " in ln for ln in lines):
                break
            assert d.proc.poll() is None, f"the daemon exited {d.proc.returncode}"
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.05)
        # the arbiter, waiting for a signal, is one of the tasks
        assert any(" x task " in ln and "in Daemon._arbiter" in ln for ln in lines), lines
        assert d.json("status")["agents"][0]["state"] == "ready"
        assert d.stop() == 0
    finally:
        d.close()
