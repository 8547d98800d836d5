"""The audit table is bounded per party (issue 52): each tenant's callers' rows, and the
operator's apart, past `audit_max_rows` lose their oldest; a tenant's refused calls never
push out the operator's rows or another tenant's; an agent's tool calls are a share of
their own, pushing out no other row of their party's."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from .conftest import ROOT
from .daemon_harness import PY, Daemon, free_port, in_process, running_daemon, shared_tmpdir

KEEP = 20
CALLS = 60


def audited(d: Daemon) -> list[dict[str, Any]]:
    """`corral audit -n 100000`'s rows, asked on the socket (a wait looks often)."""
    entries: list[dict[str, Any]] = d.ask("audit.list", {"limit": 100000})["entries"]
    return entries


def wait_for_row(d: Daemon, name: str) -> list[dict[str, Any]]:
    """The audit once the refusal naming agent `name` is in it (rows are written off
    the loop, batched)."""
    deadline = time.monotonic() + 60
    while True:
        rows = audited(d)
        if any(name in str(e["params"]) for e in rows):
            return rows
        assert time.monotonic() < deadline, f"no audit row of {name}"
        time.sleep(0.1)


def test_a_tenants_refused_calls_keep_at_most_its_bound_and_push_out_no_one_elses() -> None:
    port = free_port()
    tmp = shared_tmpdir()
    with running_daemon(tmp, f"""
[tenants.acme]
[tenants.globex]
[http]
listen = "127.0.0.1:{port}"
""", extra=f"audit_max_rows = {KEEP}") as d:
        ops = [d.json("token", "create", f"ops{i}", "--scope", "admin")["token"]
               for i in range(3)]
        acme = d.json("token", "create", "acme-ci", "--tenant", "acme", "--scope",
                      "agents:write")["token"]
        globex = d.json("token", "create", "globex-ci", "--tenant", "globex", "--scope",
                        "agents:write")["token"]
        assert len(ops) == 3

        async def refused(token: str, name: str) -> None:
            async with aiohttp.ClientSession() as http, http.post(
                    f"http://127.0.0.1:{port}/api/v1/agents",
                    json={"agents": {name: {"command": [PY, "x.py"], "user": "root"}}},
                    headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 403, await r.text()

        async def flood() -> None:
            await refused(globex, "globex-once")
            for i in range(CALLS):
                await refused(acme, f"greedy{i}")

        asyncio.run(flood())
        rows = wait_for_row(d, f"greedy{CALLS - 1}")
        acme_rows = [e for e in rows if e["tenant"] == "acme"]
        assert KEEP <= len(acme_rows) <= KEEP + 1, len(acme_rows)
        # the newest kept, the oldest gone
        assert f"greedy{CALLS - 1}" in str(acme_rows[-1]["params"])
        assert not any("greedy0'" in str(e["params"]) for e in acme_rows)
        # the operator's rows (its token creates) and globex's refusal are all there
        made = [e["params"]["name"] for e in rows
                if e["method"] == "tokens.create" and e["tenant"] is None]
        assert made == ["ops0", "ops1", "ops2", "acme-ci", "globex-ci"], made
        assert [e["tenant"] for e in rows if "globex-once" in str(e["params"])] == ["globex"]


@pytest.mark.deadline(120)
async def test_an_agents_tool_calls_push_out_neither_its_refusals_nor_its_partys_rows(
        tmp_path: Path) -> None:
    """Each tool call an agent makes is an audit row (the chain's audit link): a loop of
    benign calls past `audit_max_rows` pushed out the boundary's refusals of the agent,
    and every other row of its party's (issue 88's attacker's pass). Its calls are a
    share of their own: their oldest go, the rest stay."""
    agent = (f'[agents.caller]\ncommand = ["{PY}", "{ROOT}/tests/doors/door_agent.py"]\n'
             f'env = {{ PYTHONPATH = "{ROOT}" }}\ntools = ["pol__*"]\n'
             'max_tool_calls_per_task = 200\n\n'
             f'[mcp_servers.pol]\ncommand = ["{PY}", "{ROOT}/tests/servers/policy_mcp.py"]\n')
    async with in_process(tmp_path, agent, supervisor=f"audit_max_rows = {KEEP}") as d:
        assert d.sup.parts.refusals.refused("caller", "connect", "203.0.113.9:443",
                                            task="t0")
        calls = [{"door": "worker", "tool": "pol__fetch", "arguments": {"i": i}}
                 for i in range(CALLS)]
        task = d.sup.tasks.submit("caller", {"calls": calls})
        await task.done
        assert task.status == "succeeded", task.error
        rows = await d.services.store.audit_log_now(100_000)
        made = [r for r in rows if r[3] == "worker.call"]
        assert KEEP <= len(made) <= KEEP + KEEP // 10, len(made)
        assert [msgspec.json.decode(r[4])["target"] for r in rows
                if r[3] == "boundary.refused"] == ["203.0.113.9:443"]


async def test_the_tasks_submitted_push_out_neither_an_agents_refusals_nor_its_partys_rows(
        tmp_path: Path) -> None:
    """Each task accepted is an audit row (`task.submitted`, decision 1250): a caller's
    flood of submissions past `audit_max_rows` (an anonymous A2A caller's messages to an
    agent of the operator's, in the operator's party) is a share of its own with the
    agents' calls: their oldest go, the operator's own rows and the boundary's refusal
    of the agent stay."""
    from corral import methods as m
    from corral.daemon.caller import A2A_VIA, Caller

    from .daemon_harness import hello

    async with in_process(tmp_path, hello("greeter"),
                          supervisor=f"audit_max_rows = {KEEP}") as d:
        assert d.sup.parts.refusals.refused("greeter", "connect", "203.0.113.9:443",
                                            task="t0")
        await d.dispatcher.call(Caller(via="socket"), m.TokensCreate(
            name="kept", scopes=["tasks:read"]))
        caller = Caller(via=A2A_VIA, name="a2a anonymous greeter", agents="greeter")
        for i in range(CALLS):
            await d.dispatcher.call(caller, m.TasksSubmit(
                agent="greeter", input=msgspec.Raw(msgspec.json.encode({"name": str(i)}))))
        rows = await d.services.store.audit_log_now(100_000)
        made = [r for r in rows if r[3] == "task.submitted"]
        assert KEEP <= len(made) <= KEEP + KEEP // 10, len(made)
        assert {msgspec.json.decode(r[4])["door"] for r in made} == {"A2A"}
        assert [r[3] for r in rows if r[3] == "tokens.create"] == ["tokens.create"]
        assert [msgspec.json.decode(r[4])["target"] for r in rows
                if r[3] == "boundary.refused"] == ["203.0.113.9:443"]
