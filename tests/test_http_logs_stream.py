"""A real agent's log followed over Server-Sent Events (`/api/v1/agents/{name}/logs/stream`,
`/api/v1/logs/stream`, over `logs.follow`): lines written after the client subscribed
reach it, a client that reconnects with `Last-Event-ID` (the header, or the query
parameter a browser's EventSource can be given) gets what it missed, and a token without
`logs:read`, or limited to other agents, is refused before anything is followed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from corral import jsonrpc

from .conftest import ROOT
from .daemon_harness import problem
from .test_gateway_stdio import wait_until_async
from .test_http_api import PROBLEM, SOCKET, Api, serving, sse_events

TALKER = """
import sys
from corral.worker import run


def handle(task, ctx):
    print(task["say"], file=sys.stderr, flush=True)
    return {"said": task["say"]}


run(handle)
"""


def talker(tmp_path: Path) -> str:
    script = tmp_path / "talker.py"
    script.write_text(TALKER)
    return f"""
        [agents.talker]
        command = ["{sys.executable}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0

        [agents.other]
        command = ["{sys.executable}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0
    """


async def say(api: Api, agent: str, text: str) -> None:
    """The agent writes `text` to its stderr (its log), as a task it runs to its end."""
    done = await api.d.dispatcher.call(SOCKET, "tasks.run", f'{{"agent": "{agent}", '
                                       f'"input": {{"say": "{text}"}}}}'.encode())
    assert done.status == "succeeded"


async def said(stream: aiohttp.ClientResponse, count: int) -> list[tuple[str, list[Any]]]:
    """The next events of a log stream until `count` lines the test's agents said
    ("said ...") have come: (event id, those lines) of each event that had some (the
    others carry the agent's state changes); every event checked."""
    events: list[tuple[str, list[Any]]] = []
    seen = 0
    while seen < count:
        (event,) = await asyncio.wait_for(sse_events(stream, 1), 30)
        assert event["event"] == "logs.lines", event
        lines = event["data"]["lines"]  # [time, source, replica, pid, stream, text]
        # an event's id is the time of its last line: where a reconnect resumes
        assert event["id"] == repr(lines[-1][0])
        mine = [ln for ln in lines if ln[5].startswith("said ")]
        seen += len(mine)
        if mine:
            events.append((event["id"], mine))
    return events


def texts(events: list[tuple[str, list[Any]]]) -> list[str]:
    return [ln[5] for _, lines in events for ln in lines]


@pytest.mark.deadline(120)
async def test_a_log_followed_over_sse_resumes_with_last_event_id(tmp_path: Path) -> None:
    async with serving(tmp_path, talker(tmp_path)) as api:
        hub = api.d.services.hub
        await api.token("logs", "logs:read")
        await api.token("blind", "agents:read", "tasks:run", "tasks:read")
        await api.token("elsewhere", "logs:read", agents="other")
        auth = {"Authorization": f"Bearer {api.tokens['logs']}"}

        # refused before any stream: no scope (403), no token (401), an agent outside
        # the token's glob (404, as one that does not exist); nothing followed
        for path in ("/agents/talker/logs/stream", "/logs/stream?names=talker"):
            status, body, r = await api.ask("GET", path, "blind")
            assert (status, r.content_type, body) == (403, PROBLEM, problem(
                403, "forbidden", "forbidden: logs.follow needs the logs:read scope, "
                                  "which token blind does not hold", jsonrpc.FORBIDDEN))
            status, body, _ = await api.ask("GET", path)
            assert (status, body["title"]) == (401, "unauthorized")
            status, body, _ = await api.ask("GET", path, "elsewhere")
            assert (status, body) == (404, problem(
                404, "not found", "no such agent: talker (agents: other)",
                jsonrpc.NOT_FOUND))
        assert not hub.followers

        # lines written after subscribing (no backlog asked: lines=0) come as they are
        # written, only talker's
        url = api.base + "/agents/talker/logs/stream?lines=0"
        async with api.http.get(url, headers=auth) as stream:
            assert (stream.status, stream.headers["Content-Type"]) == (
                200, "text/event-stream")
            await wait_until_async(lambda: len(hub.followers) == 1)
            first: list[tuple[str, list[Any]]] = []
            for i in range(3):
                await say(api, "other", f"said elsewhere {i}")
                await say(api, "talker", f"said {i}")
                first += await said(stream, 1)
        assert texts(first) == ["said 0", "said 1", "said 2"]
        assert {ln[1] for _, lines in first for ln in lines} == {"talker"}
        # the client went away: its follow ended with it
        await wait_until_async(lambda: not hub.followers)

        # said while nobody follows; then a reconnect with the id of the event that
        # brought "said 1": every line since that id (a time: the last line of that
        # event, which it comes again, at least once), what was said meanwhile, then
        # what is said after, live
        await say(api, "talker", "said 3")
        await say(api, "talker", "said 4")
        resume = first[1][0]
        async with api.http.get(url, headers={**auth, "Last-Event-ID": resume}) as stream:
            assert stream.status == 200
            since = [ln[5] for _, lines in first for ln in lines if ln[0] >= float(resume)]
            assert since[-1] == "said 2"
            again = await said(stream, len(since) + 2)
            assert texts(again) == [*since, "said 3", "said 4"]
            await say(api, "talker", "said 5")
            again += await said(stream, 1)
            assert texts(again)[-1] == "said 5"

        # the same through /logs/stream, the id given as a query parameter (a browser's
        # EventSource cannot set the header on a new connection): from the first event
        # of the stream before, which held what it had missed
        resume = again[0][0]
        since = [ln[5] for _, lines in again for ln in lines if ln[0] >= float(resume)]
        assert since[-1] == "said 5"
        async with api.http.get(api.base + "/logs/stream?names=talker&lines=0&"
                                f"last_event_id={resume}", headers=auth) as stream:
            assert stream.status == 200
            assert texts(await said(stream, len(since))) == since
