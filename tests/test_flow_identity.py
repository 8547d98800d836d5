"""A name is not an identity, for workflows and teams (issue 52, item 1; decision 443):
after tenant acme removes its agent `chat` and globex adds its own `chat`, globex sees
none of acme's runs, team calls, workflows or teams — over HTTP, the dashboard's API and
the control socket, and after a restart — while acme still sees its own and the operator
sees all, each with its tenant. A tenant never reads the operator's old revisions that
named another tenant's agents."""

from __future__ import annotations

import asyncio
import json
import shutil
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import NOBODY_PY, nobody_reason
from .daemon_harness import PY, in_process, shared_tmpdir
from .deflife import unseen
from .test_http_api import SOCKET, Api
from .test_tenant_privilege import CLIENT
from .test_ui import page

ROOT = Path(__file__).resolve().parent.parent
SCOPES = ["agents:write", "tasks:run", "tasks:read"]
# globex's socket peers: the group nobody is in (the socket part runs as nobody)
TENANTS = textwrap.dedent("""
    [tenants.acme]
    [tenants.globex]
    group = "nogroup"
    [http]
    listen = "127.0.0.1:0"
""")
CHAT = {"command": [PY, str(ROOT / "examples" / "hello.py")],
        "env": {"PYTHONPATH": str(ROOT)}, "backoff_initial": 0.05}


@asynccontextmanager
async def daemon(tmp: Path) -> AsyncIterator[Api]:
    import aiohttp

    async with in_process(tmp, TENANTS) as d, aiohttp.ClientSession() as session:
        yield Api(d, session)


async def tokens(api: Api) -> None:
    """acme's and globex's tokens, globex's for the dashboard (a login is admin's), the
    operator's."""
    for name, tenant, scopes in (("acme", "acme", SCOPES), ("globex", "globex", SCOPES),
                                 ("globex-ui", "globex", ["admin"])):
        made = await api.d.dispatcher.call(SOCKET, "tokens.create", {
            "name": name, "scopes": scopes, "tenant": tenant})
        api.tokens[name] = made.token
    await api.token("op", "admin")


async def ask(api: Api, verb: str, path: str, token: str, body: Any = None
              ) -> tuple[int, Any]:
    status, value, _ = await api.ask(verb, path, token, body=body)
    return status, value


async def on_socket_as_globex(sock: Path, calls: list[tuple[str, Any]]) -> list[Any]:
    """The answers to `calls` from the control socket, asked by a peer in globex's group
    (nobody, nogroup)."""
    out, err, code = await child("setpriv", "--reuid=nobody", "--regid=nogroup",
                                 "--clear-groups", NOBODY_PY, "-c", CLIENT, str(sock),
                                 json.dumps(calls), cwd="/")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


async def child(*argv: str, **how: Any) -> tuple[str, str, int]:
    """A program beside the daemon in this process: an asyncio child, the test's own
    (conftest: the daemon's containment spares it)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, **how)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return out.decode(), err.decode(), proc.returncode


async def globex_sees_none_of_acmes(api: Api, run_id: str, call_id: str) -> None:
    """Every way globex's token names acme's run, call, workflow and team answers as
    if there were none; its listings leave them out."""
    await unseen(lambda v, p, t, b=None: ask(api, v, p, t, b), "workflow", "wf", "globex",
                 {"timeout": 5}, [("POST", "/workflows/wf/runs", {})])
    await unseen(lambda v, p, t, b=None: ask(api, v, p, t, b), "team", "tm", "globex",
                 {"description": "x"})
    for verb, path, detail in (
            ("GET", f"/runs/{run_id}", f"no such run: {run_id}"),
            # asked before what the params say of it: not its steps' names
            ("GET", f"/runs/{run_id}?step=nope", f"no such run: {run_id}"),
            ("POST", f"/runs/{run_id}/cancel", f"no such run: {run_id}"),
            ("GET", f"/tasks/{call_id}?input=true", f"no such task: {call_id}"),
            ("POST", f"/tasks/{call_id}/cancel", f"no such task: {call_id}")):
        status, body = await ask(api, verb, path, "globex")
        assert (status, body["detail"]) == (404, detail), path
    for path, key in (("/workflows", "workflows"), ("/teams", "teams"), ("/runs", "runs")):
        status, body = await ask(api, "GET", path, "globex")
        assert (status, body[key]) == (200, []), path
    status, body = await ask(api, "POST", "/tasks", "globex", {"agent": "tm", "input": 1})
    assert (status, body["detail"]) == (404, "no such agent: tm (agents: chat)")
    status, body = await ask(api, "GET", "/tasks?agent=tm", "globex")
    assert status == 404, body
    status, body = await ask(api, "GET", "/tasks?agent=chat", "globex")
    assert call_id not in str(body)


@pytest.mark.deadline(240)
async def test_a_tenant_taking_a_freed_name_gets_none_of_its_runs_calls_or_definitions(
        ) -> None:
    tmp = shared_tmpdir()  # its socket reached by nobody (globex's peer)
    async with daemon(tmp) as api:
        await tokens(api)
        # acme's agent, workflow and team; a run and a call, their input its secret
        assert await ask(api, "POST", "/agents", "acme", {"agents": {"chat": CHAT}}) == (
            200, {"added": ["chat"]})
        assert await ask(api, "POST", "/workflows", "acme", {"workflows": {"wf": {
            "steps": [{"name": "s", "agent": "chat"}]}}}) == (200, {"added": ["wf"]})
        assert await ask(api, "POST", "/teams", "acme", {"teams": {"tm": {
            "mode": "broadcast", "members": ["chat"]}}}) == (200, {"added": ["tm"]})
        status, run = await ask(api, "POST", "/workflows/wf/runs?wait=60", "acme",
                                {"input": {"name": "acme-secret"}})
        assert (status, run["status"], run["tenant"]) == (200, "succeeded", "acme"), run
        status, call = await ask(api, "POST", "/tasks?wait=60", "acme",
                                 {"agent": "tm", "input": {"name": "acme-secret"}})
        assert (status, call["status"]) == (200, "succeeded"), call
        run_id, call_id = run["run_id"], call["task_id"]

        # acme removes its agent; globex adds its own of that name
        assert await ask(api, "DELETE", "/agents/chat", "acme") == (
            200, {"removed": ["chat"]})
        assert await ask(api, "POST", "/agents", "globex", {"agents": {"chat": CHAT}}) == (
            200, {"added": ["chat"]})
        await globex_sees_none_of_acmes(api, run_id, call_id)

        # the dashboard's API, as a session of globex's token
        status, link, _ = await api.ask("POST", "/ui/login", "globex-ui")
        assert status == 200, link
        async with page(api.d) as p:
            await p.login(link["url"])
            status, _, body = await p.call("runs.list", {})
            assert (status, body["runs"]) == (200, [])
            status, _, body = await p.call("runs.get", {"run_id": run_id})
            assert (status, body["detail"]) == (404, f"no such run: {run_id}")
            status, _, body = await p.call("tasks.get", {"task_id": call_id})
            assert (status, body["detail"]) == (404, f"no such task: {call_id}")

        # the control socket, as a peer of globex's group
        if nobody_reason() is None and shutil.which("setpriv"):
            said = await on_socket_as_globex(tmp / "corral.sock", [
                ("runs.get", {"run_id": run_id}), ("runs.list", {}),
                ("workflows.describe", {"name": "wf"}), ("workflows.history", {"name": "wf"}),
                ("teams.describe", {"name": "tm"}), ("tasks.get", {"task_id": call_id}),
                ("workflows.run", {"name": "wf"}), ("teams.remove", {"names": ["tm"]})])
            assert [a.get("error", {}).get("message") for a in said] == [
                f"no such run: {run_id}", None, "no such workflow: wf",
                "no such workflow: wf", "no such team: tm", f"no such task: {call_id}",
                "no such workflow: wf", "no such team: tm"], said
            assert said[1]["result"]["runs"] == []

        # acme still sees its own, and cannot run them on globex's agent
        status, body = await ask(api, "GET", f"/runs/{run_id}", "acme")
        assert (status, body["tenant"], body["input"]) == (200, "acme",
                                                            {"name": "acme-secret"})
        status, body = await ask(api, "GET", "/workflows/wf", "acme")
        assert (status, body["tenant"]) == (200, "acme")
        status, body = await ask(api, "POST", "/workflows/wf/runs", "acme", {})
        assert (status, body["detail"]) == (404, "workflow wf, step s: no such agent: chat")
        status, body = await ask(api, "GET", f"/tasks/{call_id}", "acme")
        assert (status, body["status"]) == (200, "succeeded"), body
        status, body = await ask(api, "POST", "/tasks", "acme", {"agent": "tm", "input": 1})
        # (globex's agent is not named to acme as another tenant's)
        assert (status, body["detail"]) == (400, "team tm: member chat: no such agent")
        # the operator sees every record, with its tenant
        status, body = await ask(api, "GET", "/runs", "op")
        assert [(r["run_id"], r["tenant"]) for r in body["runs"]] == [(run_id, "acme")]
        status, body = await ask(api, "GET", "/workflows", "op")
        assert [(w["name"], w["tenant"]) for w in body["workflows"]] == [("wf", "acme")]
        status, body = await ask(api, "GET", "/teams", "op")
        assert [(t["name"], t["tenant"]) for t in body["teams"]] == [("tm", "acme")]
        out, err, code = await child(PY, "-m", "corral", "--socket", str(tmp / "corral.sock"),
                                     "run-status", run_id, "--json",
                                     env={"PYTHONPATH": str(ROOT)})
        assert code == 0, err
        assert json.loads(out)["tenant"] == "acme"
        # the CLI's tables name each record's tenant (the run's before its error, the
        # revision's before its change)
        for args, first, last in ((("runs",), [run_id, "wf", "succeeded"], ["acme"]),
                                  (("workflows", "history", "wf"), ["*", "1"],
                                   ["token", "acme", "acme", "created"])):
            out, err, code = await child(PY, "-m", "corral", "--socket",
                                         str(tmp / "corral.sock"), *args,
                                         env={"PYTHONPATH": str(ROOT)})
            words = out.splitlines()[1].split()
            assert (code, words[:len(first)], words[-len(last):]) == (0, first, last), out

    # and after a restart, the same
    async with daemon(tmp) as api:
        api.tokens.update({"globex": "", "acme": ""})
        await tokens_again(api)
        await globex_sees_none_of_acmes(api, run_id, call_id)
        status, body = await ask(api, "GET", f"/runs/{run_id}", "acme")
        assert (status, body["tenant"]) == (200, "acme")


async def tokens_again(api: Api) -> None:
    """New tokens of the same tenants (the secrets of the first are not kept here)."""
    for name in ("acme", "globex"):
        made = await api.d.dispatcher.call(SOCKET, "tokens.create", {
            "name": f"{name}2", "scopes": SCOPES, "tenant": name})
        api.tokens[name] = made.token
    await api.token("op2", "admin")
    api.tokens["op"] = api.tokens["op2"]


@pytest.mark.deadline(120)
async def test_a_tenant_never_reads_the_operators_revisions_of_another_tenants_agents(
        tmp_path: Path) -> None:
    async with daemon(tmp_path) as api:
        await tokens(api)
        for tenant in ("acme", "globex"):
            status, body = await ask(api, "POST", "/agents", "op", {"agents": {
                f"{tenant}-a": {**CHAT, "tenant": tenant}}})
            assert status == 200, body
        # the operator's workflow and team of globex's agent, then moved to acme's
        for kind, first, then in (
                ("workflows", {"steps": [{"name": "s", "agent": "globex-a",
                                          "input": {"key": "globex-private"}}]},
                 {"steps": [{"name": "s", "agent": "acme-a"}]}),
                ("teams", {"mode": "broadcast", "members": ["globex-a"],
                           "description": "globex-private"},
                 {"members": ["acme-a"], "description": None})):
            assert await ask(api, "POST", f"/{kind}", "op", {kind: {"shared": first}}) == (
                200, {"added": ["shared"]})
            status, body = await ask(api, "PATCH", f"/{kind}/shared", "op", {"set": then})
            assert (status, body["revision"]) == (200, 2), body
            status, body = await ask(api, "GET", f"/{kind}/shared/history", "acme")
            assert status == 200, body
            assert [(r["revision"], r["tenant"]) for r in body["revisions"]] == [(2, "acme")]
            assert "globex" not in json.dumps(body)
            status, body = await ask(api, "POST", f"/{kind}/shared/rollback", "acme",
                                     {"revision": 1})
            assert (status, body["detail"]) == (
                404, f"no revision 1 of {kind[:-1]} shared (its revisions kept: 2..2; see "
                     f"`corral {kind} history shared`)")
            # globex: the definition is acme's now, its own old revision no door to it
            status, body = await ask(api, "GET", f"/{kind}/shared", "globex")
            assert (status, body["detail"]) == (404, f"no such {kind[:-1]}: shared")
            # the operator reads the whole past, each revision's tenant beside it
            status, body = await ask(api, "GET", f"/{kind}/shared/history", "op")
            assert [(r["revision"], r["tenant"]) for r in body["revisions"]] == [
                (1, "globex"), (2, "acme")]
            assert (await ask(api, "DELETE", f"/{kind}/shared", "op"))[0] == 200


