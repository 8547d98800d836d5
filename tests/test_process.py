"""One OS process under corral (process.py): what happens to its pipes when connecting
them to the loop fails; its requests wait while it does not read the answers; how what
is written to its stdin goes out."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
from typing import Any

from corral.cork import CORK_BYTES
from corral.jsonrpc import Peer
from corral.supervisor.containment import Containment
from corral.supervisor.process import STDIN_HIGH, ChildProcess

from .conftest import _is_pipe_or_pidfd, open_fds
from .test_gateway_stdio import wait_until_async


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
    # transport's to close: uvloop's was given a duplicate of it (pipeends.py), the file
    # closed at once
    assert stderr.closed and stdin.closed
    # stdin's transport made, stdout's not (no reader), stderr's not (its file closed here)
    assert child.stdin is not None and child.reader is None
    taken = child.stdin.get_extra_info("pipe").fileno()
    os.fstat(taken)  # open: the transport's
    child.close()
    await asyncio.sleep(0)  # transports close their pipes a turn later
    await asyncio.sleep(0)
    popen.stdout.close()
    # (the loop may have made fds of its own meanwhile: pipes and pidfds are ours)
    assert {fd for fd in open_fds() - before if _is_pipe_or_pidfd(fd)} == set()


# sends requests without end; reads nothing of its stdin until SIGUSR1
CHATTY = """
import os, signal, threading
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
def chatter():
    n = 0
    while True:
        os.write(1, b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"m"}\\n' % i
                             for i in range(n, n + 100)))
        n += 100
threading.Thread(target=chatter, daemon=True).start()
signal.sigwait({signal.SIGUSR1})
while os.read(0, 1 << 16):
    pass
"""


def _spawn(code: str) -> tuple[subprocess.Popen[bytes], ChildProcess]:
    """Python running `code` in a session of its own, watched as a ChildProcess (its
    pipes still the Popen's: `_pipes` hands them over to `attach`)."""
    popen = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    child = ChildProcess(popen.pid, os.pidfd_open(popen.pid), asyncio.get_running_loop(),
                         Containment(), "token", reap=popen.poll)
    return popen, child


def _pipes(popen: subprocess.Popen[bytes]) -> tuple[Any, Any, Any]:
    assert popen.stdin and popen.stdout and popen.stderr
    return popen.stdin.detach(), popen.stdout.detach(), popen.stderr.detach()


async def test_requests_wait_unread_while_answers_to_them_are_unread() -> None:
    popen, child = _spawn(CHATTY)
    answered: list[int] = []
    peer = Peer("chatty", child.write, dispatch=lambda m, p, _: answered.append(1))
    await child.attach(*_pipes(popen), on_stdout_line=peer.feed_line, on_stderr_lines=print,
                       on_oversize=print)
    assert child.reader is not None
    peer.reader, child.peer = child.reader, peer
    try:
        # it reads none of the answers: past STDIN_HIGH of them, its requests wait
        # (the request that finds its requests paused is held as it is read: a turn or
        # more after the mark, on a loaded machine)
        await wait_until_async(lambda: child.stdin_full and peer.held is not None, 30)
        assert peer.requests_paused and child.reader.paused
        seen, backlog = len(answered), child.stdin_backlog
        # past the mark by at most what one turn of the loop gathers before it is written
        # (CORK_BYTES) and one answer
        assert STDIN_HIGH < backlog < STDIN_HIGH + CORK_BYTES + 64
        for _ in range(20):  # for as long as a few reads take: nothing more is taken
            await asyncio.sleep(0.005)
            assert (len(answered), child.stdin_backlog) == (seen, backlog)
        # it reads them: under STDIN_LOW, its requests are taken again
        os.kill(popen.pid, signal.SIGUSR1)
        await wait_until_async(lambda: len(answered) > seen + 100_000, 30)
    finally:
        child.kill_group(signal.SIGKILL)
        popen.wait(10)
        child.close()
        await asyncio.sleep(0)  # transports close their pipes a turn later


def in_pipe(transport: Any) -> int:
    """The bytes written to a pipe that its reader has not read (the kernel's FIONREAD)."""
    fd = transport.get_extra_info("pipe").fileno()
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])


async def test_stdin_written_in_one_turn_goes_out_at_its_end_in_order() -> None:
    """The first message written in a turn of the loop goes at once (one at a time, none
    waits for a turn); those after it in the same turn are gathered and written once at
    its end (a burst of tasks wakes the worker twice, not once a message); past CORK_BYTES
    what is gathered goes at once, so the transport's buffer, which backlog checks read,
    never lags far behind. (The process reads its stdin only once told: what is in the
    pipe, or in the transport's buffer, is what was written to it.)"""
    echo = ("import signal, sys\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
            "sys.stdout.buffer.write(b'ready\\n')\nsys.stdout.buffer.flush()\n"
            "signal.sigwait({signal.SIGUSR1})\n"
            "for line in sys.stdin.buffer:\n    sys.stdout.buffer.write(line)\n"
            "    sys.stdout.buffer.flush()\n")
    popen, child = _spawn(echo)
    lines: list[bytes] = []
    try:
        await child.attach(*_pipes(popen), on_stdout_line=lines.append,
                           on_stderr_lines=print, on_oversize=print)
        assert child.stdin is not None
        written = child.stdin.get_write_buffer_size
        await wait_until_async(lambda: lines == [b"ready"], 10)  # SIGUSR1 blocked
        lines.clear()

        def out() -> int:  # what went to the transport: in the pipe or its buffer
            return in_pipe(child.stdin) + written()

        def size(messages: list[bytes]) -> int:
            return sum(len(m) + 1 for m in messages)

        sent = [b"first"]
        child.write(b"first\n")
        assert out() == size(sent)  # out at once
        for i in range(3):
            sent.append(b"message %d" % i)
            child.write(sent[-1] + b"\n")
        child.write_parts([b"in ", memoryview(b"pieces"), b"\n"])
        sent.append(b"in pieces")
        assert out() == size(sent[:1])  # held, not written
        await asyncio.sleep(0)  # the turn ends: all of it in one writev
        assert in_pipe(child.stdin) == size(sent) and written() == 0
        child.write(b"next turn\n")
        sent.append(b"next turn")
        assert out() == size(sent)  # the first of its turn: at once
        big = b"x" * CORK_BYTES
        child.write(b"small\n")
        child.write(big + b"\n")  # over the bound: out now, with what was gathered before
        sent += [b"small", big]
        assert out() == size(sent)
        os.kill(popen.pid, signal.SIGUSR1)  # it reads them
        await wait_until_async(lambda: len(lines) >= len(sent), 10)
        assert lines == sent
        child.write(b"last\n")
        child.close_stdin()  # what is gathered goes before the end of input
        await wait_until_async(lambda: len(lines) > len(sent), 10)
        assert lines[-1] == b"last"
        assert popen.wait(10) == 0
    finally:
        if popen.poll() is None:
            os.kill(popen.pid, 9)
            popen.wait(10)
        child.close()


async def test_what_a_uvloop_transport_holds_of_a_pipe_closes_nothing_and_its_close_once(
        ) -> None:
    """Decision 1009: uvloop's pipe transport closes its fd (libuv) and then calls the
    file object's `close()`, which closed the number again: in a daemon with threads,
    another thread's file given that number in between (a deploy's scan, seen in
    test_packages). What it holds closes nothing; libuv's close is the one."""
    before = open_fds()
    popen, child = _spawn("import sys; sys.stdin.buffer.read()")
    given = _pipes(popen)
    await child.attach(*given, on_stdout_line=print, on_stderr_lines=print,
                       on_oversize=print)
    fds = child.fds()
    assert fds is not None and len(set(fds)) == 3
    assert child.stdin is not None
    held = child.stdin.get_extra_info("pipe")
    held.close()  # what the transport calls after libuv closed the number
    try:
        os.fstat(fds[0])
    except OSError as exc:
        raise AssertionError("what the transport holds closed its fd, which libuv closes "
                             f"too: {exc}") from None
    assert all(f.closed for f in given)  # no second owner of the pipes left to a GC
    child.close()
    popen.kill()
    popen.wait(10)
    await wait_until_async(lambda: not {fd for fd in open_fds() - before
                                        if _is_pipe_or_pidfd(fd)}, 10)


def test_an_asyncio_loops_transport_is_given_the_pipe_it_closes_itself() -> None:
    """asyncio's own pipe transports close their pipe through `close()` alone: given the
    file object as it is, and nothing is left open."""
    async def attached() -> None:
        popen, child = _spawn("import sys; sys.stdin.buffer.read()")
        given = _pipes(popen)
        await child.attach(*given, on_stdout_line=print, on_stderr_lines=print,
                           on_oversize=print)
        assert child.stdin is not None
        assert child.stdin.get_extra_info("pipe") is given[0] and not given[0].closed
        child.close()
        popen.kill()
        popen.wait(10)
        for _ in range(3):  # (its transports close their pipes a turn or two later)
            await asyncio.sleep(0)
        assert all(f.closed for f in given)

    loop = asyncio.new_event_loop()  # the standard library's, not uvloop's
    try:
        loop.run_until_complete(attached())
    finally:
        loop.close()
