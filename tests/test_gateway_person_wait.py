"""A gateway tool call's latency is its own time, the wait for a person apart (issue 78,
corral/supervisor/tasks/personwait.py): an approved call held for a person counts the
person's seconds in `waited`/`waited_ms`, not in its tool's and client's p50/p95/p99; a
call that waited for nobody adds nothing to `waited`. Both doors where an approval holds
a gateway call: a replica's call attributed to the one task it runs (the approval
interceptor of the task path) and one of no task (approvals.gate); and an MCP server's
elicitation in a task's call, a question a person answers (asked from the server
connection's reader, mid-call, or from an input_required result).

Real processes: a daemon, agents of examples/misbehave.py, the counting MCP server, the
official MCP SDK's client over Streamable HTTP with the replica's own token."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.attribution import ATTEMPT_PARAM, TASK_PARAM

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_boundary_calls import asks_of, config, finished, replica_env, session, submit, text
from .test_gateway_stdio import wait_until_async
from .warmforks import sdk_toml

pytest.importorskip("mcp")
pytestmark = pytest.mark.usefixtures("warm_mcp_sdk")

HELD = 0.5  # seconds the test, as the person, holds each ask before it approves


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    (tmp / "tokens.toml").write_text("")
    with running_daemon(tmp, config(tmp)) as d:
        yield d


@asynccontextmanager
async def running(d: Daemon, agent: str, n: int) -> AsyncIterator[list[str]]:
    """The agent's replica runs `n` tasks (each waiting for a file) meanwhile: their
    ids."""
    holds = [d.dir / f"{agent}-wait-{time.monotonic_ns()}-{i}" for i in range(n)]
    ids = [submit(d, agent, {"do": "await", "path": str(p)}) for p in holds]
    await wait_until_async(lambda: all(d.task(t)["status"] == "running" for t in ids))
    try:
        yield ids
    finally:
        for p in holds:
            p.touch()
        for t in ids:
            await asyncio.to_thread(finished, d, t)


async def approved_after(d: Daemon, s: Any, i: int, held: float) -> float:
    """counting__bump {i} called, its ask approved `held` seconds after it was made: the
    call's seconds as the client timed it."""
    start = time.perf_counter()
    call = asyncio.ensure_future(s.call_tool("counting__bump", {"i": i}))
    await wait_until_async(lambda: asks_of(d, "linked") or call.done())
    assert not call.done(), call.result()
    [ask] = asks_of(d, "linked")
    await asyncio.sleep(held)  # the person taking their time: what must not be latency
    said = await asyncio.to_thread(d.cli, "approvals", "approve", ask["id"])
    assert said.returncode == 0, said.stderr
    result = await call
    assert (text(result), result.is_error) == (f"bumped {i}", False)
    return time.perf_counter() - start


def gateway(d: Daemon) -> dict[str, Any]:
    stats: dict[str, Any] = d.json("mcp", "status")["gateway"]
    return stats


@pytest.mark.deadline(120)
async def test_a_persons_wait_is_counted_apart_from_the_calls_latency(
        daemon: Daemon) -> None:
    d = daemon
    env = await asyncio.to_thread(replica_env, d, "linked")
    url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
    client = "linked#0"
    took = []
    # a task's step (the address names its attempt), then a call of no task
    async with running(d, "linked", 1) as [task_id], \
            session(url, token, f"?{TASK_PARAM}={task_id}&{ATTEMPT_PARAM}=1") as s:
        took.append(await approved_after(d, s, 31, HELD))
    async with running(d, "linked", 2), session(url, token) as s:
        took.append(await approved_after(d, s, 32, HELD))
    st = gateway(d)
    for row in (st["tools"]["counting__bump"], st["clients"][client]):
        assert (row["calls"], row["errors"], row["waited"]) == (2, 0, 2), row
        # the person's seconds are in waited_ms, at least as long as each was held
        assert 2 * HELD * 1000 <= row["waited_ms"] <= sum(took) * 1000 + 1, (row, took)
        # the calls' own time: what the client waited less the person's wait (each
        # call's own is under its whole less HELD, the percentiles are of those)
        assert row["p99_ms"] <= max(took) * 1000 - HELD * 1000, (row, took)
    assert (st["attributed"], st["unattributed"]) == (1, 1), st

    # a call no person holds waits for nobody: its row's `waited` does not move, and
    # its own time is its whole
    before = gateway(d)["clients"][client]
    async with running(d, "linked", 1), session(url, token, "/counting") as s:
        result = await s.call_tool("big", {"kb": 1})
        assert not result.is_error
    st = gateway(d)
    assert st["tools"]["counting__big"]["waited"] == 0
    assert st["tools"]["counting__big"]["waited_ms"] == 0.0
    after = st["clients"][client]
    assert (after["calls"], after["waited"], after["waited_ms"]) == (
        before["calls"] + 1, before["waited"], before["waited_ms"])

    # `corral mcp status` shows the waits beside the percentiles
    shown = d.cli("mcp", "status")
    assert shown.returncode == 0, shown.stderr
    [header] = [ln for ln in shown.stdout.splitlines() if ln.startswith("GATEWAY TOOL")]
    assert header.split()[-4:] == ["WAITED", "FOR", "A", "PERSON"], header
    [bump] = [ln for ln in shown.stdout.splitlines() if ln.startswith("counting__bump ")]
    waited_s = st["tools"]["counting__bump"]["waited_ms"] / 1000
    assert bump.endswith(f"2 ({waited_s:.1f} s)"), bump
    [big] = [ln for ln in shown.stdout.splitlines() if ln.startswith("counting__big ")]
    assert big.split()[-1] == "-", big


SERVERS = {"legacy": "--legacy", "stateless": ""}  # (tests/test_elicitations.py's)
# the fixture server a fork of this process's MCP SDK server (tests/warmforks.py)
FIXTURES = f"{Path(__file__).parent}/servers/conformance_fixtures.py"


def eliciting(tmp: Path) -> str:
    # each server is started by its first call, which waits for it within its
    # start_timeout: on a loaded host the SDK server's start outlasted the default (the
    # call refused, 'is not serving: started')
    servers = "".join(
        f'[mcp_servers.{name}]\ncommand = {sdk_toml(FIXTURES, *flag.split())}\nshared = true\n'
        'start_timeout = 60.0\n\n'
        for name, flag in SERVERS.items())
    return textwrap.dedent(f"""
        [agents.asker]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["legacy__*", "stateless__*"]

    """) + servers + '[gateway]\nlisten = "127.0.0.1:0"\n'


@pytest.mark.deadline(150)
async def test_a_servers_question_answered_by_a_person_is_counted_apart() -> None:
    tmp = shared_tmpdir()
    with running_daemon(tmp, eliciting(tmp)) as d:
        env = await asyncio.to_thread(replica_env, d, "asker")
        url, token = env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]
        took = {}
        for server in SERVERS:
            async with running(d, "asker", 1) as [task_id], \
                    session(url, token, f"?{TASK_PARAM}={task_id}&{ATTEMPT_PARAM}=1") as s:
                start = time.perf_counter()
                call = asyncio.ensure_future(s.call_tool(f"{server}__ask_name",
                                                         {"greeting": "Hi"}))
                await wait_until_async(lambda c=call: asks_of(d, "asker") or c.done())
                assert not call.done(), call.result()
                [ask] = asks_of(d, "asker")
                assert ask["kind"] == "question", ask
                await asyncio.sleep(HELD)  # the person taking their time
                said = await asyncio.to_thread(d.cli, "approvals", "answer", ask["id"],
                                               "--data", json.dumps({"name": "Eve"}))
                assert said.returncode == 0, said.stderr
                assert text(await call) == "Hi, Eve!"
                took[server] = time.perf_counter() - start
        st = gateway(d)
        for server, whole in took.items():
            row = st["tools"][f"{server}__ask_name"]
            assert (row["calls"], row["errors"], row["waited"]) == (1, 0, 1), (server, row)
            assert HELD * 1000 <= row["waited_ms"] <= whole * 1000 + 1, (server, row, whole)
            assert row["p50_ms"] <= (whole - HELD) * 1000, (server, row, whole)
