"""A task's live output (docs/streams.md): a real SDK agent sends chunks (`ctx.emit`),
followed over SSE (`GET /api/v1/tasks/ID/stream`, resumable with Last-Event-ID), by
`corral run --stream`, and by the engine's async iterator; bounded in bytes, per task and
per tenant, the chunk past the bound said in the stream with the bound's name; kept in
the state database across a restart of the daemon; another tenant's stream is not found."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import msgspec
import pytest

from corral import jsonrpc
from corral.cli.client import Client
from corral.supervisor import Supervisor
from corral.taskoptions import TaskOptions

from .conftest import ROOT, agent, all_ready
from .daemon_harness import Daemon, free_port, problem, shared_tmpdir
from .test_gateway_tasks import Gateway, gateway  # noqa: F401 - the fixture
from .test_http_api import PROBLEM, SOCKET, Api, serving, sse_events
from .test_model_gateway import Shared, shared  # noqa: F401 - the fixture
from .test_ui import chromium_page, needs_chromium

# minutes of this file: a parallel run starts it first (tests/conftest.py longest_first)
pytestmark = pytest.mark.long

# emits `first` chunks, waits for a line on the FIFO `gate` (when given), emits `then`
# more, and answers how many it sent
STREAMER = """
import os
from corral.worker import run


def handle(task, ctx):
    if "size" in task:  # a flood: count chunks of size bytes
        chunk = "x" * task["size"]
        for _ in range(task["count"]):
            ctx.emit(chunk)
        return {"sent": task["count"]}
    for i in range(task["first"]):
        ctx.emit(f"c{i} ")
    if task.get("gate"):
        with open(task["gate"]) as gate:
            gate.readline()
    for i in range(task["first"], task["first"] + task.get("then", 0)):
        ctx.emit(f"c{i} ")
    return {"sent": task["first"] + task.get("then", 0)}


run(handle)
"""


def streamer(tmp_path: Path, name: str = "streamer", extra: str = "") -> str:
    script = tmp_path / "streamer.py"
    script.write_text(STREAMER)
    return f"""
        [agents.{name}]
        command = ["{sys.executable}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0
        {extra}
    """


def gate(tmp_path: Path) -> Path:
    path = tmp_path / "gate"
    os.mkfifo(path)
    return path


def release(path: Path) -> None:
    """Let the agent waiting on the FIFO go on (opening it waits for the agent's open)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b"go\n")
    finally:
        os.close(fd)


async def submit(api: Api, agent: str, task_input: str) -> str:
    got = await api.d.dispatcher.call(SOCKET, "tasks.submit",
                                      f'{{"agent": "{agent}", "input": {task_input}}}'
                                      .encode())
    return str(got.task_id)


async def events_until_result(stream: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not out or out[-1]["event"] not in ("result", "error"):
        out += await asyncio.wait_for(sse_events(stream, 1), 30)
    return out


@pytest.mark.deadline(120)
async def test_a_stream_resumed_with_last_event_id_sees_every_chunk_once_in_order(
        tmp_path: Path) -> None:
    fifo = gate(tmp_path)
    async with serving(tmp_path, streamer(tmp_path)) as api:
        await api.token("reader", "tasks:read")
        auth = {"Authorization": f"Bearer {api.tokens['reader']}"}
        task_id = await submit(api, "streamer", f'{{"first": 5, "then": 5, "gate": '
                                                f'"{fifo}"}}')
        url = f"{api.base}/tasks/{task_id}/stream"
        async with api.http.get(url, headers=auth) as stream:
            assert (stream.status, stream.headers["Content-Type"]) == (
                200, "text/event-stream")
            head, *seen = await asyncio.wait_for(sse_events(stream, 4), 30)
        # the task as it was when the stream began, then its chunks; the client went
        # after three, and the agent goes on while nobody reads
        assert (head["event"], head["data"]["task_id"], head["data"]["status"]) == (
            "tasks.task", task_id, "running")
        assert [(e["event"], e["id"], e["data"]["data"]) for e in seen] == [
            ("tasks.output", f"1-{i + 1}", f"c{i} ") for i in range(3)]
        await asyncio.to_thread(release, fifo)
        info = await api.d.dispatcher.call(SOCKET, "tasks.get",
                                           {"task_id": task_id, "wait": True})
        assert info.status == "succeeded"
        # resumed after the last it had: the rest once each, in order, then the task
        async with api.http.get(url, headers={**auth, "Last-Event-ID": seen[-1]["id"]}
                                ) as stream:
            _, *rest = await events_until_result(stream)
        chunks = seen + rest[:-1]
        assert [e["data"]["data"] for e in chunks] == [f"c{i} " for i in range(10)]
        assert [e["id"] for e in chunks] == [f"1-{i + 1}" for i in range(10)]
        assert rest[-1]["event"] == "result"
        assert (rest[-1]["data"]["task_id"], rest[-1]["data"]["status"],
                rest[-1]["data"]["output"]) == (task_id, "succeeded", {"sent": 10})
        # the query parameter a browser's EventSource can be given does the same
        async with api.http.get(url + "?last_event_id=1-9", headers=auth) as stream:
            _, *tail = await events_until_result(stream)
        assert [e["data"]["data"] for e in tail[:-1]] == ["c9 "]

        # an id the stream never gave is refused before any stream, naming it: one whose
        # numbers are no SQLite integer too, and one of digits that are not ASCII
        for given in ("1-x", "9" * 19 + "-1", "\u0663-1"):
            status, body, r = await api.ask("GET", f"/tasks/{task_id}/stream", "reader",
                                            headers={"Last-Event-ID": given})
            assert (status, r.content_type, body) == (400, PROBLEM, problem(
                400, "bad request", f"last_event_id: {given!r} is not a position of a "
                "task's output (ATTEMPT-N, an id the stream gave)", jsonrpc.INVALID_PARAMS))


TENANTS = """
[tenants.a]
max_stream_journal_bytes = 20

[tenants.b]
"""


@pytest.mark.deadline(120)
async def test_a_tenants_streams_are_its_own_and_bounded_together(tmp_path: Path) -> None:
    """Another tenant's task's stream answers as a task that does not exist; a tenant's
    unfinished tasks' output together stops at its max_stream_journal_bytes, said in the
    stream of the task that reached it."""
    fifo = gate(tmp_path)
    agents = (streamer(tmp_path, "sa", 'tenant = "a"\nreplicas = 2')
              + streamer(tmp_path, "sb", 'tenant = "b"'))
    async with serving(tmp_path, agents, TENANTS) as api:
        made = await api.d.dispatcher.call(SOCKET, "tokens.create", {
            "name": "ta", "scopes": ["tasks:read", "tasks:run"], "tenant": "a"})
        ta = {"Authorization": f"Bearer {made.token}"}
        theirs = await submit(api, "sb", '{"first": 2}')
        await api.d.dispatcher.call(SOCKET, "tasks.get", {"task_id": theirs, "wait": True})
        for task_id in (theirs, "0192f0c4-aaaa-7bbb-8ccc-dddddddddddd"):
            status, body, r = await api.ask("GET", f"/tasks/{task_id}/stream", made.token)
            assert (status, r.content_type, body) == (404, PROBLEM, problem(
                404, "not found", f"no such task: {task_id}", jsonrpc.NOT_FOUND))

        # 15 bytes held by a task that waits, then another: 18, and 21 is past 20
        waiting = await submit(api, "sa", f'{{"first": 5, "gate": "{fifo}"}}')
        async with api.http.get(f"{api.base}/tasks/{waiting}/stream", headers=ta) as stream:
            await asyncio.wait_for(sse_events(stream, 6), 30)
        second = await submit(api, "sa", '{"first": 3}')
        async with api.http.get(f"{api.base}/tasks/{second}/stream", headers=ta) as stream:
            _, *events = await events_until_result(stream)
        assert [(e["event"], e["id"], e["data"]["data"], e["data"]["truncated"])
                for e in events[:-1]] == [
            ("tasks.output", "1-1", "c0 ", False),
            ("tasks.output", "1-2", f"output truncated: tenant a's unfinished tasks hold "
             f"18 bytes of output (max_stream_journal_bytes 20); the rest of task {second}'s "
             "attempt 1 is not kept", True)]
        assert (events[-1]["event"], events[-1]["data"]["status"]) == ("result", "succeeded")
        await asyncio.to_thread(release, fifo)
        # its end gives the bytes back: a later task of the tenant streams again
        info = await api.d.dispatcher.call(SOCKET, "tasks.get", {"task_id": waiting,
                                                                 "wait": True})
        assert info.status == "succeeded"
        third = await submit(api, "sa", '{"first": 2}')
        async with api.http.get(f"{api.base}/tasks/{third}/stream", headers=ta) as stream:
            _, *events = await events_until_result(stream)
        assert [e["data"]["data"] for e in events[:-1]] == ["c0 ", "c1 "]
        assert api.d.sup.tasks.outputs.held == {}


@pytest.mark.deadline(180)
def test_corral_run_stream_prints_chunks_then_the_result_and_a_restart_keeps_them(
        tmp_path: Path) -> None:
    """`corral run --stream`: the chunks as they come, the bound's truncation on stderr
    (max_stream_bytes), then the result; the stream read back after the daemon
    restarted is the same."""
    d = Daemon(tmp_path, streamer(tmp_path, extra="max_stream_bytes = 12"))
    try:
        d.start()
        r = d.cli("run", "streamer", "--input", '{"first": 6}', "--stream")
        assert r.returncode == 0, r.stderr
        assert r.stdout == 'c0 c1 c2 c3 \n{\n  "sent": 6\n}\n'
        (task,) = d.json("tasks")["tasks"]
        truncated = (f"output truncated: task {task['task_id']}'s output reached "
                     "max_stream_bytes 12 (12 bytes kept); the rest of attempt 1's output "
                     "is not kept")
        assert r.stderr == f"\ncorral: {truncated}\n"
        assert d.stop() == 0
        d.start()
        r = d.cli("run", "streamer", "--input", '{"first": 1}', "--stream", "--json")
        assert r.returncode == 0, r.stderr
        # with --json every line is one JSON value, for a reader line by line: the
        # chunks, then the result
        *chunks, result = [json.loads(line) for line in r.stdout.splitlines()]
        assert [c["data"] for c in chunks] == ["c0 "], r.stdout
        assert (result["status"], result["output"]) == ("succeeded", {"sent": 1}), r.stdout
        with Client(d.sock) as c:
            got: list[Any] = []
            info = c.call("tasks.stream", {"task_id": task["task_id"]},
                          lambda method, params: got.append((method, params)))
        assert info["status"] == "succeeded"
        assert [(p["id"], p["data"], p["truncated"]) for method, p in got
                if method == "tasks.output"] == [
            *[(f"1-{i + 1}", f"c{i} ", False) for i in range(4)], ("1-5", truncated, True)]
        # a task's stream followed by its id: its chunks, then the task shown
        r = d.cli("task", task["task_id"], "--stream")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"c0 c1 c2 c3 \ntask_id: {task['task_id']}\n"), r.stdout
        assert r.stderr == f"\ncorral: {truncated}\n"
        r = d.cli("task", task["task_id"], "--stream", "--json")
        *chunks, shown = [json.loads(line) for line in r.stdout.splitlines()]
        assert [c["truncated"] for c in chunks] == [False] * 4 + [True], r.stdout
        assert (shown["task_id"], shown["status"]) == (task["task_id"], "succeeded")
        assert d.stop() == 0
    finally:
        d.close()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.deadline(180)
def test_a_reader_that_never_reads_does_not_grow_the_daemon(tmp_path: Path) -> None:
    """32 MiB of output to a stream whose client never reads: the daemon's RSS grows by
    far less (the chunks are in the state database; the reader is a position), the task
    is not held, and the whole of it is read back afterwards. In 4 KiB chunks: the
    daemon grew the same (9.5 MiB) as by 32,768 of 1 KiB, for a quarter of the CPU."""
    port = free_port()
    d = Daemon(tmp_path, streamer(tmp_path, extra="max_stream_bytes = 0"),
               extra=f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    sock = None
    try:
        d.start()
        assert d.proc is not None
        token = d.json("token", "create", "reader", "--scope", "tasks:read")["token"]
        r = d.cli("run", "streamer", "--input", '{"first": 1}', "--stream")
        assert r.returncode == 0, r.stderr
        before = rss(d.proc.pid)
        task_id = d.cli("submit", "streamer", "--input",
                        '{"size": 4096, "count": 8192}').stdout.strip()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET /api/v1/tasks/{task_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Authorization: Bearer {token}\r\n\r\n".encode())
        r = d.cli("task", task_id, "--wait", "--json")
        assert msgspec.json.decode(r.stdout)["status"] == "succeeded", r.stdout
        grown = rss(d.proc.pid) - before
        # half the output: what may wait for the writer (BACKLOG_BYTES), SQLite's page
        # caches and the allocator's arenas grow it the same with no reader at all
        assert grown < 16 << 20, f"the daemon grew by {grown} bytes"
        with Client(d.sock) as c:
            sizes = [0]

            def took(method: str, params: Any) -> None:
                if method == "tasks.output":
                    sizes[0] += len(params["data"])

            c.call("tasks.stream", {"task_id": task_id}, took)
        assert sizes[0] == 32 << 20
        assert d.stop() == 0
    finally:
        if sock is not None:
            sock.close()
        d.close()


async def test_the_python_api_follows_a_tasks_output_as_an_async_iterator(
        sup: Supervisor, tmp_path: Path) -> None:
    """The engine without a daemon: `sup.tasks.output(task_id)` yields each chunk as it
    comes, then ends with the task; given an id, it goes on after that chunk."""
    script = tmp_path / "streamer.py"
    script.write_text(STREAMER)
    sup.add(agent("py", command=[sys.executable, str(script)]))
    await all_ready(sup, "py")
    task = sup.tasks.submit("py", {"first": 4})
    got = [(c.id, c.data) async for c in sup.tasks.output(task.id)]
    assert got == [(f"1-{i + 1}", f"c{i} ") for i in range(4)]
    assert task.status == "succeeded"
    assert [c.data async for c in sup.tasks.output(task.id, after="1-2")] == ["c2 ", "c3 "]
    assert sup.tasks.stats()["output"] == {"chunks": 4, "bytes": 12, "dropped": 0,
                                           "holds": 0, "open": 0}
    with pytest.raises(ValueError, match="'x' is not a position of a task's output"):
        [c async for c in sup.tasks.output(task.id, after="x")]


@needs_chromium
@pytest.mark.timeout(180)
def test_the_dashboards_task_view_shows_the_stream_live(tmp_path: Path) -> None:
    """The task's page follows its stream (tasks.stream over the session's EventSource):
    the chunks sent before the page opened, then those sent while it is open, each once,
    and it stops following at the task's end (no reconnect: the count stays)."""
    from playwright.sync_api import expect

    fifo = gate(tmp_path)
    home = shared_tmpdir()
    d = Daemon(home, streamer(tmp_path), extra='\n[http]\nlisten = "127.0.0.1:0"\n')
    try:
        d.start()
        task_id = d.cli("submit", "streamer", "--input",
                        f'{{"first": 3, "then": 2, "gate": "{fifo}"}}').stdout.strip()
        link = d.cli("ui").stdout.strip()
        with chromium_page() as page:
            page.goto(link)
            page.goto(page.url.split("#")[0] + f"#/task/{task_id}")
            expect(page.locator("#task-stream")).to_have_text("c0 c1 c2 ")
            release(fifo)
            expect(page.locator("#task-stream")).to_have_text("c0 c1 c2 c3 c4 ")
            expect(page.locator("#task-output")).to_contain_text('"sent": 5')
            page.wait_for_function("() => document.querySelector('#task h2 .state')"
                                   "?.textContent.includes('succeeded')")
            # each chunk once; after the end nothing more is asked (a reconnect would
            # send tasks.task and the end again, not chunks: the stream is closed)
            assert page.evaluate("window.corralLive['tasks.output']") == 5
            assert page.evaluate("window.__cspViolations") == []
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(home, ignore_errors=True)


def test_an_agent_called_as_a_tool_at_the_gateway_sends_its_output_as_progress(
        gateway: Gateway) -> None:  # noqa: F811 - test_gateway_tasks's fixture
    """A plain MCP tools/call of an agent (/mcp/corral) carrying a progressToken is sent
    the task's live output as it comes, each chunk a notifications/progress message (MCP
    has no partial results of a tool call), then the tool's result."""
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "chat", "arguments": {"do": "emit", "chunks": ["Hel", "lo", " world"]},
        "_meta": {"progressToken": "p1",
                  "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}}
    r = httpx2.post(f"{gateway.origin}/mcp/corral", json=body, timeout=60, headers={
        "Authorization": f"Bearer {gateway.tokens['acme']}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call",
        "Mcp-Name": "chat"})
    assert r.headers["Content-Type"].startswith("text/event-stream"), r.text
    messages = [msgspec.json.decode(line[len("data: "):]) for line in r.text.splitlines()
                if line.startswith("data: ")]
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    assert progress == [{"progress": i + 1, "message": text, "progressToken": "p1"}
                        for i, text in enumerate(["Hel", "lo", " world"])]
    (answer,) = [m for m in messages if m.get("id") == 9]
    assert answer["result"]["structuredContent"] == {"emitted": 3}, answer


@pytest.mark.asyncio(loop_scope="module")  # the loop of the shared daemon (`shared`)
@pytest.mark.parametrize(("api", "model"), [("chat", "gpt-small"),
                                            ("responses", "gpt-small"),
                                            ("messages", "claude-small")])
async def test_a_model_call_streamed_through_the_model_gateway_feeds_the_tasks_output(
        shared: Shared, api: str, model: str) -> None:  # noqa: F811 - test_model_gateway's
    """An unmodified agent's streamed model answer (the real openai and anthropic
    clients) is the task's live output by itself: each text delta a chunk, in each
    format; a call that does not stream adds none. One daemon and worker for the three
    (test_model_gateway's: each client library imported once)."""
    d = shared.d
    streamed = await d.sup.tasks.run("writer", {"api": api, "model": model, "calls": 2,
                                                "stream": True}, TaskOptions(timeout=60))
    assert streamed.status == "succeeded", streamed
    chunks = [c.data async for c in d.sup.tasks.output(streamed.task_id)]
    assert "".join(chunks) == "echo: call 1echo: call 2"
    assert len(chunks) > 2  # word by word, as the upstream sent them
    whole = await d.sup.tasks.run("writer", {"api": api, "model": model, "calls": 1,
                                             "stream": False}, TaskOptions(timeout=60))
    assert [c async for c in d.sup.tasks.output(whole.task_id)] == []
