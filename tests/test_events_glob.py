"""A token limited to an agents glob is sent its agents' events alone (issue 52, item
4b): neither another agent's worker's, nor corral's own about another agent, nor those a
caller limited to another glob published (a token limited to `b*` speaks for b1), over
the command layer's follow (the socket's handler) and the HTTP event stream alike. Its
own glob's callers' events, an operator's and its own agents' are sent. The same across
a cluster: tests/cluster/test_cluster_events.py."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import pytest

from .daemon_harness import sleeper
from .test_gateway_stdio import wait_until_async
from .test_http_adversary import Recorder, api_of
from .test_http_api import SOCKET, serving, sse_events


@pytest.mark.deadline(90)
async def test_a_glob_tokens_stream_has_no_event_another_globs_caller_published(
        tmp_path: Path) -> None:
    from corral.daemon.caller import Caller

    async with serving(tmp_path, sleeper("a1") + sleeper("b1")) as api:
        d = api.d
        await api.token("glob", "events", agents="a*")
        await api.token("same", "events", agents="a*")
        await api.token("other", "events", agents="b*")
        await api.token("ops", "events")
        glob = Caller(via="http", token="glob", scopes=frozenset({"events"}), agents="a*")
        recorder = Recorder()
        follow = asyncio.ensure_future(d.dispatcher.call(
            glob, "events.follow", {"pattern": "t.*"}, recorder))
        auth = {"Authorization": f"Bearer {api.tokens['glob']}"}
        try:
            async with api.http.get(api.base + "/events/stream?pattern=t.*",
                                    headers=auth) as stream:
                ring = api_of(d).ring
                await wait_until_async(lambda: len(ring.readers) == 1 and ring.task
                                       is not None and len(d.sup.events.followers) == 2)
                for token in ("other", "same", "ops"):
                    status, body, _ = await api.ask("POST", "/events", token,
                                                    {"topic": f"t.{token}", "data": 0})
                    assert status == 200, body
                for agent in ("b1", "a1"):
                    done = await d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
                        {"agent": agent, "input": {"do": "publish", "topic": f"t.{agent}",
                                                   "data": 0}}))
                    assert done.status == "succeeded", done
                got = await sse_events(stream, 3)
            await wait_until_async(lambda: len(recorder.sent) >= 3)
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        want = ["t.same", "t.ops", "t.a1"]
        assert [e["data"]["topic"] for e in got] == want
        assert [msgspec.json.decode(p)["topic"] for _, p in recorder.sent] == want
