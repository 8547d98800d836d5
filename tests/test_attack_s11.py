"""An attacker's pass over session 11's changes and the doors no one owned (the A2A door's
streams, a held progress stream, a stream handed over between pipelined messages): each
fix's test failed on the tree before it (docs/security.md keeps them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.daemon.flowcontrol import Latest

from .a2a.harness import a2a_daemon
from .a2a.test_push import message, rpc

MiB = 1 << 20


async def _opened(http: httpx.AsyncClient, stack: contextlib.AsyncExitStack, url: str,
                  body: dict[str, Any] | None = None) -> AsyncIterator[str]:
    """An A2A stream opened (JSON-RPC's when `body` is given, else the HTTP+JSON door's
    POST), its first event read: its lines, to their end."""
    r = await stack.enter_async_context(
        http.stream("POST", url, json=body) if body is not None else http.stream("POST", url))
    assert r.headers["content-type"].startswith("text/event-stream"), await r.aread()
    lines = r.aiter_lines()
    async for line in lines:
        if line.startswith("data: "):
            break  # the task as it is, the stream's first event
    return lines


async def _rest(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines if line]


async def _said(lines: AsyncIterator[str]) -> str:
    """The stream's next line that says something (an event's, not a frame's end)."""
    async for line in lines:
        if line:
            return line
    return "(ended)"


@pytest.mark.timeout(240)
async def test_an_a2a_stream_ends_when_its_token_is_revoked_or_expires(
        tmp_path: Path) -> None:
    """A token's A2A streams (SubscribeToTask on JSON-RPC and HTTP+JSON) went on after the
    token was revoked or expired, sending the task's events to whoever held it, while
    REST's and the gateway's end (decision 1831): the A2A door never heard of revocations
    (attacker's pass, session 11). Now each ends then, whole, and another token's stream
    goes on."""
    with a2a_daemon(tmp_path, anonymous="[]") as (d, url):
        scopes = ("--scope", "tasks:run", "--scope", "tasks:read")
        secret = {name: d.json("token", "create", name, *scopes)["token"]
                  for name in ("held", "other")}

        def auth(name: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {secret[name]}"}

        async with contextlib.AsyncExitStack() as stack:
            asked = await rpc(await stack.enter_async_context(httpx.AsyncClient(
                timeout=60, headers=auth("held"))), url, "SendMessage",
                message("tck-input-required"))
            task_id = asked["result"]["task"]["id"]
            subscribe = {"jsonrpc": "2.0", "id": 1, "method": "SubscribeToTask",
                         "params": {"id": task_id}}
            # (its streams opened first, well within its life at any load)
            made = time.monotonic()
            secret["brief"] = d.json("token", "create", "brief", *scopes, "--expires",
                                     "15s")["token"]
            clients = {name: await stack.enter_async_context(
                httpx.AsyncClient(timeout=60, headers=auth(name)))
                for name in ("brief", "held", "other")}
            streams = {}
            for name, client in clients.items():
                streams[name, "jsonrpc"] = await _opened(client, stack, f"{url}/a2a/tck",
                                                         subscribe)
                streams[name, "http_json"] = await _opened(
                    client, stack, f"{url}/a2a/tck/tasks/{task_id}:subscribe")
            assert d.cli("token", "revoke", "held").returncode == 0
            for door in ("jsonrpc", "http_json"):
                # ended: its end read, with nothing sent after the revocation
                assert await asyncio.wait_for(_rest(streams["held", door]), 30) == [], door
            # the token that expires: its streams end at its expiry
            for door in ("jsonrpc", "http_json"):
                assert await asyncio.wait_for(_rest(streams["brief", door]), 60) == [], door
            assert time.monotonic() - made > 14.0
            # another token's streams go on: still open, the task still asking
            still = asyncio.ensure_future(_said(streams["other", "jsonrpc"]))
            done, _ = await asyncio.wait({still}, timeout=1.0)
            assert not done
            still.cancel()
            got = await rpc(clients["other"], url, "GetTask", {"id": task_id})
            assert got["result"]["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
            # a revoked token is refused a new stream, as any call
            r = await clients["held"].post(f"{url}/a2a/tck", json=subscribe)
            assert (r.status_code, r.json()["error"]["message"]) == (
                401, "unauthorized: the bearer token is not valid (unknown, revoked or expired)")


def test_a_held_progress_stream_keeps_a_bounded_number_of_bytes() -> None:
    """A task's progress is held until its client is told it was accepted (494dce6b):
    each report is kept, up to HELD_MAX of them, where the stream held one before. A
    report's message is a worker's string, as long as a worker's line (16 MiB), so a
    worker that reports while the acceptance is written (or, on a cluster, while Redis
    answers the submit) made the daemon hold HELD_MAX of them per client: 100 times what
    it held before (attacker's pass, session 11; fixed by the lead in 73142e04,
    HELD_CHARS). Held reports are bounded in characters too, the newest replacing the
    last kept past that bound, as they are past the count."""
    async def main() -> None:
        from .test_hostile import _Reader

        c = _Reader()
        held = Latest(c, "task.progress", held=True)
        for i in range(100):
            held.send({"progress": i, "message": f"{i:03}" + "x" * MiB})
        c.notify("task.accepted", {"task_id": "t"})
        held.release()
        sent = [p for method, p in c.sent if method == "task.progress"]
        assert sum(len(p["message"]) for p in sent) <= 2 * MiB + 16
        assert sent[-1]["progress"] == 99  # the newest always kept
        assert sum(1 + p.get("coalesced", 0) for p in sent) == 100  # every one counted
    asyncio.run(main())


@pytest.mark.timeout(120)
async def test_a_stream_handed_over_between_pipelined_blocking_messages_keeps_their_order(
        tmp_path: Path) -> None:
    """The lean connection keeps a served POST's head alone and joins it to the body the
    Exchange holds when it hands a stream over to aiohttp (a55b06c6): on one connection,
    in one write, a blocking message, a streamed one and a blocking one behind it are
    answered in their order, the stream whole between them, and nothing of one is read as
    another's (a body missing from the hand-over would have aiohttp read the message behind
    it as the stream's body)."""
    from .a2a.test_lean_messages import post, send
    from .test_model_lean import Wire

    with a2a_daemon(tmp_path) as (_, url):
        host, _, port = url.split("/")[2].rpartition(":")
        wire = Wire(*await asyncio.open_connection(host, int(port)))
        try:
            wire.writer.write(post("/a2a/tck", send("tck-complete-task-1"))
                              + post("/a2a/tck", send("tck-complete-task-2",
                                                      "SendStreamingMessage"))
                              + post("/a2a/tck", send("tck-complete-task-3")))
            first, streamed, last = [await wire.answer() for _ in range(3)]
        finally:
            wire.writer.close()
        for answer in (first, last):
            status, headers, body = answer
            assert (status, headers["content-type"]) == (200, "application/json"), answer
            assert json.loads(body)["result"]["task"]["status"]["state"] == \
                "TASK_STATE_COMPLETED"
        status, headers, body = streamed
        assert (status, headers["content-type"].split(";")[0]) == (200, "text/event-stream")
        events = [json.loads(line[len(b"data: "):])["result"]
                  for line in body.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED", events
        messages = {json.loads(b)["result"]["task"]["history"][0]["messageId"]
                    for b in (first[2], last[2])}
        assert messages == {"tck-complete-task-1", "tck-complete-task-3"}
