"""Remote A2A agents as gateway tools (DESIGN 29, docs/a2a.md): `[a2a_agents.NAME]` is the
tool `a2a__NAME`, served by the supervised server `a2a` (corral/mcp/a2atool.py), so a call
of it is a tool call of the pool: judged, journaled and replayed as every one is.

Real processes: the daemon, an SDK worker calling through the worker link
(tests/a2a_calling_agent.py), and a remote agent on the official `a2a-sdk`'s server
(tests/servers/a2a_remote_agent.py), which writes down every message it receives; the test lets
a held one go with the official `a2a-sdk` client."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config
from corral.taskoptions import TaskOptions

from .conftest import ROOT
from .daemon_harness import PY, Daemon, in_process, shared_tmpdir

pytest.importorskip("a2a")
HERE = Path(__file__).parent
LIMIT = 60.0  # seconds a wait may take, however loaded the machine
TOKEN = "remote-token-" + "x" * 20


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _until(ready: object, what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Remote:
    """The remote agent's process, and what it was sent: [messageId, text] a line."""

    def __init__(self, tmp: Path) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "remote-log"
        self.log.touch()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "servers" / "a2a_remote_agent.py"),
                                      str(self.port), str(self.log), TOKEN])
        _until(self._up, "the remote agent to listen")

    def _up(self) -> bool:
        assert self.proc.poll() is None, "the remote agent exited"
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def sent(self) -> list[list[str]]:
        return [line.split(" ", 1) for line in self.log.read_text().splitlines()]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    async def release(self, what: str) -> None:
        """Its held `hold: WHAT` goes on: the message `release: WHAT`, sent by the official
        A2A client as any caller sends one."""
        import httpx
        from a2a.client import ClientConfig, create_client
        from a2a.types import Message, Part, Role, SendMessageRequest

        # (a connection of its own each request: none reused as the server closes it)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"},
                                     limits=httpx.Limits(max_keepalive_connections=0)
                                     ) as http:
            client = await create_client(self.url, ClientConfig(streaming=False,
                                                                httpx_client=http),
                                         resolver_http_kwargs={"headers": {
                                             "Authorization": f"Bearer {TOKEN}"}})
            message = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER,
                              parts=[Part(text=f"release: {what}")])
            async for _ in client.send_message(SendMessageRequest(message=message)):
                pass
            await client.close()


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    r = Remote(tmp_path)
    try:
        yield r
    finally:
        r.close()


def fleet(tmp: Path, url: str, token: str = TOKEN) -> str:
    (tmp / "remote.token").write_text(token + "\n")
    return textwrap.dedent(f"""
        [agents.caller]
        command = ["{PY}", "{HERE}/a2a_calling_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        backoff_initial = 0.05
        tools = ["a2a__*"]

        [a2a_agents.remote]
        url = "{url}"
        token_file = "{tmp}/remote.token"
        timeout = {LIMIT}
    """)


async def test_a_remote_a2a_agent_is_the_tool_a2a__NAME(tmp_path: Path, remote: Remote
                                                        ) -> None:
    """Listed with its card's description; a call sends one message (its messageId the
    call's key) and answers the remote task's artifact; its output marks the task
    untrusted (a remote agent's text is from outside)."""
    async with in_process(tmp_path, fleet(tmp_path, remote.url)) as d:
        res = await d.sup.tasks.run("caller", {"tool": "a2a__remote",
                                               "arguments": {"message": "echo: otters"}},
                                    TaskOptions(timeout=LIMIT))
        assert res.status == "succeeded", res.error
        assert res.output["content"] == [{"type": "text", "text": "echoed otters"}]
        assert res.output["structuredContent"]["state"] == "TASK_STATE_COMPLETED"
        assert res.output["isError"] is False
        [[message_id, text]] = remote.sent()
        assert text == "echo: otters" and len(message_id) == 32
        listed = {t["name"]: t for t in await d.sup.mcp.list_tools()}
        assert listed["a2a__remote"]["description"] == "a remote agent that echoes"


async def test_a_remote_agents_refusal_is_the_calls_error(tmp_path: Path, remote: Remote
                                                          ) -> None:
    """A wrong token: the tool's error names the remote and its answer; nothing sent."""
    async with in_process(tmp_path, fleet(tmp_path, remote.url, token="wrong")) as d:
        res = await d.sup.tasks.run("caller", {"tool": "a2a__remote",
                                               "arguments": {"message": "echo: x"}},
                                    TaskOptions(timeout=LIMIT))
        assert res.status == "succeeded", res.error
        assert res.output["isError"] is True
        assert res.output["content"] == [{"type": "text", "text":
                                          "remote: its agent card answered HTTP 401"}]
    assert remote.sent() == []


async def test_a_call_whose_worker_is_killed_is_answered_once_and_sent_once(
        tmp_path: Path, remote: Remote) -> None:
    """The worker SIGKILLed while the remote task works: the call outlives it (DESIGN 26),
    its answer journaled when the remote settles, and the retry's same call answered from
    the journal: the remote was sent the message once."""
    async with in_process(tmp_path, fleet(tmp_path, remote.url)) as d:
        task = d.sup.tasks.submit("caller", {"tool": "a2a__remote",
                                             "arguments": {"message": "hold: w1"}},
                                  TaskOptions(timeout=LIMIT))
        deadline = asyncio.get_running_loop().time() + LIMIT
        while not remote.sent():
            assert asyncio.get_running_loop().time() < deadline, "the remote's message"
            await asyncio.sleep(0.05)
        [attempt] = (await d.sup.tasks.info(task.id)).attempts
        assert attempt.pid is not None
        os.kill(attempt.pid, signal.SIGKILL)
        await remote.release("w1")
        await asyncio.wait_for(asyncio.shield(task.done), LIMIT)
        assert task.status == "succeeded", task.error
        assert task.output["content"] == [{"type": "text", "text": "released w1"}]
        first, second = task.attempts
        assert (first.outcome, second.outcome) == ("lost", "succeeded")
        held = [m for m, text in remote.sent() if text == "hold: w1"]
        assert len(held) == 1, remote.sent()


@pytest.mark.timeout(180)
def test_a_call_lost_with_the_daemon_finds_its_remote_task_and_sends_nothing_again(
        remote: Remote) -> None:
    """The daemon SIGKILLed while the remote task works: the next daemon's retry makes the
    call again under the same key, which finds the task the first one started (ListTasks
    of the context the key names) and waits for it; the message is sent once."""
    tmp = shared_tmpdir()
    d = Daemon(tmp, fleet(tmp, remote.url))
    try:
        d.start()
        r = d.cli("run", "caller", "--detach", "--input", json.dumps(
            {"tool": "a2a__remote", "arguments": {"message": "hold: h1"}}))
        assert r.returncode == 0, r.stderr
        task_id = r.stdout.strip()
        _until(lambda: len(remote.sent()) == 1, "the remote to receive the message")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.start()
        asyncio.run(remote.release("h1"))
        info = d.ask("tasks.get", {"task_id": task_id, "wait": True})
        assert info["status"] == "succeeded", info
        assert info["output"]["content"] == [{"type": "text", "text": "released h1"}]
        first, _ = info["attempts"]
        assert (first["outcome"], first["error"]) == ("lost", "daemon restarted")
        held = [m for m, text in remote.sent() if text == "hold: h1"]
        assert len(held) == 1, remote.sent()
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a2a_agents_config(tmp_path: Path) -> None:
    """A remote agent's URL is checked; the server `a2a` is theirs alone."""
    path = tmp_path / "c.toml"
    path.write_text('[a2a_agents.r]\nurl = "ftp://x"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: a2a_agents.r: url: expected an http:// or https:// "
                              f"URL, got 'ftp://x'")
    path.write_text('[a2a_agents.r]\nurl = "http://127.0.0.1:1/"\n'
                    '[mcp_servers.a2a]\ncommand = "true"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: mcp_servers.a2a: the name is [a2a_agents]' server "
                              f"(their tools are a2a__NAME): give it another")
    path.write_text('[a2a_agents.r]\nurl = "http://127.0.0.1:1/"\ntoken_file = "t"\n')
    server = load_config(path).mcp_servers["a2a"]
    assert server.tools_untrusted == ["r"]
    assert json.loads(server.argv()[-1]) == {"r": {
        "url": "http://127.0.0.1:1/", "description": "", "timeout": 300.0,
        "token_file": str(tmp_path / "t")}}
