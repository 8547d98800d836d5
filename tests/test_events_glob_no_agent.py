"""A token limited to an agents glob is sent the events of its agents alone (issue 88: a
glob token's stream carried events outside its glob): a workflow run of no agent (its
steps wait for signals) is the operator's, as its listing already has it
(Caller.owns: a record of no agent known is the operator's alone), so its
`corral.run.*` and `corral.step.*` events are sent to no glob's follower."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import pytest

from corral.daemon.caller import Caller

from .daemon_harness import in_process, sleeper
from .test_gateway_stdio import wait_until_async
from .test_http_adversary import Recorder
from .test_http_api import SOCKET

FLOW = '[workflows.gate]\n[[workflows.gate.steps]]\nname = "wait"\nsignal = "go"\n'


def topics(recorder: Recorder) -> list[str]:
    return [msgspec.json.decode(p)["topic"] for _, p in recorder.sent]


@pytest.mark.deadline(90)
async def test_a_glob_token_is_sent_no_event_of_a_run_of_no_agent(tmp_path: Path) -> None:
    async with in_process(tmp_path, sleeper("a1"), FLOW) as d:
        glob = Caller(via="http", token="glob", scopes=frozenset({"events"}), agents="a*")
        limited, everyone = Recorder(), Recorder()
        follows = [asyncio.ensure_future(d.dispatcher.call(
            caller, "events.follow", {"pattern": "*"}, recorder))
            for caller, recorder in ((glob, limited), (SOCKET, everyone))]
        try:
            await wait_until_async(lambda: len(d.sup.events.followers) == 2)
            run = await d.dispatcher.call(SOCKET, "workflows.run", {
                "name": "gate", "input": {}})
            await d.dispatcher.call(SOCKET, "runs.signal", {
                "run_id": run.run_id, "name": "go", "data": 1})
            await wait_until_async(lambda: "corral.run.succeeded" in topics(everyone))
            await d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
                {"agent": "a1", "input": {"do": "publish", "topic": "t.a1", "data": 0}}))
            await wait_until_async(lambda: "t.a1" in topics(limited))
        finally:
            for follow in follows:
                follow.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follow
        assert [t for t in topics(everyone) if t.startswith("corral.")] == [
            "corral.run.started", "corral.step.started", "corral.step.succeeded",
            "corral.run.succeeded"]
        assert topics(limited) == ["t.a1"]
