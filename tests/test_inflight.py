"""A call in flight outlives its worker (issue 73, DESIGN section 26, docs/durable.md): a
task's tool call that is at the server when its worker is SIGKILLed is not cancelled;
corral waits for its answer, journals it, and the retry's same call is answered from
the journal, so that the server has it once. Only the daemon's own death can leave such
a call unanswered: the retry makes it again under the same idempotency key, in the
request's `_meta` (`io.corral/idempotency-key`).

Real processes: the daemon (in this loop, or its own process for its SIGKILL), an SDK
worker that calls through the worker link or through corral's MCP gateway with the
official MCP SDK's client (tests/inflight_agent.py), and a stdio MCP server that holds
the first call until the test opens a FIFO and writes down every call it was sent, with
its key (tests/servers/slow_mcp.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.supervisor.tasks.model import AttemptEnded
from corral.taskoptions import TaskOptions

from .conftest import ROOT
from .daemon_harness import PY, Daemon, in_process, shared_tmpdir

HERE = Path(__file__).parent
pytest.importorskip("httpx2")
pytest.importorskip("mcp")
GATEWAY = """
[gateway]
listen = "127.0.0.1:0"
"""
LIMIT = 60.0  # seconds a wait may take, however loaded the machine


def fleet(tmp: Path, instances: int = 1, agent_extra: str = "") -> str:
    """Agent `inflight` whose tools are the slow server's (`instances` processes of it);
    no `retries` written: a kill, the worker's or the daemon's, is retried by default
    (retry_lost)."""
    return textwrap.dedent(f"""
        [agents.inflight]
        command = ["{PY}", "{HERE}/inflight_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        backoff_initial = 0.05
        tools = ["slow__*"]
        {agent_extra}

        [mcp_servers.slow]
        command = ["{PY}", "{HERE}/servers/slow_mcp.py", "{tmp}/server-log",
                   "{tmp}/started", "{tmp}/gate"]
        timeout = 60
        instances = {instances}
    """)


def fifos(tmp: Path) -> tuple[Path, Path]:
    """The FIFO the server says a held call started on, and the one it waits on."""
    started, gate = tmp / "started", tmp / "gate"
    os.mkfifo(started)
    os.mkfifo(gate)
    return started, gate


async def _blocking(path: Path, mode: str, what: str) -> str:
    """`path` (a FIFO) opened in `mode` ("r": read to its end) once the server opens its
    other end; a wait past LIMIT fails, the thread let go by our own other end."""
    def go() -> str:
        with open(path, mode) as f:
            return f.read() if mode == "r" else ""
    opening = asyncio.ensure_future(asyncio.to_thread(go))
    try:
        return await asyncio.wait_for(asyncio.shield(opening), LIMIT)
    except TimeoutError:
        flags = os.O_WRONLY if mode == "r" else os.O_RDONLY
        os.close(os.open(path, flags | os.O_NONBLOCK))
        await opening
        raise AssertionError(f"timed out waiting for {what}") from None


async def call_started(started: Path) -> str:
    """The number of the call the server holds, once it holds it."""
    return await _blocking(started, "r", "the call held at the server")


async def release(gate: Path) -> None:
    """The server's held call goes on (it reads the gate FIFO to its end)."""
    await _blocking(gate, "w", "the server to wait on its gate")


def server_log(tmp: Path) -> list[list[str]]:
    """The calls the server was sent: [what, i, key] each, in order."""
    path = tmp / "server-log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def attempt_ended(d: Any, agent: str, attempt: int) -> asyncio.Future[None]:
    """Set when attempt `attempt` of a task of `agent` ends (its AttemptEnded on the
    engine's stream)."""
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def heard(e: AttemptEnded) -> None:
        if e.task.agent == agent and len(e.task.attempts) >= attempt and \
                e.task.attempts[attempt - 1].finished is not None and not ended.done():
            ended.set_result(None)
    d.sup.stream.subscribe(heard, AttemptEnded)
    return ended


@pytest.mark.parametrize("retry_first", [False, True], ids=["answer-first", "retry-first"])
@pytest.mark.parametrize("via", ["sdk", "gateway"])
async def test_a_call_at_the_server_when_its_worker_is_killed_is_made_once(
        tmp_path: Path, via: str, retry_first: bool) -> None:
    """The worker SIGKILLed while its first call is held at the server; the server let go
    only once the attempt has ended: its answer is journaled and answers the retry's
    same call (the server sent it once, under one key), the task succeeds on attempt 2.
    `sdk`: the worker link's tools/call; `gateway`: the agent's own MCP client calling
    corral's gateway at its attempt's address (the call attributed to its task).
    `retry_first`: let go only once the retry's same call waits for it (`stats.get`'s
    tasks.steps.awaited), else at once: the retry finds it journaled."""
    started, gate = fifos(tmp_path)
    # through the gateway both attempts import the MCP SDK's client: once, by a zygote
    # whose forks they are (decision 963), not ~1 s of CPU at each start
    sdk = 'preload = ["httpx2", "mcp", "mcp.client.streamable_http"]'
    async with in_process(tmp_path, fleet(tmp_path, agent_extra=sdk if via == "gateway"
                                          else ""), GATEWAY) as d:
        first_ended = attempt_ended(d, "inflight", 1)
        task = d.sup.tasks.submit("inflight", {"via": via}, TaskOptions(timeout=LIMIT))
        assert await call_started(started) == "1\n"
        [attempt] = (await d.sup.tasks.info(task.id)).attempts
        assert attempt.pid is not None
        os.kill(attempt.pid, signal.SIGKILL)
        await asyncio.wait_for(first_ended, LIMIT)
        assert server_log(tmp_path)[-1][:2] == ["start", "1"]  # still at the server
        if retry_first:
            deadline = asyncio.get_running_loop().time() + LIMIT
            while not d.sup.tasks.stats()["steps"]["awaited"]:
                assert asyncio.get_running_loop().time() < deadline, "the retry's call"
                await asyncio.sleep(0.02)
        await release(gate)
        await asyncio.wait_for(asyncio.shield(task.done), LIMIT)
        assert task.status == "succeeded", task.error
        assert task.output == {"results": ["worked 1", "worked 2"], "attempt": 2}
        first, second = task.attempts
        assert (first.outcome, second.outcome, second.replayed) == ("lost", "succeeded", 1)
        log = server_log(tmp_path)
        assert [line[:2] for line in log] == [["start", "1"], ["done", "1"],
                                              ["start", "2"], ["done", "2"]]
        one, two = log[0][2], log[2][2]
        assert len(one) == len(two) == 32 and one != two  # each call its own key
        steps = d.sup.tasks.stats()["steps"]
        assert (steps["outlived"], steps["replayed"]) == (1, 1)
        if retry_first:  # (let go at once, the answer is kept long before the retry calls)
            assert steps["awaited"] == 1
        info = await d.sup.tasks.info(task.id)
        assert info.tool_calls == 2  # the call counted once, when it was made


def _until(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.timeout(180)
def test_a_call_lost_with_the_daemon_is_made_again_under_the_same_key() -> None:
    """The daemon SIGKILLed while the first call is at the server: no one is left to
    journal its answer, so the retry (the next daemon, the same state) makes it again —
    with the key the first had, which a server that honours keys makes once — and the
    task says so (the call's mark, journaled before it went, read by the retry)."""
    tmp = shared_tmpdir()  # (a short path: the daemon's socket is in it)
    started, gate = fifos(tmp)
    d = Daemon(tmp, fleet(tmp))
    try:
        d.start()
        r = d.cli("run", "inflight", "--detach", "--input", json.dumps({"via": "sdk"}))
        assert r.returncode == 0, r.stderr
        task_id = r.stdout.strip()
        assert asyncio.run(call_started(started)) == "1\n"
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        asyncio.run(release(gate))  # (the first daemon's server: its answer goes nowhere)
        _until(lambda: len(server_log(tmp)) >= 2, "the first server's call to end")
        d.start()
        info = d.ask("tasks.get", {"task_id": task_id, "wait": True})
        assert info["status"] == "succeeded", info
        assert info["output"] == {"results": ["worked 1", "worked 2"], "attempt": 2}
        first, second = info["attempts"]
        assert (first["outcome"], first["error"]) == ("lost", "daemon restarted")
        assert second["outcome"] == "succeeded" and "replayed" not in second
        log = server_log(tmp)
        assert [line[:2] for line in log] == [["start", "1"], ["done", "1"], ["start", "1"],
                                              ["done", "1"], ["start", "2"], ["done", "2"]]
        assert log[0][2] == log[2][2] != "-"  # the same key on both attempts
        assert log[4][2] not in ("-", log[0][2])
        # the task says so: the call, its key, and why
        made = {"tool": "slow__work", "key": log[0][2],
                "why": "the daemon restarted while it was at the server"}
        shown = json.loads(d.cli("task", task_id, "--json").stdout)
        assert [a.get("made_again") for a in shown["attempts"]] == [None, [made]]
        assert d.cli("task", task_id).stdout.splitlines()[-2:] == [
            f"attempt 1: replica 0 pid {first['pid']} lost (daemon restarted)",
            f"attempt 2: replica 0 pid {second['pid']} succeeded; slow__work made again "
            f"under key {log[0][2]} (the daemon restarted while it was at the server)"]
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_a_tasks_model_calls_carry_their_idempotency_key_upstream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each model call of a task that may be retried goes upstream with an
    `Idempotency-Key` of its own (both formats), derived as a tool call's is."""
    from .servers.model_upstream import StandIn

    monkeypatch.setenv("CORRAL_TEST_PROVIDER_KEY", "sk-provider-test")
    upstream = StandIn()
    await upstream.start()
    models = "".join(textwrap.dedent(f"""
        [models.{name}]
        url = "{upstream.url}{path}"
        format = "{fmt}"
        key_env = "CORRAL_TEST_PROVIDER_KEY"
    """) for name, path, fmt in (("gpt-small", "/v1", "openai"),
                                 ("claude-small", "", "anthropic")))
    agents = textwrap.dedent(f"""
        [agents.writer]
        command = ["{PY}", "{HERE}/model_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 1
    """)
    try:
        async with in_process(tmp_path, agents + models, GATEWAY) as d:
            for api, model in (("chat", "gpt-small"), ("messages", "claude-small")):
                before = len(upstream.requests)
                res = await d.sup.tasks.run("writer", {"api": api, "model": model,
                                                       "calls": 2}, TaskOptions(timeout=LIMIT))
                assert res.status == "succeeded", res
                keys = [{k.lower(): v for k, v in r["headers"].items()}.get("idempotency-key")
                        for r in upstream.requests[before:]]
                assert len(set(keys)) == 2 and all(k and len(k) == 32 for k in keys), keys
    finally:
        await upstream.close()


async def test_a_retry_whose_call_there_is_another_does_not_wait_for_the_held_one(
        tmp_path: Path) -> None:
    """The retry's first call is another (other arguments): it goes live at once (on the
    server's other instance), the attempt marked diverged there, and the task ends while
    the killed attempt's call is still held at the server; that call, no one's to read
    any more, is cancelled with the task's end (the server is told so)."""
    started, gate = fifos(tmp_path)
    async with in_process(tmp_path, fleet(tmp_path, instances=2)) as d:
        first_ended = attempt_ended(d, "inflight", 1)
        task = d.sup.tasks.submit("inflight", {"via": "sdk", "diverge": True},
                                  TaskOptions(timeout=LIMIT))
        assert await call_started(started) == "1\n"
        [attempt] = (await d.sup.tasks.info(task.id)).attempts
        assert attempt.pid is not None
        os.kill(attempt.pid, signal.SIGKILL)
        await asyncio.wait_for(first_ended, LIMIT)
        await asyncio.wait_for(asyncio.shield(task.done), LIMIT)  # the gate still shut
        assert task.status == "succeeded", task.error
        assert task.output == {"results": ["worked 10", "worked 2"], "attempt": 2}
        second = task.attempts[1]
        # (call 1 had no answer kept: the retry's went live with no verdict)
        assert (second.diverged, second.replayed) == (msgspec.UNSET, msgspec.UNSET)
        assert [line[:2] for line in server_log(tmp_path)] == [
            ["start", "1"], ["start", "10"], ["done", "10"], ["start", "2"], ["done", "2"]]
        await release(gate)  # (the first instance's call ends, its answer no one's)
        deadline = asyncio.get_running_loop().time() + LIMIT
        while server_log(tmp_path)[-1:] != [["cancelled"]]:  # read once it is let go
            assert asyncio.get_running_loop().time() < deadline, server_log(tmp_path)
            await asyncio.sleep(0.05)
        assert server_log(tmp_path)[-2][:2] == ["done", "1"]
        assert d.sup.tasks.stats()["steps"]["journaled"] == 2  # the retry's own two
