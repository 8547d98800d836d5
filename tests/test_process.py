"""One OS process under corral (process.py): what happens to its pipes when connecting
them to the loop fails."""

from __future__ import annotations

import asyncio
import os
import subprocess

from corral.supervisor.containment import Containment
from corral.supervisor.process import ChildProcess

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
