"""The Quick start's example config as ./run.sh runs it (examples/corral.toml, the venv's
python3 first on PATH), its agents called over A2A with the official client as README's
Quick start and docs/a2a.md tell a new user to: the input an agent gets is the A2A message,
and the examples answer what its text says, not a default they fall back to.

Real parts: the Quick start's `corral daemon` (tests/quickstart.py), its
agents and the notes MCP server (the official MCP SDK) as processes, the a2a-sdk client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from .quickstart import quickstart, token


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
    with quickstart(tmp_path) as (port, env, sock):
        caller = token(env, sock, "caller", "tasks:run", "tasks:read")
        base = f"http://127.0.0.1:{port}/a2a"

        hello = await _ask(f"{base}/hello", caller, "ada")
        assert hello["greeting"] == "hello, ada", hello

        researcher = await _ask(f"{base}/researcher", caller, "otters")
        assert (researcher["stored"], researcher["found"]) == (
            "stored otters", {"result": ["otters"]}), researcher
