"""Labels, on each home (DESIGN 25, 28; supervisor/labels.py): what a task read of an
untrusted tool is a record of its home, so a session's next turn after every entry
restarted (on a cluster, on whichever node runs it), a spawned child (a cluster task any
node may run) and a task a replica starts at /mcp/corral ask a person before a sensitive
call, naming the taint. The agents: examples/misbehave.py calling
tests/servers/policy_mcp.py, whose fetcher is untrusted and whose mail sender sensitive."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from ..test_attacks_newest import stateless
from ..test_boundary_calls import session, text
from ..test_labels import FETCH, FETCHED, FLEET, SEND, SENT, TAINT, sequence
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(180)


def agents(directory: Path) -> str:
    del directory  # (a task lost with its home is retried)
    return FLEET.replace("stop_timeout = 10.0", "stop_timeout = 10.0\n    retries = 1")


def asked(home: Home, agent: str, at: int = 0) -> dict[str, Any]:
    """The agent's one pending ask, once it is listed."""
    [ask] = wait_until(f"an ask of {agent}'s", lambda: [
        a for a in home.asks(at) if a["agent"] == agent])
    return ask


def test_a_sessions_next_turn_asks_after_its_home_restarted(home: Home) -> None:
    first = home.run("reader", sequence(FETCH), session="s1")
    assert (first["status"], first["output"]) == ("succeeded", [FETCHED]), first
    home.restart()
    turn = home.submit("reader", sequence(SEND), at=1, session="s1")
    ask = asked(home, "reader", at=1)
    assert (ask["task_id"], ask["subject"]) == (turn, {**SEND, "policy": TAINT})
    home.decide(ask["id"], "approved", at=1)
    assert home.wait(turn, at=1)["output"] == [SENT]
    # another session's turn read nothing: it sends unasked
    other = home.run("reader", sequence(SEND), session="s2")
    assert other["output"] == [SENT], other


def test_a_spawned_child_asks_wherever_it_runs(home: Home) -> None:
    parent = home.submit("reader", sequence(FETCH, {"spawn": "writer",
                                                    "input": sequence(SEND)}))
    ask = asked(home, "writer")
    assert ask["subject"] == {**SEND, "policy": TAINT}
    assert ask["task_id"] != parent
    home.decide(ask["id"], "approved", at=1)
    done = home.wait(parent)
    fetch, spawned = done["output"]
    assert fetch == FETCHED
    assert (spawned["status"], spawned["output"]) == ("succeeded", [SENT])
    if home.redis is not None:  # an ended task's labels expire with its record
        keys = redis.Redis.from_url(home.redis.url)
        try:
            kept = [k for k in keys.keys("*labels:*") if b"session" not in k]
            assert kept and all(keys.ttl(k) > 0 for k in kept), kept
        finally:
            keys.close()


def test_an_agent_called_at_mcp_corral_asks_wherever_it_runs(home: Home) -> None:
    """A replica reads the fetcher's output at the gateway's /mcp (a call of no task),
    then calls agent writer at /mcp/corral: writer's task, which any node may run, is
    given the replica's labels."""
    env = home.run("reader", {"do": "env"})["output"]

    async def calls() -> Any:
        url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
        async with session(url, token) as s:
            read = await s.call_tool(FETCH["tool"], FETCH["arguments"])
            assert json.loads(read.model_dump_json())["content"][0]["text"] == \
                FETCHED["content"][0]["text"]
        async with session(url, token, "/corral") as s:
            call = asyncio.ensure_future(s.call_tool("writer", sequence(SEND)))
            ask = await asyncio.to_thread(asked, home, "writer")
            assert ask["subject"] == {**SEND, "policy": TAINT}
            await asyncio.to_thread(home.decide, ask["id"], "approved", 1)
            return await call
    result = asyncio.run(calls())
    assert (result.is_error, json.loads(text(result))) == (False, [SENT])


def test_a_task_handed_labels_keeps_them_across_a_crash_before_its_first_call(
        home: Home) -> None:
    """A replica reads the fetcher's output at /mcp and starts a writer task at
    /mcp/corral (a client of the tasks extension: given a handle at once), which waits
    before any call; its home is killed (-9) then: the task's retry, wherever it runs,
    still asks before it sends."""
    env = home.run("reader", {"do": "env"})["output"]
    url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
    read = stateless(url, token, "tools/call", {"name": FETCH["tool"],
                                                "arguments": FETCH["arguments"]})
    assert read["result"]["content"] == FETCHED["content"], read
    never = home.dir / "never"  # (attempt 1 waits for it: the crash comes first)
    handle = stateless(url + "/corral", token, "tools/call", {"name": "writer", "arguments": (
        sequence({"await": str(never), "attempt": 1}, SEND))})
    assert handle["result"]["resultType"] == "task", handle
    task_id = wait_until("the writer running", lambda: next(
        (t["task_id"] for t in home.call("tasks.list", {"agent": "writer"})["tasks"]
         if t["status"] == "running"), None))
    home.crash(task_id)
    ask = asked(home, "writer")
    assert (ask["task_id"], ask["attempt"], ask["subject"]) == (
        task_id, 2, {**SEND, "policy": TAINT})
    home.decide(ask["id"], "approved", at=1)
    done = home.wait(task_id)
    assert (done["status"], done["output"]) == ("succeeded", [SENT]), done
