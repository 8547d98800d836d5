"""A model call of no task is its replica's (issue 74, DESIGN section 27): an agent that
runs two tasks at a time calls its model gateway at the replica's own address, so no
task attempt is found for the call; the agent's `approve_models` holds it all the same —
a person is asked (the ask owned by the replica's incarnation), the call waits and is
made only once approved; a replica that exits while its call waits withdraws its ask.

Real parts: the daemon in this loop, an agent using the real `anthropic` client library
(tests/model_agent.py), a stand-in provider (tests/servers/model_upstream.py)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from corral.askviews import Ask, AskEnd
from corral.daemon.caller import Caller
from corral.supervisor.tasks.inbox import AskEnded
from corral.taskoptions import TaskOptions

from .daemon_harness import in_process
from .servers.model_upstream import StandIn
from .test_model_gateway import fleet, provider_key, upstream  # noqa: F401 (fixtures)
from .test_questions import asks_made

OPERATOR = Caller(via="socket")


async def test_a_model_call_of_no_task_waits_for_a_person_and_its_replicas_exit_withdraws_it(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811 - the fixture
    toml = fleet(tmp_path, upstream.url,
                 agent_extra='approve_models = ["claude-*"]\nmax_concurrent_tasks = 2')
    async with in_process(tmp_path, toml) as d:
        made = asks_made(d)
        running = asyncio.ensure_future(d.sup.tasks.run(
            "writer", {"api": "messages", "model": "claude-small", "calls": 1},
            TaskOptions(timeout=60)))
        ask = await asyncio.wait_for(made.get(), 30)
        assert re.fullmatch(r"replica:writer#0:[0-9a-f]{8}", ask.task_id), ask
        assert (ask.kind, ask.attempt, ask.agent, ask.subject["model"]) == (
            "approval", 0, "writer", "claude-small")
        listed = await d.dispatcher.call(OPERATOR, "approvals.list", {})
        assert [a.id for a in listed.asks] == [ask.id]
        assert upstream.requests == []  # nothing made before it is approved
        await d.dispatcher.call(OPERATOR, "approvals.resolve",
                                {"id": ask.id, "decision": "approved"})
        res = await running
        assert res.status == "succeeded", res
        assert res.output["answers"] == ["echo: call 1"]
        assert len(upstream.requests) == 1

        # its replica stops while the next call waits: the ask ends withdrawn, unmade
        waiting = asyncio.ensure_future(d.sup.tasks.run(
            "writer", {"api": "messages", "model": "claude-small", "calls": 1},
            TaskOptions(timeout=60)))
        second = await asyncio.wait_for(made.get(), 30)
        ends: asyncio.Queue[Ask] = asyncio.Queue()
        d.sup.tasks.stream.subscribe(
            lambda e: None if e.ask.pending else ends.put_nowait(e.ask), AskEnded)
        await d.dispatcher.call(OPERATOR, "agents.restart", {"names": ["writer"]})
        ended = await asyncio.wait_for(ends.get(), 30)
        assert (ended.id, ended.end, ended.by) == (second.id, AskEnd.WITHDRAWN, "corral")
        assert len(upstream.requests) == 1
        waiting.cancel()
