"""A name is not an identity (issue 52, item 1; DESIGN 20; decision 436): tenant acme runs
agent `chat` (tasks with inputs and outputs, their traces and steps, its revisions, its
log, its usage against its budget), then `chat` is removed (by acme, or by the operator)
and tenant globex adds a `chat` of its own. globex is shown nothing acme left — over
HTTP, the control socket (a peer in globex's Unix group), the CLI run as that peer, and
the dashboard's API — and after a restart of the daemon neither; its `chat` starts at
revision 1. acme still reads its own records; the operator reads every one, with its
tenant.

Against the real daemon in this process; the socket peer and the CLI run as `nobody` in
`nogroup` (skipped where there is no such user)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sysconfig
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.daemon.daemon import Daemon
from corral.daemon.tokens import tokens_of
from corral.supervisor import State

from .conftest import EXAMPLES, NOBODY_PY, ROOT, SPARED, nobody_reason
from .daemon_harness import PY, in_process, problem, shared_tmpdir
from .test_http_api import SOCKET, Api
from .test_tenants import RAW_CLIENT
from .test_ui import login_link, page

SECRET = "acme-private-4711"
SCOPES = ["agents:read", "agents:write", "tasks:run", "tasks:read", "logs:read",
          "metrics:read"]
CHAT = {"command": [PY, str(EXAMPLES / "misbehave.py")], "env": {"PYTHONPATH": str(ROOT)},
        "stop_timeout": 10.0}
CONFIG = """
[tenants.acme]
[tenants.globex]
group = "nogroup"
[tracing]
export_interval = 0.05
[http]
listen = "127.0.0.1:0"
history_interval = 0.2
"""


@contextlib.asynccontextmanager
async def daemon(tmp: Path) -> AsyncIterator[Api]:
    """The daemon of the two tenants (the same state across restarts), and an HTTP client
    holding acme's and globex's tokens (made once, kept in the state database)."""
    async with in_process(tmp, "", CONFIG) as d, aiohttp.ClientSession() as http:
        made = (tmp / "tokens.json")
        if not made.exists():
            made.write_text(json.dumps((await tenants_api(d, http)).tokens))
        api = Api(d, http)
        api.tokens = json.loads(made.read_text())
        yield api


async def tenants_api(d: Daemon, http: aiohttp.ClientSession) -> Api:
    """An HTTP client of d holding a new token of acme's and one of globex's."""
    api = Api(d, http)
    for tenant in ("acme", "globex"):
        got = await d.dispatcher.call(SOCKET, "tokens.create", {
            "name": tenant, "scopes": SCOPES, "tenant": tenant})
        api.tokens[tenant] = got.token
    return api


async def until(api: Api, path: str, tenant: str, done: Callable[[Any], bool]) -> Any:
    """GET path as tenant until done(body) (30 s at most); that body."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        status, body, _ = await api.ask("GET", path, tenant)
        if status == 200 and done(body):
            return body
        assert loop.time() < deadline, (path, status, body)
        await asyncio.sleep(0.1)


def running(body: Any) -> bool:
    """A task list with a running task."""
    return any(t["status"] == "running" for t in body["tasks"])


async def add_chat(api: Api, tenant: str) -> None:
    status, body, _ = await api.ask("POST", "/agents", tenant, {"agents": {"chat": CHAT}})
    assert status == 200, body
    await api.d.sup.wait_state("chat", State.READY, timeout=30)


async def acmes_past(api: Api) -> list[str]:
    """acme's `chat`, a task of it (input and output holding the secret, traced), one that
    reports usage (its budget's), and a change of its spec (revision 2): the ids of the
    tasks."""
    await add_chat(api, "acme")
    ids = []
    for task in ({"do": "echo", "secret": SECRET},
                 {"do": "usage", "reports": [{"input_tokens": 400, "output_tokens": 300}]}):
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "acme", {
            "agent": "chat", "input": task})
        assert (status, body["status"]) == (200, "succeeded"), body
        ids.append(body["task_id"])
    task_id = ids[0]
    status, body, _ = await api.ask("PATCH", "/agents/chat", "acme", {
        "set": {"config": {"model": SECRET}}})
    assert status == 200, body
    await api.d.sup.wait_state("chat", State.READY, timeout=30)
    # its figures are in the metrics history (a sample every history_interval)
    deadline = asyncio.get_running_loop().time() + 30
    while await executions(api, "acme") < 2:
        assert asyncio.get_running_loop().time() < deadline, "acme's chat never sampled"
        await asyncio.sleep(0.1)
    # its trace is in the store (a read waits for what the engine buffered)
    traced = await api.d.dispatcher.call(SOCKET, "traces.get", {"task_id": task_id})
    assert traced.spans
    return ids


async def executions(api: Api, tenant: str) -> int:
    """The tasks `chat` finished, as the tenant's metrics history of it tells."""
    status, body, _ = await api.ask(
        "GET", "/metrics/history?agent=chat&since=3600&resolution=raw", tenant)
    assert status == 200, body
    return sum(s["executions"] for s in body["samples"])


def not_found(task_id: str) -> dict[str, Any]:
    return problem(404, "not found", f"no such task: {task_id}", jsonrpc.NOT_FOUND)


async def globex_sees_none_of_it(api: Api, ids: list[str]) -> None:
    """Over HTTP: globex lists none of acme's tasks, reads none (nor its input, trace or
    a page from it), cancels none; its `chat`'s history, log and budget are its own."""
    task_id = ids[0]
    for path in ("/tasks", "/tasks?agent=chat", "/tasks?status=succeeded"):
        status, body, _ = await api.ask("GET", path, "globex")
        assert (status, body) == (200, {"tasks": []}), body
    ghost = "01930000-0000-7000-8000-000000000000"
    for path in (f"/tasks/{task_id}?input=true", f"/tasks/{task_id}",
                 f"/tasks/{task_id}/trace"):
        status, body, _ = await api.ask("GET", path, "globex")
        assert (status, body) == (404, not_found(task_id)), (path, body)
        # word for word as a task that never was
        status, other, _ = await api.ask("GET", path.replace(task_id, ghost), "globex")
        assert other == not_found(ghost), other
    status, body, _ = await api.ask("POST", f"/tasks/{task_id}/cancel", "globex")
    assert (status, body) == (404, not_found(task_id)), body
    status, body, _ = await api.ask("GET", f"/tasks?before={task_id}", "globex")
    assert status == 404 and body["detail"].startswith(f"no such task: {task_id}"), body
    status, body, _ = await api.ask("GET", "/agents/chat/history", "globex")
    assert status == 200, body
    assert [(r["revision"], r["change"]) for r in body["revisions"]] == [(1, "created")]
    assert body["current"] == 1 and SECRET not in json.dumps(body)
    status, body, _ = await api.ask("GET", "/agents/chat/logs?lines=1000", "globex")
    assert status == 200 and SECRET not in json.dumps(body), body
    # nor its metrics history (acme's chat ran 2 tasks, globex's none)
    assert await executions(api, "globex") == 0
    # acme's chat's usage is no spending of globex's chat (a restart reads it back)
    stats = await api.d.dispatcher.call(SOCKET, "stats.get", {})
    assert stats.agents["chat"].usage is None, stats.agents["chat"].usage


async def acme_and_the_operator_still_see_it(api: Api, ids: list[str]) -> None:
    task_id = ids[0]
    status, body, _ = await api.ask("GET", f"/tasks/{task_id}?input=true", "acme")
    assert status == 200, body
    assert (body["input"]["secret"], body["output"]["secret"]) == (SECRET, SECRET)
    assert body["tenant"] == "acme"
    status, body, _ = await api.ask("GET", "/tasks", "acme")
    assert [t["task_id"] for t in body["tasks"]] == ids
    status, body, _ = await api.ask("GET", f"/tasks/{task_id}/trace", "acme")
    assert status == 200 and body["spans"], body
    seen = await api.d.dispatcher.call(SOCKET, "tasks.get", {"task_id": task_id})
    assert (seen.agent, seen.tenant) == ("chat", "acme")
    listed = await api.d.dispatcher.call(SOCKET, "tasks.list", {})
    assert [(t.task_id, t.tenant) for t in listed.tasks] == [(i, "acme") for i in ids]


async def as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A program run as `nobody` in `nogroup`: a peer of globex's on the socket, spared
    by the daemon's containment as the test's own child (conftest.SPARED), and waited for
    in a thread (the daemon answering it runs on this loop)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            user="nobody", group="nogroup", extra_groups=[], cwd="/")
    SPARED.add(proc.pid)
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


async def on_the_socket(d: Daemon, method: str, params: dict[str, Any]
                        ) -> dict[str, Any]:
    r = await as_nobody([NOBODY_PY, "-c", RAW_CLIENT, str(d.services.socket_path), method,
                   json.dumps(params)])
    assert r.returncode == 0, r.stderr
    answer: dict[str, Any] = json.loads(r.stdout)
    return answer


async def corral_cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as globex's socket peer (the system's Python, corral's and its packages'
    directories on its path: nobody may not run the suite's interpreter)."""
    path = f"{ROOT}:{sysconfig.get_paths()['purelib']}"
    return await as_nobody(["/usr/bin/env", f"PYTHONPATH={path}", NOBODY_PY, "-m", "corral",
                      "--socket", str(d.services.socket_path), *args])


async def globex_peer_sees_none_of_it(d: Daemon, task_id: str) -> None:
    """The socket (a peer in globex's group) and the CLI run as that peer."""
    listed = await on_the_socket(d, "tasks.list", {})
    assert "result" in listed and task_id not in json.dumps(listed), listed
    for method, params in (("tasks.get", {"task_id": task_id, "input": True}),
                           ("traces.get", {"task_id": task_id})):
        got = await on_the_socket(d, method, params)
        assert got["error"] == {"code": jsonrpc.NOT_FOUND,
                                "message": f"no such task: {task_id}"}, (method, got)
    got = await on_the_socket(d, "agents.history", {"name": "chat"})
    assert [r["revision"] for r in got["result"]["revisions"]] == [1], got
    r = await corral_cli(d, "tasks", "--json")
    assert r.returncode == 0, r.stderr
    assert task_id not in r.stdout and SECRET not in r.stdout
    for args in (("task", task_id, "--input"), ("trace", task_id)):
        r = await corral_cli(d, *args)
        assert (r.returncode, r.stdout, r.stderr) == (
            1, "", f"corral: no such task: {task_id}\n"), (args, r)
    r = await corral_cli(d, "history", "chat")
    assert r.returncode == 0 and SECRET not in r.stdout, r


async def globex_dashboard_sees_none_of_it(d: Daemon, task_id: str) -> None:
    # a dashboard link of globex's, asked for by a token of globex's (`admin` asks)
    _, made = await tokens_of(d.services.store).create("globex-ui", [*SCOPES, "admin"],
                                                       None, None, "globex")
    caller = Caller(via="http", token="globex-ui", tenant="globex", scopes=made.scopes)
    async with page(d) as p:
        await p.login((await login_link(d, caller)).url)
        status, _, body = await p.call("tasks.list")
        assert status == 200 and task_id not in json.dumps(body), body
        for method, params in (("tasks.get", {"task_id": task_id, "input": True}),
                               ("traces.get", {"task_id": task_id})):
            status, _, body = await p.call(method, params)
            assert (status, body["detail"]) == (404, f"no such task: {task_id}"), body
        status, _, body = await p.call("agents.history", {"name": "chat"})
        assert [r["revision"] for r in body["revisions"]] == [1], body


needs_nobody = pytest.mark.skipif(nobody_reason() is not None, reason=nobody_reason() or "")


@needs_nobody
@pytest.mark.deadline(240)
async def test_a_tenant_taking_a_freed_name_is_shown_nothing_its_earlier_holder_left(
        ) -> None:
    tmp = shared_tmpdir()
    try:
        async with daemon(tmp) as api:
            ids = await acmes_past(api)
            assert (await api.ask("DELETE", "/agents/chat", "acme"))[0] == 200
            await add_chat(api, "globex")
            await globex_sees_none_of_it(api, ids)
            await globex_peer_sees_none_of_it(api.d, ids[0])
            await globex_dashboard_sees_none_of_it(api.d, ids[0])
            await acme_and_the_operator_still_see_it(api, ids)
        # and so after a restart: the records are read back from the state database
        async with daemon(tmp) as api:
            await globex_sees_none_of_it(api, ids)
            await globex_peer_sees_none_of_it(api.d, ids[0])
            await acme_and_the_operator_still_see_it(api, ids)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(180)
async def test_a_name_the_operator_freed_is_as_new_to_the_tenant_that_takes_it(
        tmp_path: Path) -> None:
    """The operator removes acme's `chat` (the CLI as root): globex's `chat` is as new as
    in the test above, over HTTP."""
    from .test_tokens import cli

    async with daemon(tmp_path) as api:
        ids = await acmes_past(api)
        rc, out, err = await cli(api.d, "remove", "chat")
        assert rc == 0, err
        await add_chat(api, "globex")
        await globex_sees_none_of_it(api, ids)
        await acme_and_the_operator_still_see_it(api, ids)
        # the operator reads acme's past with its tenant, in the CLI's JSON too
        rc, out, err = await cli(api.d, "tasks", "--json")
        assert rc == 0, err
        assert [(t["task_id"], t["tenant"]) for t in msgspec.json.decode(out)["tasks"]] == [
            (i, "acme") for i in ids]


CHAT_FILE = f"""
[agents.chat]
command = ["{PY}", "{EXAMPLES / 'misbehave.py'}"]
env = {{ PYTHONPATH = "{ROOT}" }}
stop_timeout = 10.0
tenant = "acme"
"""


@pytest.mark.deadline(180)
async def test_an_agent_given_another_tenant_is_another_agent(tmp_path: Path) -> None:
    """The operator gives `chat` to globex (decision 438): in the config file, a reload
    removes acme's `chat` — its queued task cancelled, never run by globex's — and adds
    globex's, at its revision 1; in place (`agents.update` of a runtime agent) it is
    refused, naming the key, and nothing changes."""
    async with in_process(tmp_path, CHAT_FILE, CONFIG) as d, \
            aiohttp.ClientSession() as http:
        api = await tenants_api(d, http)
        status, body, _ = await api.ask("POST", "/tasks", "acme", {
            "agent": "chat", "input": {"do": "echo", "secret": SECRET}, "delay": 3600})
        assert status == 202, body
        waiting = body["task_id"]
        config = tmp_path / "corral.toml"
        config.write_text(config.read_text().replace('tenant = "acme"',
                                                     'tenant = "globex"'))
        got = await d.dispatcher.call(SOCKET, "config.reload", {})
        assert (got.added, got.removed, got.changed) == (["chat"], ["chat"], [])
        await d.sup.wait_state("chat", State.READY, timeout=30)
        assert d.sup.agents["chat"].spec.tenant == "globex"
        status, body, _ = await api.ask("GET", f"/tasks/{waiting}", "acme")
        assert (body["status"], body["error"]["message"]) == (
            "cancelled", "agent chat was removed"), body
        await globex_sees_none_of_it(api, [waiting])

        # in place: refused, nothing changed
        status, body, _ = await api.ask("POST", "/agents", "acme", {"agents": {"rt": CHAT}})
        assert status == 200, body
        with pytest.raises(jsonrpc.RpcError) as refused:
            await d.dispatcher.call(SOCKET, "agents.update", {
                "name": "rt", "set": {"tenant": "globex"}})
        assert (refused.value.code, refused.value.message) == (
            jsonrpc.CONFLICT, "agents.update: agents.rt.tenant: rt is tenant acme's and "
                              "stays so; remove it and add an agent of tenant globex; "
                              "nothing changed")
        assert d.sup.agents["rt"].spec.tenant == "acme"
        history = await d.dispatcher.call(SOCKET, "agents.history", {"name": "rt"})
        assert [r.revision for r in history.revisions] == [1]
