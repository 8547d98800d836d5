"""The worker SDK over real pipes, spoken to by corral's own Peer."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import corral.worker as sdk
from corral import jsonrpc
from corral.jsonrpc import Peer, RpcError
from corral.supervisor import State, Supervisor

from .conftest import ROOT, agent

WORKER = textwrap.dedent('''
    import asyncio, gc, sys, time
    from corral.worker import TaskError, run

    def handle(task, ctx):
        if isinstance(task, dict) and "records" in task:
            return {"frozen": gc.get_freeze_count(), "enabled": gc.isenabled(),
                    "records": len(task["records"])}
        if task == "sleep":
            ctx.progress(0, message="sleeping")  # lets the test know the task runs
            while True:  # until cancelled: a test's wait is never raced by its end
                ctx.check_cancelled()
                time.sleep(0.01)
        if task == "quiet":  # blocks, sending nothing, until cancelled
            while True:
                ctx.check_cancelled()
                time.sleep(0.01)
        if task == "codecs":  # the fast JSON codecs loaded so far
            return [m for m in ("msgspec", "orjson") if m in sys.modules]
        if task == "print":
            print("to stderr, not the channel")
            return "printed"
        if task == "fail":
            raise TaskError("nope", {"why": "asked"})
        if task == "tools":
            return ctx.list_tools()
        if task == "progress":
            ctx.progress(1, 2, "half")
            return "done"
        if task == "attempt":
            return [ctx.task_id, ctx.attempt]
        return {"echo": task, "agent": ctx.agent, "config": ctx.config}

    async def ahandle(task, ctx):
        if task == "sleep":
            ctx.progress(0, message="sleeping")
            await asyncio.Event().wait()  # until cancelled
        if task == "tools":
            return await ctx.list_tools()
        return {"async": task}

    run(ahandle if sys.argv[1:] == ["async"] else handle)
''')


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process, peer: Peer, notes: list[Any],
                 is_async: bool = False) -> None:
        self.is_async = is_async
        self.proc = proc
        self.peer = peer
        self.notes = notes
        self.noted = asyncio.Event()  # set at each notification from the worker


async def start(tmp_path: Path, *args: str) -> Worker:
    script = tmp_path / "w.py"
    script.write_text(WORKER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdin and proc.stdout
    notes: list[Any] = []
    stdin = proc.stdin
    w: Worker | None = None

    def on_note(method: str, params: Any, _: Peer) -> None:
        notes.append((method, bytes(params)))
        if w is not None:
            w.noted.set()

    peer = Peer("worker", stdin.write,
                on_notification=on_note,
                dispatch=lambda m, p, _: [{"name": "notes__add"}] if m == "tools/list" else None)

    async def pump() -> None:
        assert proc.stdout
        while line := await proc.stdout.readline():
            peer.feed_line(line.rstrip(b"\n"))
        peer.close("worker exited")

    pumping = asyncio.ensure_future(pump())
    peer.pump = pumping  # type: ignore[attr-defined]  # keep a reference
    await peer.request("initialize", {"agent": "a", "replica": 0, "protocol_version": "1",
                                      "config": {"k": 1}, "state": None}, timeout=10)
    w = Worker(proc, peer, notes, is_async=args == ("async",))
    return w


@pytest.fixture(params=["sync", "async"])
async def worker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Worker]:
    w = await start(tmp_path, *(["async"] if request.param == "async" else []))
    yield w
    if w.proc.returncode is None:
        w.proc.kill()
    await w.proc.wait()


def test_codes_mirror_the_wire_layer() -> None:
    for name in ("METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR", "PEER_CLOSED",
                 "REQUEST_TIMEOUT", "REQUEST_CANCELLED", "TASK_FAILED"):
        assert getattr(sdk, name) == getattr(jsonrpc, name), name


def test_importing_the_sdk_stays_light() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, corral.worker; "
         "print(sorted(m for m in ('asyncio', 'msgspec', 'inspect', 'psutil', 'uvloop', "
         "'concurrent.futures') if m in sys.modules))"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


async def test_ping_is_answered_while_a_task_runs_and_cancel_works(worker: Worker) -> None:
    task = asyncio.ensure_future(worker.peer.request("task/run", {"task_id": "t1",
                                                                  "input": "sleep"}))
    await asyncio.wait_for(worker.noted.wait(), 30)  # the handler is running
    assert worker.notes[-1][0] == "task/progress"
    # answered while the task runs, which it does until cancelled (no time bound: a loaded
    # host's wake-ups are late, and a ping kept behind the task would never be answered)
    assert await worker.peer.request("ping", {}, timeout=30) == {}
    assert not task.done()
    worker.peer.notify("task/cancel", {"task_id": "t1"})
    with pytest.raises(RpcError) as err:
        await asyncio.wait_for(task, 30)
    assert (err.value.code, err.value.message) == (jsonrpc.REQUEST_CANCELLED,
                                                   "task t1 cancelled")


async def test_shutdown_exits_without_answering_the_tasks_it_runs(worker: Worker) -> None:
    """Told to stop, the worker answers `shutdown` and exits: the tasks it runs end with
    it, unanswered, every time (an answer of their cancellation raced the exit, and ended
    a task the supervisor stopped under `cancelled`, never retried)."""
    runs = [asyncio.ensure_future(worker.peer.request(
        "task/run", {"task_id": f"s{i}", "input": "sleep"})) for i in range(4)]
    async with asyncio.timeout(30):
        while sum(1 for m, _ in worker.notes if m == "task/progress") < 4:
            worker.noted.clear()
            await worker.noted.wait()
    _, said = worker.peer.request_future("shutdown", {})
    assert worker.proc.stdin is not None
    worker.proc.stdin.close()  # as corral stops it: the request, then stdin's end
    assert bytes(await asyncio.wait_for(said, 30)) == b"{}"
    assert await asyncio.wait_for(worker.proc.wait(), 30) == 0
    for r in runs:
        with pytest.raises(RpcError) as err:
            await asyncio.wait_for(r, 30)
        assert (err.value.code, err.value.message) == (jsonrpc.PEER_CLOSED, "worker exited")


async def test_a_burst_of_blocking_sync_tasks_runs_at_once(tmp_path: Path) -> None:
    """Sync handlers that block each get a thread, even when their tasks come in one
    read: all eight run at once (each says so, then waits to be cancelled)."""
    w = await start(tmp_path)
    try:
        runs = [asyncio.ensure_future(w.peer.request(
            "task/run", {"task_id": f"s{i}", "input": "sleep"})) for i in range(8)]
        async with asyncio.timeout(30):
            while sum(1 for m, _ in w.notes if m == "task/progress") < 8:
                w.noted.clear()
                await w.noted.wait()
        for i in range(8):
            w.peer.notify("task/cancel", {"task_id": f"s{i}"})
        for r in runs:
            with pytest.raises(RpcError) as err:
                await asyncio.wait_for(r, 30)
            assert err.value.code == jsonrpc.REQUEST_CANCELLED
    finally:
        w.proc.kill()
        await w.proc.wait()


async def test_quick_sync_tasks_share_threads(tmp_path: Path) -> None:
    """Tasks whose handler returns at once, 64 at a time, are run by the threads there
    are, not by a thread each (each would be a wake-up and a fight for the GIL)."""
    w = await start(tmp_path)
    try:
        for _ in range(5):
            out = await asyncio.gather(*(w.peer.request("task/run", {
                "task_id": f"q{i}", "input": i}) for i in range(64)))
            assert [o["output"]["echo"] for o in out] == list(range(64))
        threads = len(os.listdir(f"/proc/{w.proc.pid}/task"))
        assert threads < 16, threads  # the reader, a few for tasks
    finally:
        w.proc.kill()
        await w.proc.wait()


async def test_results_errors_and_tool_requests(worker: Worker) -> None:
    is_async = worker.is_async
    out = await worker.peer.request("task/run", {"task_id": "t2", "input": "x"})
    assert out == ({"output": {"async": "x"}} if is_async else
                   {"output": {"echo": "x", "agent": "a", "config": {"k": 1}}})
    tools = await worker.peer.request("task/run", {"task_id": "t3", "input": "tools"})
    assert tools == {"output": [{"name": "notes__add"}]}
    with pytest.raises(RpcError) as err:
        await worker.peer.request("no/such/method", {})
    assert (err.value.code, err.value.message) == (jsonrpc.METHOD_NOT_FOUND,
                                                   "method not found: no/such/method")


async def test_sync_specifics(tmp_path: Path) -> None:
    w = await start(tmp_path)
    try:
        with pytest.raises(RpcError) as err:
            await w.peer.request("task/run", {"task_id": "f", "input": "fail"})
        assert (err.value.code, err.value.message, err.value.data) == (
            jsonrpc.TASK_FAILED, "nope", {"why": "asked"})
        assert await w.peer.request("task/run", {"task_id": "p", "input": "print"}) == {
            "output": "printed"}
        # (task_id, attempt): 1 when corral says nothing of it (an older corral)
        for params, key in (({"attempt": 3}, ["k", 3]), ({}, ["k", 1]),
                            ({"attempt": "x"}, ["k", 1]), ({"attempt": 0}, ["k", 1])):
            assert await w.peer.request("task/run", {"task_id": "k", "input": "attempt",
                                                     **params}) == {"output": key}
        assert await w.peer.request("task/run", {"task_id": "g", "input": "progress"}) == {
            "output": "done"}
        assert w.notes == [("task/progress",
                            b'{"task_id":"g","progress":1,"total":2,"message":"half"}')]
        assert await w.peer.request("shutdown", {}) == {}
        assert await asyncio.wait_for(w.proc.wait(), 30) == 0
        assert w.proc.stderr is not None
        assert b"to stderr, not the channel" in await w.proc.stderr.read()
    finally:
        if w.proc.returncode is None:
            w.proc.kill()
            await w.proc.wait()


async def test_the_start_up_heap_is_frozen_and_large_inputs_leave_the_collector_on(
        tmp_path: Path) -> None:
    # the collector's full passes walk what tasks leave, not the agent's modules; a large
    # input is decoded with the collector off (JSON has no cycles), and it is on after,
    # also after a large line that is not JSON
    w = await start(tmp_path)
    try:
        records = [{"id": i, "tags": ["a", "b"], "text": "lorem ipsum"} for i in range(2000)]
        assert w.proc.stdin is not None
        w.proc.stdin.write(b'{"not json' + b"x" * 100_000 + b"\n")
        out = await w.peer.request("task/run", {"task_id": "r", "input": {"records": records}})
        assert out["output"]["records"] == 2000 and out["output"]["enabled"] is True
        assert out["output"]["frozen"] > 1000  # the interpreter's and the SDK's objects
    finally:
        w.proc.kill()
        await w.proc.wait()


async def test_stdin_eof_ends_the_worker(worker: Worker) -> None:
    assert worker.proc.stdin is not None
    worker.proc.stdin.close()
    assert await asyncio.wait_for(worker.proc.wait(), 30) == 0


async def test_worker_calls_the_supervisor(sup: Supervisor, tmp_path: Path) -> None:
    (tmp_path / "w.py").write_text(WORKER)
    sup.worker_methods["tools/list"] = lambda replica, params: [{"name": f"for-{replica.name}"}]
    sup.add(agent("asker", command=[sys.executable, str(tmp_path / "w.py")]))
    r = await sup.wait_state("asker", State.READY)
    assert r.peer is not None
    out = await r.peer.request("task/run", {"task_id": "t", "input": "tools"})
    assert out == {"output": [{"name": "for-asker"}]}


async def test_process_title(sup: Supervisor) -> None:
    sup.add(agent("titled", replicas=2))
    r = await sup.wait_state("titled", State.READY, replica=1)
    cmdline = Path(f"/proc/{r.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert cmdline.startswith("corral: agent titled#1")


def test_the_sdk_reads_lines_whole_however_long_and_however_they_arrive() -> None:
    from corral.worker import STDIN_IDLE, _lines

    big = b"b" * (3 * STDIN_IDLE + 7)
    bigger = b"B" * (20 * STDIN_IDLE + 1)
    stream = [b"one\n", big + b"\n", b"two\nthr", b"ee\n", bigger[:100_000], bigger[100_000:],
              b"\n" + bigger + b"\n\nfour\n", b"last-without-newline"]
    r, w = os.pipe()

    def write() -> None:
        for piece in stream:
            os.write(w, piece)
        os.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        got = [bytes(line) for line in _lines(r)]
    finally:
        writer.join()
        os.close(r)
    assert got == [b"one", big, b"two", b"three", bigger, bigger, b"", b"four",
                   b"last-without-newline"]


class RawWorker:
    """The WORKER over raw pipes, for what a Peer would hide: how its answers arrive."""

    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "w.py"
        script.write_text(WORKER)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdin and self.proc.stdout
        self.fd_in, self.fd_out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.buf = b""
        self.send(b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}\n')
        assert json.loads(self.line(30))["id"] == 0

    def send(self, data: bytes) -> None:
        os.write(self.fd_in, data)

    def line(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.fd_out], [], [], left)[0], self.buf
            self.buf += os.read(self.fd_out, 65536)
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def writes(self) -> int:
        """The write calls the worker's process has made."""
        io = Path(f"/proc/{self.proc.pid}/io").read_text()
        return int(io.split("syscw: ")[1].split()[0])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def task_run(rid: int, task_input: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "task/run",
                       "params": {"task_id": f"t{rid}", "input": task_input}}).encode() + b"\n"


def test_the_answers_of_a_burst_go_out_a_few_writes_not_one_each(tmp_path: Path) -> None:
    """64 quick tasks in one read: their answers are written held together (the
    supervisor reads and starts the next in a few turns), each whole and in its place."""
    w = RawWorker(tmp_path)
    try:
        before = w.writes()
        w.send(b"".join(task_run(i, i) for i in range(1, 65)))
        answers = [json.loads(w.line(30)) for _ in range(64)]
        writes = w.writes() - before
        assert sorted(a["id"] for a in answers) == list(range(1, 65))
        assert all(a["result"]["output"]["echo"] == a["id"] for a in answers)
        assert writes < 32, writes
    finally:
        w.close()


def test_an_answer_held_for_the_next_is_not_kept_behind_a_task_that_blocks(
        tmp_path: Path) -> None:
    """A quick task and two that block, in one read: the quick one's answer, held while
    tasks waited for a thread, is written by the reader once it has waited STALL, though
    no task ends after it."""
    w = RawWorker(tmp_path)
    try:
        w.send(task_run(1, "quick") + task_run(2, "quiet") + task_run(3, "quiet"))
        # (the blocked tasks end only when cancelled: an answer held for the next would
        # never come)
        answer = json.loads(w.line(30))
        assert (answer["id"], answer["result"]["output"]["echo"]) == (1, "quick")
        w.send(b"".join(b'{"jsonrpc":"2.0","method":"task/cancel","params":{"task_id":"t%d"}}'
                        b"\n" % i for i in (2, 3)))
        cancelled = [json.loads(w.line(30)) for _ in range(2)]
        assert sorted((a["id"], a["error"]["code"]) for a in cancelled) == [
            (2, jsonrpc.REQUEST_CANCELLED), (3, jsonrpc.REQUEST_CANCELLED)]
    finally:
        w.close()


def test_a_read_of_32_messages_or_more_makes_the_worker_load_the_fast_codec(
        tmp_path: Path) -> None:
    """A busy worker (a read that brought a burst of tasks) decodes and encodes with
    msgspec and orjson from then on; a smaller burst leaves the stdlib's codec."""
    w = RawWorker(tmp_path)
    try:
        for first, burst, codecs in ((1, 16, []), (100, 100, ["msgspec", "orjson"])):
            w.send(b"".join(task_run(i, {"n": i, "s": "é"}) for i in range(first, first + burst)))
            answers = sorted((json.loads(w.line(10)) for _ in range(burst)),
                             key=lambda a: a["id"])
            assert [a["result"]["output"]["echo"] for a in answers] == [
                {"n": i, "s": "é"} for i in range(first, first + burst)]
            w.send(task_run(1000, "codecs"))
            assert json.loads(w.line(10))["result"]["output"] == codecs
    finally:
        w.close()
