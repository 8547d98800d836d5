"""The Quick start's example config as ./run.sh runs it (examples/corral.toml, the venv's
python3 first on PATH), its agents called over A2A with the official client as README's
Quick start and docs/a2a.md tell a new user to: the input an agent gets is the A2A message,
and the examples answer what its text says, not a default they fall back to.

Real parts: a `corral daemon` process on a copy of examples/ (its port a free one), its
agents and the notes MCP server (the official MCP SDK) as processes, the a2a-sdk client."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import EXAMPLES
from .daemon_harness import PY, Notifications, corral_run, free_port

# what run.sh starts the daemon with, copied where this test's state is kept
_COPIED = ("corral.toml", "hello.py", "researcher.py", "misbehave.py", "notes_server.py")


async def _ask(url: str, token: str, text: str) -> dict[str, Any]:
    """A blocking SendMessage of `text` (the docs' client, streaming=False): the task's
    one artifact's data."""
    from a2a.client import ClientConfig, ClientFactory
    from a2a.types import Message, Part, Role, SendMessageRequest, TaskState
    from google.protobuf.json_format import MessageToDict

    async with httpx.AsyncClient(timeout=120,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        client = await ClientFactory(ClientConfig(
            httpx_client=http, streaming=False,
            supported_protocol_bindings=["JSONRPC"])).create_from_url(url)
        request = SendMessageRequest(message=Message(
            message_id=f"m-{text}", role=Role.ROLE_USER, parts=[Part(text=text)]))
        [event] = [e async for e in client.send_message(request)]
    assert event.task.status.state == TaskState.TASK_STATE_COMPLETED, event
    [artifact] = event.task.artifacts
    data: dict[str, Any] = MessageToDict(artifact.parts[0].data)
    return data


@pytest.mark.timeout(240)
async def test_the_example_agents_answer_what_an_a2a_message_says(tmp_path: Path) -> None:
    """hello greets the name an A2A message gives and researcher files its topic: with the
    examples reading only `name` and `topic`, each answered `hello, world` and `stored
    nothing` to every A2A message."""
    examples = tmp_path / "examples"
    examples.mkdir()
    for name in _COPIED:
        shutil.copy(EXAMPLES / name, examples / name)
    port = free_port()
    config = examples / "corral.toml"
    text = config.read_text()
    listen = re.compile(r'^listen = "127\.0\.0\.1:7070"$', re.M)
    assert listen.search(text), "examples/corral.toml's [http] listen moved: follow it here"
    config.write_text(listen.sub(f'listen = "127.0.0.1:{port}"', text))
    notify = Notifications(tmp_path)
    venv = Path(PY).parent
    env = {**{k: v for k, v in os.environ.items() if k != "CORRAL_SOCKET"},
           "PATH": f"{venv}:{os.environ['PATH']}", "NOTIFY_SOCKET": str(notify.path)}
    said = (tmp_path / "daemon.err").open("wb")
    daemon = subprocess.Popen([str(venv / "corral"), "daemon", "--config", str(config)],
                              env=env, stdout=said, stderr=subprocess.STDOUT)
    try:
        notify.wait_for("READY", proc=daemon)
        made = corral_run(["--socket", str(examples / ".corral" / "corral.sock"), "token",
                           "create", "caller", "--scope", "tasks:run", "--scope",
                           "tasks:read"], env=env, timeout=60)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        base = f"http://127.0.0.1:{port}/a2a"

        hello = await _ask(f"{base}/hello", token, "ada")
        assert hello["greeting"] == "hello, ada", hello

        researcher = await _ask(f"{base}/researcher", token, "otters")
        assert (researcher["stored"], researcher["found"]) == (
            "stored otters", {"result": ["otters"]}), researcher
    finally:
        daemon.send_signal(signal.SIGINT)  # as Ctrl-C stops ./run.sh's
        try:
            assert daemon.wait(60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            notify.close()
            said.close()
