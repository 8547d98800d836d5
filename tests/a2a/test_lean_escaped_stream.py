"""A stream asked for with its method's name escaped in the JSON text (`\\u0053` for an
`S`) is a stream still: the door's lean read looks for a stream's name in the body's bytes
before it reads the body (routes.py `lean`, a2a/jsonrpc.py `streams`), and a body that
escapes a letter is read whole for it. Raw HTTP/1.1 on a socket, the daemon in this loop,
the TCK's agent (examples/a2a/tck_agent.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..daemon_harness import free_port, in_process
from .harness import a2a_config, tck_agent
from .test_lean_messages import lean_connections, open_wire, post, send, wait_closed


@pytest.mark.timeout(120)
async def test_a_stream_whose_method_is_escaped_is_handed_to_aiohttp_and_streamed(
        tmp_path: Path) -> None:
    """Fails with lean taking the message as a unary call: its task made, then no
    event-stream written (lean's connection cannot carry one)."""
    port = free_port()
    async with in_process(tmp_path, tck_agent(), a2a_config(port)) as d:
        body = send("tck-stream-001-escaped", "SendStreamingMessage").replace(
            b'"SendStreamingMessage"', b'"Send\\u0053treamingMessage"')
        assert b"Streaming" not in body  # (nothing but the escape names the stream)
        wire = await open_wire(port)
        wire.writer.write(post("/a2a/tck", body))
        status, headers, got = await wire.answer()
        assert status == 200, got
        assert headers["content-type"].startswith("text/event-stream"), (headers, got)
        events = [json.loads(line[5:]) for line in got.split(b"\n")
                  if line.startswith(b"data:")]
        assert events and all("error" not in e for e in events), events
        assert events[0]["result"]["task"]["status"]["state"] == "TASK_STATE_SUBMITTED"
        assert lean_connections(d) == [False]  # (aiohttp's from the stream on)
        wire.writer.close()
        await wait_closed(d)
