"""An attacker's pass over issue 52's merged result (decisions 470-474): each test holds
one hole a hostile client or tenant found, against a real daemon through its public
surface (the gateway's HTTP, the control socket, the CLI)."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, in_process, running_daemon, shared_tmpdir
from .test_gateway_stateless import META, daemon, request, url
from .test_http_api import SOCKET, Api
from .test_identity import CONFIG as IDENTITY_CONFIG
from .test_identity import SECRET, add_chat, running, tenants_api, until
from .test_tokens import cli

__all__ = ["daemon"]  # the gateway's module fixture, shared


async def test_a_2025_session_holds_no_listen_stream_not_even_in_a_batch(
        daemon: Daemon) -> None:
    """subscriptions/listen is a 2026-07-28 request, held as a session of its own: sent
    inside a 2025-11-25 session (Mcp-Session-Id) it was held there, past every bound on
    sessions, so one POST of a batch of 60,000 listens grew the daemon by 258 MB (decision
    470). It is refused at once, as a method of no such session, the session usable."""
    h = {"Accept": "application/json, text/event-stream",
         "MCP-Protocol-Version": "2025-11-25"}
    listen = {"_meta": META, "notifications": {"toolsListChanged": True}}
    refused: dict[str, Any] = {"code": -32601, "message":
                               "method not found: subscriptions/listen (2026-07-28 only)"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url(daemon), headers=h, json=request(1, "initialize", {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "old", "version": "1"}})) as resp:
            assert resp.status == 200
            h["Mcp-Session-Id"] = resp.headers["Mcp-Session-Id"]
        async with http.post(url(daemon), headers=h, json={
                "jsonrpc": "2.0", "method": "notifications/initialized"}) as resp:
            assert resp.status == 202
        batch = [request(i, "subscriptions/listen", listen) for i in range(2, 200)]
        async with asyncio.timeout(30), http.post(url(daemon), headers=h,
                                                  json=batch) as resp:
            assert resp.status == 200
            answers = await resp.json()
        assert answers == [{"jsonrpc": "2.0", "id": i, "error": refused}
                           for i in range(2, 200)]
        async with asyncio.timeout(30), http.post(url(daemon), headers=h, json=request(
                200, "subscriptions/listen", listen)) as resp:
            assert (await resp.json())["error"] == refused
        gateway = daemon.json("mcp", "status")["gateway"]["http"]
        assert (gateway["sessions"], gateway["busy"]) == (1, 0)
        async with http.post(url(daemon), headers=h, json=request(
                201, "tools/list", {})) as resp:
            assert "sc__echo" in [t["name"] for t in (await resp.json())["result"]["tools"]]


SCHEDULED = f"""
[agents.chat]
command = ["{PY}", "{EXAMPLES / 'misbehave.py'}"]
env = {{ PYTHONPATH = "{ROOT}" }}
stop_timeout = 10.0
tenant = "acme"

[schedules.tick]
agent = "chat"
every = "1s"
input = {{ do = "echo", secret = "{SECRET}" }}
"""


@pytest.mark.deadline(120)
async def test_a_schedule_of_a_removed_agent_is_not_the_next_tenants(
        tmp_path: Path) -> None:
    """The file's schedule `tick` sends acme's `chat` its input (a secret) every second;
    acme removes `chat` and globex adds its own. Before decision 472 globex's `chat` was
    sent the schedule's input at each fire, and globex listed, paused and resumed
    `tick`: a schedule asked who holds its agent's name now. Its fires are refused, said
    in its last error, and it stays acme's: shown to acme, to globex as none there is."""
    async with in_process(tmp_path, SCHEDULED, IDENTITY_CONFIG) as d, \
            aiohttp.ClientSession() as http:
        api = await tenants_api(d, http)
        status, body, _ = await api.ask("DELETE", "/agents/chat", "acme")
        assert status == 200, body
        await add_chat(api, "globex")

        async def fires() -> int:
            listed = await d.dispatcher.call(SOCKET, "schedules.list", {})
            return int(listed.schedules[0].fires)

        fired = await fires()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await fires() < fired + 2:
            assert loop.time() < deadline, "tick never fired"
            await asyncio.sleep(0.1)
        status, body, _ = await api.ask("GET", "/tasks?agent=chat", "globex")
        assert (status, body["tasks"]) == (200, []), body
        status, body, _ = await api.ask("GET", "/schedules", "globex")
        assert (status, body["schedules"]) == (200, [])
        status, body, _ = await api.ask("POST", "/schedules/tick/pause", "globex")
        assert (status, body["detail"]) == (404, "no such schedule: tick"), body
        status, body, _ = await api.ask("GET", "/schedules", "acme")
        assert [(s["name"], s["tenant"]) for s in body["schedules"]] == [("tick", "acme")]
        rc, out, err = await cli(d, "logs", "corral", "--lines", "200")
        assert rc == 0, err
        assert ("schedule tick: agent chat refused the fire: no such agent: chat (tenant "
                "acme's was removed; the name is another tenant's now)") in out, out


RUN_AGENTS = "".join(f"""
[agents.{name}]
command = ["{PY}", "{EXAMPLES / 'misbehave.py'}"]
env = {{ PYTHONPATH = "{ROOT}" }}
stop_timeout = 10.0
tenant = "acme"
""" for name in ("gate", "chat"))


async def secret_run(api: Api, gate: Path, first: dict[str, Any]) -> str:
    """acme's run of workflow `wf`: step `a` (agent `gate`, with `first`'s keys) waits
    for the file gate; step `b` then sends `chat` the run's input, a secret. Its id, once
    `a` runs."""
    status, body, _ = await api.ask("POST", "/workflows", "acme", {"workflows": {"wf": {
        "steps": [{"name": "a", "agent": "gate", **first,
                   "input": {"do": "await", "path": str(gate)}},
                  {"name": "b", "agent": "chat", "input": {
                      "do": "echo", "secret": "$input.secret",
                      "after": "$steps.a.output"}}]}}})
    assert status == 200, body
    status, body, _ = await api.ask("POST", "/workflows/wf/runs", "acme", {
        "input": {"secret": SECRET}})
    assert status in (200, 202), body
    await until(api, "/tasks?agent=gate", "acme", running)
    return str(body["run_id"])


def ended(body: Any) -> bool:
    """A run's or task's record once it is no longer running."""
    return bool(body["status"] != "running")


@pytest.mark.deadline(120)
async def test_a_running_workflows_later_step_is_not_sent_to_the_next_holder_of_its_agent(
        tmp_path: Path) -> None:
    """acme's workflow `wf` waits at step `a` (its agent `gate`), then step `b` sends
    `chat` the run's input (a secret). While `a` waits, acme removes `chat` and globex
    adds its own: `b` must not run on globex's `chat`. A run checks whose its agents are
    when it starts only (WorkflowService.start); each later step's task is submitted to
    whoever holds the name then (runner.py's _outcome)."""
    gate = tmp_path / "open"
    async with in_process(tmp_path, RUN_AGENTS, IDENTITY_CONFIG) as d, \
            aiohttp.ClientSession() as http:
        api = await tenants_api(d, http)
        run_id = await secret_run(api, gate, {})
        status, body, _ = await api.ask("DELETE", "/agents/chat", "acme")
        assert status == 200, body
        await add_chat(api, "globex")
        gate.write_text("")
        body = await until(api, f"/runs/{run_id}", "acme", ended)
        # refused as acme's caller would be, and the run failed as by any failed step
        assert (body["status"], body["error"]) == ("failed", "step b: no such agent: chat")
        assert [(s["step"], s["status"], s["error"]) for s in body["steps"]] == [
            ("a", "succeeded", None), ("b", "failed", "no such agent: chat")]
        status, body, _ = await api.ask("GET", "/tasks?agent=chat", "globex")
        assert (status, body["tasks"]) == (200, []), body


@pytest.mark.deadline(150)
async def test_a_run_resumed_after_a_restart_sends_no_step_to_the_next_holder_of_its_agent(
        tmp_path: Path) -> None:
    """As above, with the daemon stopped while the run waits at step `a` (after the name
    changed hands) and started again: the run resumed from its rows submits `b` for its
    tenant too, and fails it rather than send globex's `chat` the secret (decision 481)."""
    gate = tmp_path / "open"
    tokens: dict[str, str] = {}
    agents = RUN_AGENTS.split("[agents.chat]")[0]  # gate; chat is added, so not restored
    async with in_process(tmp_path, agents, IDENTITY_CONFIG) as d, \
            aiohttp.ClientSession() as http:
        api = await tenants_api(d, http)
        tokens.update(api.tokens)
        await add_chat(api, "acme")
        run_id = await secret_run(api, gate, {"retries": 1})
        status, body, _ = await api.ask("DELETE", "/agents/chat", "acme")
        assert status == 200, body
        await add_chat(api, "globex")
    async with in_process(tmp_path, agents, IDENTITY_CONFIG) as d, \
            aiohttp.ClientSession() as http:
        api = Api(d, http)
        api.tokens.update(tokens)
        status, body, _ = await api.ask("GET", "/agents/chat", "globex")
        assert status == 200, body  # globex's, kept across the restart
        gate.write_text("")
        body = await until(api, f"/runs/{run_id}", "acme", ended)
        assert (body["status"], body["error"]) == ("failed", "step b: no such agent: chat"
                                                   ), body
        status, body, _ = await api.ask("GET", "/tasks?agent=chat", "globex")
        assert (status, body["tasks"]) == (200, []), body


# a router that names `chat` once the file the call's input names is there
ROUTER = """
import os, time
from corral.worker import run

def handle(task, ctx):
    while not os.path.exists(task["input"]["path"]):
        ctx.check_cancelled()
        time.sleep(0.01)
    return "chat"

run(handle)
"""


@pytest.mark.deadline(120)
async def test_a_team_calls_later_member_task_is_not_sent_to_the_next_holder_of_its_agent(
        tmp_path: Path) -> None:
    """acme's route team `tm` waits on its router, then sends its member `chat` the
    call's input (a secret). While the router waits, acme removes `chat` and globex adds
    its own: the member's task must not run on globex's `chat` (decision 481). A call
    checked its agents' tenants when it started only (TeamCalls._checked); each later
    step's task was submitted to whoever held the name then (teams/runner.py)."""
    gate = tmp_path / "open"
    router = tmp_path / "router.py"
    router.write_text(ROUTER)
    agents = RUN_AGENTS + f"""
[agents.router]
command = ["{PY}", "{router}"]
env = {{ PYTHONPATH = "{ROOT}" }}
stop_timeout = 10.0
tenant = "acme"
"""
    async with in_process(tmp_path, agents, IDENTITY_CONFIG) as d, \
            aiohttp.ClientSession() as http:
        api = await tenants_api(d, http)
        status, body, _ = await api.ask("POST", "/teams", "acme", {"teams": {"tm": {
            "mode": "route", "router": "router", "members": ["chat"]}}})
        assert (status, body) == (200, {"added": ["tm"]}), body
        status, body, _ = await api.ask("POST", "/tasks", "acme", {
            "agent": "tm", "input": {"path": str(gate), "secret": SECRET}})
        assert status in (200, 202), body
        call_id = body["task_id"]
        await until(api, "/tasks?agent=router", "acme", running)
        status, body, _ = await api.ask("DELETE", "/agents/chat", "acme")
        assert status == 200, body
        await add_chat(api, "globex")
        gate.write_text("")
        body = await until(api, f"/tasks/{call_id}", "acme", ended)
        # refused as acme's caller would be, and the call failed as by any failed member
        steps = [(s["step"], s["status"], s.get("error")) for s in body["progress"]["steps"]]
        assert (body["status"], steps) == ("failed", [
            ("router", "succeeded", None), ("member:chat", "failed", "no such agent: chat")]
            ), body
        status, body, _ = await api.ask("GET", "/tasks?agent=chat", "globex")
        assert (status, body["tasks"]) == (200, []), body


@pytest.mark.deadline(180)
async def test_removed_definitions_keep_a_bounded_history_per_tenant(tmp_path: Path) -> None:
    """A tenant's definitions are bounded while they exist (max_per_tenant), but a removed
    one's revisions were kept forever: adding and removing workflows under ever new names
    grew the state database by a revision of up to max_definition_bytes each, without
    bound (decision 473). A tenant keeps the history of its newest max_per_tenant removed
    names; an older one's goes, as if it had never been."""
    from corral.daemon.defcatalog import MAX_PER_TENANT

    from .deflife import tenant_tokens
    from .test_http_api import serving
    from .test_workflow_defs import step, tenant_agent

    fleet = (tenant_agent(tmp_path, "wa", "a") + tenant_agent(tmp_path, "wb", "b")
             + "[tenants.a]\n[tenants.b]\n")
    async with serving(tmp_path, fleet) as api:
        ask = await tenant_tokens(api)
        assert await ask("POST", "/workflows", "tb", {"workflows": {"theirs": step("wb", 1)}}
                         ) == (200, {"added": ["theirs"]})
        assert (await ask("DELETE", "/workflows/theirs", "tb"))[0] == 200
        for i in range(MAX_PER_TENANT + 2):
            assert await ask("POST", "/workflows", "ta", {"workflows": {
                f"w{i}": step("wa", i)}}) == (200, {"added": [f"w{i}"]})
            assert (await ask("DELETE", f"/workflows/w{i}", "ta"))[0] == 200
        for i in (0, 1):
            status, body = await ask("GET", f"/workflows/w{i}/history", "ta")
            assert (status, body["detail"]) == (404, f"no such workflow: w{i}")
        status, body = await ask("GET", "/workflows/w2/history", "ta")
        assert (status, [r["change"] for r in body["revisions"]]) == (
            200, ["created", "removed"]), body
        # another tenant's removed history is not its to lose
        status, body = await ask("GET", "/workflows/theirs/history", "tb")
        assert status == 200, body


def test_a_rotated_copy_is_gzipped_through_no_link_planted_beside_it() -> None:
    """A tenant's user owns its log directory: a link it plants where a rotated copy is
    gzipped (NAME.log.1.gz.part) made the daemon (root) write the gzip over the file it
    names (decision 474). The link is taken away, not followed: the copy is gzipped, the
    file the link named untouched."""
    from .test_agent_log_files import TICKER
    from .test_daemon_cli import wait_until

    tmp = shared_tmpdir()
    victim = tmp / "victim"
    victim.write_text("precious\n")
    agents = (f'[agents.ticker]\ncommand = ["sh", "-c", {json.dumps(TICKER)}]\n'
              'protocol = "none"\n')
    with running_daemon(tmp, agents, extra="log_compress = true") as d:
        logs = d.state / "logs"
        wait_until(lambda: "tick 1" in (logs / "ticker.log").read_text(), what="ticks")
        (logs / "ticker.log.1.gz.part").symlink_to(victim)
        r = d.cli("logs", "--rotate", "ticker")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: (logs / "ticker.log.1.gz").is_file()
                   and not (logs / "ticker.log.1").exists(), what="the gzipped copy")
        assert "tick 1" in gzip.decompress((logs / "ticker.log.1.gz").read_bytes()).decode()
        assert not (logs / "ticker.log.1.gz").is_symlink()
        assert victim.read_text() == "precious\n"
