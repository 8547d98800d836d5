"""Workflows changed at runtime (issue 40): added, changed, removed and rolled back over
HTTP and the CLI, each change a revision kept in the state database and audited; a
tenant's token sees and changes only its own; a run keeps the revision it started on;
the next daemon restores them; the Python API adds one as `workflows add` does."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor.workflows import WorkflowSpec

from .daemon_harness import Daemon
from .deflife import (
    audited,
    cli_added_once,
    cli_history_of_three,
    lifes_changes,
    operators_change_rolled_back,
    refused_on_a_full_disk,
    rolled_back_removed_restored,
    tenant_tokens,
    the_files_own,
    unseen,
)
from .test_http_api import SOCKET, serving
from .test_workflows import agent_toml, settled, whole


def step(agent: str, v: int, sleep: float = 0) -> dict[str, Any]:
    return {"steps": [{"name": "s", "agent": agent,
                       "input": {"op": "echo", "v": v, "sleep": sleep}}]}


def tenant_agent(tmp_path: Path, name: str, tenant: str) -> str:
    return agent_toml(tmp_path, name, replicas=1) + f'tenant = "{tenant}"\n'


CFG = """
[workflows.cfg]
[[workflows.cfg.steps]]
name = "s"
agent = "wa"
"""


@pytest.mark.deadline(180)
async def test_runtime_workflows_over_http_with_revisions_and_tenants(
        tmp_path: Path) -> None:
    fleet = (tenant_agent(tmp_path, "wa", "a") + tenant_agent(tmp_path, "wb", "b")
             + "[tenants.a]\n[tenants.b]\n" + CFG)
    async with serving(tmp_path, fleet) as api:
        ask = await tenant_tokens(api)

        # added by tenant a: its own agents only
        assert await ask("POST", "/workflows", "ta", {"workflows": {"greet": step("wa", 1)}}
                         ) == (200, {"added": ["greet"]})
        status, body = await ask("POST", "/workflows", "ta",
                                 {"workflows": {"other": step("wb", 1)}})
        # (a step naming an agent there is not, for the caller: a 404, not a 400)
        assert (status, body["detail"]) == (
            404, "workflows.add: workflow other, step s: no such agent: wb")
        status, body = await ask("POST", "/workflows", "ta", {"workflows": {
            "bad": {"steps": [{"name": "s", "agent": "wa", "concurrency": 0}]}}})
        assert (status, body["detail"]) == (400, "workflows.add: workflows.bad.steps[0]."
                                                 "concurrency: Expected `int` >= 1")
        # tenant b sees none of it, and cannot take its name
        status, body = await ask("GET", "/workflows", "tb")
        assert (status, body["workflows"]) == (200, [])
        await unseen(ask, "workflow", "greet", "tb", {"timeout": 5},
                     [("POST", "/workflows/greet/runs", {})])
        status, body = await ask("POST", "/workflows", "tb",
                                 {"workflows": {"greet": step("wb", 1)}})
        assert (status, body["detail"]) == (409, "workflow greet already exists")
        status, body = await ask("GET", "/workflows", "ta")
        assert [w["name"] for w in body["workflows"]] == ["cfg", "greet"]

        # a run keeps the revision it started on across a change under it
        status, first = await ask("POST", "/workflows/greet/runs", "ta", {"input": None})
        assert (status, first["revision"]) == (200, 1), first
        status, body = await ask("PATCH", "/workflows/greet", "ta",
                                 {"set": {"steps": step("wa", 2)["steps"]}})
        assert (status, body) == (200, {"name": "greet", "revision": 2,
                                        "change": "steps changed"})
        status, ran = await ask("GET", f"/runs/{first['run_id']}?wait=60", "ta")
        assert (ran["status"], ran["revision"], ran["output"]["v"]) == ("succeeded", 1, 1)
        status, ran = await ask("POST", "/workflows/greet/runs?wait=60", "ta", {})
        assert (ran["status"], ran["revision"], ran["output"]["v"]) == ("succeeded", 2, 2)

        # history, rollback, remove, and back again; the operator's change
        await rolled_back_removed_restored(ask, "workflow", "greet", "ta", "steps changed",
                                           ("runtime", 3, "a", ["wa"], step("wa", 1)))
        await operators_change_rolled_back(ask, "workflow", "greet", "ta")

        # the config file's workflows are the file's
        await the_files_own(ask, "workflow", "cfg", {"timeout": 5})
        status, body = await ask("GET", "/workflows/cfg", "op")
        assert (body["source"], body["revision"], body["definition"]) == (
            "config", None, {"steps": [{"name": "s", "agent": "wa", "concurrency": 8}],
                             "description": ""})

        # every change audited, with the caller's tenant
        changes = lifes_changes("workflow")
        assert await audited(api, "workflow", len(changes)) == changes

        # the Python API: as `workflows add`, kept and revisioned
        wf = api.d.services.workflows
        assert await wf.add_workflow("py", step("wa", 7)) == 1
        assert wf.definitions["py"].agents == ["wa"]
        await wf.remove_workflow("py")
        assert "py" not in wf.definitions
        spec = msgspec.convert(step("wa", 8), WorkflowSpec)
        assert await wf.add_workflow("py", spec) == 3  # created, removed, created
        ran = await api.d.dispatcher.call(SOCKET, "workflows.run", {"name": "py",
                                                                     "wait": 60})
        assert (ran.status, ran.output["v"], ran.revision) == ("succeeded", 8, 3)


WF_FILE = """
[workflows.rt]
description = "added at runtime"
[[workflows.rt.steps]]
name = "one"
agent = "wf"
input = { op = "echo", v = "$input.v" }
"""


def test_runtime_workflows_from_the_cli_survive_a_restart(tmp_path: Path) -> None:
    d = Daemon(tmp_path, agent_toml(tmp_path, replicas=1))
    try:
        d.start()
        path = tmp_path / "rt.toml"
        path.write_text(textwrap.dedent(WF_FILE))
        cli_added_once(d, "workflow", path, "rt")
        listed = d.cli("workflows", "list").stdout.splitlines()
        assert listed[1].split()[:5] == ["rt", "one", "wf", "rev", "1"], listed
        r = d.cli("workflows", "update", "rt", "--set", '{"timeout": 30}')
        assert r.stdout == "rt: revision 2: timeout null -> 30\n", r.stderr
        assert d.stop() == 0
        d.start()
        described = d.json("workflows", "describe", "rt")
        assert (described["revision"], described["definition"]["timeout"]) == (2, 30)
        view = d.json("workflows", "run", "rt", "--input", '{"v": 3}', "--wait", "60")
        assert (view["status"], view["output"]["v"], view["revision"]) == ("succeeded", 3, 2)
        r = d.cli("workflows", "rollback", "rt")
        assert r.stdout == "rt: rolled back to revision 1 (now revision 3): timeout 30 -> " \
                           "null\n", r.stderr
        cli_history_of_three(d, "workflow", "rt")
        r = d.cli("workflows", "remove", "rt")
        assert r.stdout == "removed: rt\n"
        assert d.stop() == 0
        d.start()
        r = d.cli("workflows", "describe", "rt")
        assert (r.returncode, r.stderr.strip()) == (1, "corral: no such workflow: rt")
        # the run it made is kept, pinned to its revision
        assert settled(d, view["run_id"])["revision"] == 2
        assert whole(view)["one"]["status"] == "succeeded"
        assert json.loads(d.cli("runs", "--json").stdout)["runs"][0]["workflow"] == "rt"
    finally:
        d.close()


def test_changes_that_cannot_be_recorded_are_refused_with_nothing_changed(
        tmp_path: Path) -> None:
    """A full disk: each change of a runtime workflow refused before it takes effect,
    with what was not done; the workflow as it was."""
    from .test_store_faults import caught_up

    d = Daemon(tmp_path, agent_toml(tmp_path, replicas=1), extra="task_journal = false")
    path = tmp_path / "rt.toml"
    path.write_text(textwrap.dedent(WF_FILE))
    other = tmp_path / "other.toml"
    other.write_text(textwrap.dedent(WF_FILE).replace("workflows.rt", "workflows.rt2"))
    try:
        d.start()
        assert d.cli("workflows", "add", str(path)).returncode == 0
        assert d.cli("workflows", "update", "rt", "--set", '{"timeout": 9}').returncode == 0
        refused_on_a_full_disk(d, "workflow", other, "rt", '{"timeout": 5}')
        caught_up(d)
        described = d.json("workflows", "describe", "rt")
        assert (described["revision"], described["definition"]["timeout"]) == (2, 9)
        assert [w["name"] for w in d.json("workflows", "list")["workflows"]] == ["rt"]
        assert [r["revision"] for r in d.json("workflows", "history", "rt")["revisions"]
                ] == [1, 2]
    finally:
        d.close()


@pytest.mark.deadline(120)
async def test_the_workflows_added_at_runtime_are_bounded(tmp_path: Path) -> None:
    from corral.daemon.workflows.catalog import MAX_RUNTIME

    from .daemon_harness import hello, in_process

    async with in_process(tmp_path, hello("h")) as d:
        one = {"steps": [{"name": "s", "agent": "h"}]}
        added = await d.dispatcher.call(SOCKET, "workflows.add", {
            "workflows": {f"w{i}": one for i in range(MAX_RUNTIME)}})
        assert len(added.added) == MAX_RUNTIME
        with pytest.raises(RpcError) as refused:
            await d.dispatcher.call(SOCKET, "workflows.add", {"workflows": {"more": one}})
        assert (refused.value.code, refused.value.message) == (
            jsonrpc.QUOTA_EXCEEDED,
            f"workflows.add: at most {MAX_RUNTIME} workflows (max_runtime; there are "
            f"{MAX_RUNTIME}) are added at runtime: remove some first")
        await d.dispatcher.call(SOCKET, "workflows.remove", {"names": ["w0"]})
        assert (await d.dispatcher.call(SOCKET, "workflows.add", {
            "workflows": {"more": one}})).added == ["more"]
