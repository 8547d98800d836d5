"""One OS process under corral (process.py): what happens to its pipes when connecting
them to the loop fails; a stdin it does not read past the budget, and a stdout held."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from corral.supervisor.containment import Containment
from corral.supervisor.process import STDIN_HIGH, STDIN_LOW, ChildProcess

from .conftest import _is_pipe_or_pidfd, open_fds


async def test_an_attach_that_fails_kills_the_process_and_closes_every_pipe_once() -> None:
    before = open_fds()
    popen = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             start_new_session=True)
    assert popen.stdin and popen.stdout
    loop = asyncio.get_running_loop()
    child = ChildProcess(popen.pid, os.pidfd_open(popen.pid), loop, Containment(), "token",
                         reap=popen.poll)
    # stdout's pipe cannot be connected (here: closed already), after stdin's was taken
    # by a transport; stderr's is still open and untaken
    r, w = os.pipe()
    broken = open(r, "rb", buffering=0)  # noqa: SIM115
    os.close(w)
    broken.close()
    r, w = os.pipe()
    stderr = open(r, "rb", buffering=0)  # noqa: SIM115
    os.close(w)
    stdin = popen.stdin.detach()
    try:
        await child.attach(stdin, broken, stderr, on_stdout_line=print,
                           on_stderr_lines=print, on_oversize=print)
    except ValueError as exc:
        assert str(exc) == "I/O operation on closed file"
    else:
        raise AssertionError("attach connected a closed pipe")
    assert popen.wait(10) == -9  # killed: a process must not run on unwatched
    # the pipe no transport took is closed now; the one a transport took is the
    # transport's to close (closed here too, its fd number would be free for the
    # transport to close someone else's a turn later)
    assert stderr.closed and not stdin.closed
    assert child.stdin is not None and child._stdout is None and child._stderr is None
    child.close()
    await asyncio.sleep(0)  # transports close their pipes a turn later
    await asyncio.sleep(0)
    assert stdin.closed
    popen.stdout.close()
    # (the loop may have made fds of its own meanwhile: pipes and pidfds are ours)
    assert {fd for fd in open_fds() - before if _is_pipe_or_pidfd(fd)} == set()


# writes lines to stdout without end; reads nothing of its stdin until SIGUSR1
CHATTY = """
import os, signal, threading
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
def chatter():
    while True:
        os.write(1, b"line\\n" * 100)
threading.Thread(target=chatter, daemon=True).start()
signal.sigwait({signal.SIGUSR1})
while os.read(0, 1 << 16):
    pass
"""


async def test_a_stdin_unread_past_the_budget_is_told_and_stdout_can_be_held() -> None:
    popen = subprocess.Popen([sys.executable, "-c", CHATTY], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    assert popen.stdin and popen.stdout and popen.stderr
    loop = asyncio.get_running_loop()
    child = ChildProcess(popen.pid, os.pidfd_open(popen.pid), loop, Containment(), "token",
                         reap=popen.poll)
    lines: list[bytes] = []
    full: list[bool] = []
    pipes = [f.detach() for f in (popen.stdin, popen.stdout, popen.stderr)]
    await child.attach(*pipes, on_stdout_line=lines.append, on_stderr_lines=print,
                       on_oversize=print, on_stdin_full=lambda p, f: full.append(f))

    async def until(cond: Callable[[], bool], what: str) -> None:
        async with asyncio.timeout(10):
            while not cond():
                await asyncio.sleep(0.01)
        assert cond(), what

    try:
        await until(lambda: len(lines) > 0, "lines from the process")
        # more than STDIN_HIGH it does not read: told at once, once
        child.write(b"x" * (3 * STDIN_HIGH))
        assert child.stdin_full and full == [True] and child.stdin_backlog > STDIN_HIGH
        child.write(b"x")
        assert full == [True]
        # held: no line is delivered, for as long as a few reads take
        child.hold(True)
        seen = len(lines)
        for _ in range(20):
            await asyncio.sleep(0.005)
            assert len(lines) == seen
        # it reads its stdin: under STDIN_LOW it is told so
        os.kill(popen.pid, signal.SIGUSR1)
        await until(lambda: not child.stdin_full, "the backlog to drain")
        assert full == [True, False] and child.stdin_backlog <= STDIN_LOW
        assert len(lines) == seen  # still held: the owner lets go, not the drain
        child.hold(False)
        await until(lambda: len(lines) > seen, "lines after the hold")
    finally:
        child.kill_group(signal.SIGKILL)
        popen.wait(10)
        child.close()
        await asyncio.sleep(0)  # transports close their pipes a turn later
